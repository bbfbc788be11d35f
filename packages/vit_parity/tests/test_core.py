"""The framework-free core: checkpoint folders, configs, the spec registry, input checks, packaging."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from vit_parity.core import checkpoint as io
from vit_parity.core import spec
from vit_parity.core.config import from_json, records_config, to_json
from vit_parity.core.validate import as_tuple, check_input

ROOT = Path(__file__).resolve().parents[3]


def sample_ckpt() -> io.Checkpoint:
    rng = np.random.default_rng(0)
    return io.Checkpoint(
        arch="vit",
        config={"image_size": (32, 16), "patch_size": 8, "pool": "cls"},
        layout="torch",
        kinds={"fc": "linear", "pos": "param"},
        tensors={"fc.weight": rng.standard_normal((3, 2)).astype(np.float32), "pos": np.ones((1, 4), np.float32)},
    )


def test_checkpoint_round_trip_and_layout_conversion(tmp_path: Path) -> None:
    io.save(sample_ckpt(), tmp_path / "a")
    loaded = io.load(tmp_path / "a")
    assert loaded.config["image_size"] == (32, 16)
    np.testing.assert_array_equal(loaded.tensors["fc.weight"], sample_ckpt().tensors["fc.weight"])
    io.convert_checkpoint(tmp_path / "a", tmp_path / "b", to="flax")
    flax = io.load(tmp_path / "b")
    assert flax.layout == "flax"
    np.testing.assert_array_equal(flax.tensors["fc.kernel"], loaded.tensors["fc.weight"].T)
    io.convert_checkpoint(tmp_path / "b", tmp_path / "c", to="torch")
    np.testing.assert_array_equal(io.load(tmp_path / "c").tensors["fc.weight"], loaded.tensors["fc.weight"])


def test_load_refuses_other_architecture_and_bad_folders(tmp_path: Path) -> None:
    io.save(sample_ckpt(), tmp_path / "a")
    with pytest.raises(io.CheckpointError, match="holds architecture 'vit', expected 'simple_vit'"):
        io.load(tmp_path / "a", arch="simple_vit")
    with pytest.raises(io.CheckpointError, match="not found"):
        io.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"junk")
    (tmp_path / "bad" / "config.json").write_text("{")
    with pytest.raises(io.CheckpointError, match="not valid JSON"):
        io.load(tmp_path / "bad")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(io.CheckpointError, match="cannot read"):
        io.load(tmp_path / "bad")


def test_failed_conversion_writes_nothing(tmp_path: Path) -> None:
    broken = sample_ckpt()
    broken.tensors["stray"] = np.zeros(1, np.float32)
    io.save(broken, tmp_path / "a")
    with pytest.raises(Exception, match="unexpected keys"):
        io.convert_checkpoint(tmp_path / "a", tmp_path / "b", to="flax")
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_records_config_fills_defaults_and_skips_runtime_args() -> None:
    @records_config
    class Model:
        def __init__(self, *, size: int, pool: str = "cls", rngs: object = None) -> None:
            self.size = size

    @records_config
    class Bigger(Model):
        def __init__(self, *, depth: int = 2, **kwargs: object) -> None:
            super().__init__(**kwargs)

    assert Model(size=3, rngs=1).config == {"size": 3, "pool": "cls"}
    assert Bigger(size=4, rngs=0).config == {"depth": 2, "size": 4}
    assert from_json(json.loads(json.dumps(to_json({"a": (1, 2)})))) == {"a": (1, 2)}
    with pytest.raises(TypeError, match="constructor argument 'fn'"):
        to_json({"fn": lambda: 0})


def test_input_checks_name_the_problem() -> None:
    kw = dict(name="video", channels_last=False, channels=3, max_size=(8, 32, 32), patch=(2, 8, 8),
              axis_names=("frames", "height", "width"))  # fmt: skip
    assert check_input((1, 3, 4, 16, 32), **kw) == (4, 16, 32)
    with pytest.raises(ValueError, match="frames 3 must be a positive multiple of the patch size 2"):
        check_input((1, 3, 3, 16, 32), **kw)
    with pytest.raises(ValueError, match=r"5-D tensor \(b c frames height width\)"):
        check_input((1, 3, 16, 32), **kw)
    with pytest.raises(ValueError, match="frames 10 is larger than the model's 8"):
        check_input((1, 3, 10, 16, 32), **kw)
    with pytest.raises(ValueError, match="patch_size must be a positive int or a tuple of 2"):
        as_tuple((8, 8, 8), 2, "patch_size")


def test_spec_cases_are_well_formed() -> None:
    assert {"vit", "simple_vit"} <= set(spec.REGISTRY)
    for arch in spec.REGISTRY.values():
        assert arch.torch.startswith("vit_torch.") and arch.flax.startswith("vit_flax.")
        assert not arch.mirror or arch.torch.split(".", 1)[1] == arch.flax.split(".", 1)[1], "file for file"
        assert len({c.name for c in arch.cases}) == len(arch.cases) >= 1
        for case in arch.cases:
            for inp in case.inputs:
                assert set(inp.axes.split()) == set(inp.sizes)
                x = inp.sample()
                assert x.shape == inp.shape("torch")
                assert inp.to_backend(x, "flax").shape == inp.shape("flax")
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        spec.get("nope")


def _deps(package: str) -> list[str]:
    project = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]
    return [d.split(";")[0].strip() for d in project["dependencies"]]


def _closure(package: str) -> set[str]:
    """Dependency names of a package, following the workspace packages it depends on."""
    names, todo = set(), [package]
    while todo:
        for dep in _deps(todo.pop()):
            name = dep.split("[")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower()
            local = name.replace("-", "_")
            if (ROOT / "packages" / local).is_dir() and local not in names:
                todo.append(local)
            names.add(local)
    return names


def test_backends_install_independently() -> None:
    torch_side, flax_side, core = _closure("vit_torch"), _closure("vit_flax"), _closure("vit_parity")
    assert "torch" in torch_side and not {"jax", "jaxlib", "flax", "optax"} & torch_side
    assert "flax" in flax_side and "torch" not in flax_side
    assert not {"torch", "jax", "flax"} & core


def test_core_imports_no_framework() -> None:
    import subprocess

    code = "import vit_parity, vit_parity.tools.cli, vit_parity.core.checkpoint, sys; " \
           "print(sorted(m for m in ('torch', 'jax', 'flax') if m in sys.modules))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_backends_import_nothing_from_the_tools() -> None:
    """vit_parity.core is the contract the backends import; vit_parity.tools (cli, data, parity, fixtures) is not."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for package in ("vit_torch", "vit_flax"):
        for path in (root / package / "src" / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                bad = [n for n in names if n.startswith("vit_parity.tools")]
                assert not bad, f"{path.relative_to(root)} imports {bad}"
    # at run time too: building, saving and loading in both backends loads no tool (nor a test fixture)
    code = (
        "import sys, tempfile, jax.numpy as jnp, torch, vit_torch, vit_flax\n"
        "from vit_parity.core import spec\n"
        "m = vit_torch.ViT(image_size=16, patch_size=8, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32)\n"
        "d = tempfile.mkdtemp()\n"
        "vit_torch.save(m, d + '/ck')\n"
        "vit_flax.load(d + '/ck')(jnp.zeros((1, 16, 16, 3)))\n"
        "[c.hook for a in spec.REGISTRY.values() for c in a.cases]\n"
        "print(sorted(k for k in sys.modules if k.startswith('vit_parity.tools')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
