"""``vit import vit-pytorch``: a state dict named like the reference's, imported as a checkpoint (no vit-pytorch
needed here; ``nox -s reference`` compares logits with the reference itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import fails, one_thread, run  # noqa: F401 (one_thread: autouse)

import vit_torch
from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core.config import to_json
from vit_parity.core.convert import RULES, TORCH_ONLY
from vit_parity.core.spec import REGISTRY
from vit_parity.tools import reference
from vit_parity.tools.reference import Rule
from vit_torch.checkpoint import module_kinds

CONFIG = dict(image_size=8, patch_size=4, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)


def reference_vit_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of vit-pytorch's ``ViT(**CONFIG)``, by hand: its names and shapes, seeded values."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "cls_token": (1, 16),
        "pos_embedding": (5, 16),
        "to_patch_embedding.1.weight": (48,),
        "to_patch_embedding.1.bias": (48,),
        "to_patch_embedding.2.weight": (16, 48),
        "to_patch_embedding.2.bias": (16,),
        "to_patch_embedding.3.weight": (16,),
        "to_patch_embedding.3.bias": (16,),
        "transformer.norm.weight": (16,),
        "transformer.norm.bias": (16,),
        "transformer.layers.0.0.norm.weight": (16,),
        "transformer.layers.0.0.norm.bias": (16,),
        "transformer.layers.0.0.to_qkv.weight": (48, 16),
        "transformer.layers.0.0.to_out.0.weight": (16, 16),
        "transformer.layers.0.0.to_out.0.bias": (16,),
        "transformer.layers.0.1.net.0.weight": (16,),
        "transformer.layers.0.1.net.0.bias": (16,),
        "transformer.layers.0.1.net.1.weight": (32, 16),
        "transformer.layers.0.1.net.1.bias": (32,),
        "transformer.layers.0.1.net.4.weight": (16, 32),
        "transformer.layers.0.1.net.4.bias": (16,),
        "mlp_head.weight": (3, 16),
        "mlp_head.bias": (3,),
    }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def save_state(path: Path, state: Any) -> Path:
    torch.save(state, path)
    return path


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return save_state(tmp_path / "vit.pt", reference_vit_state()), write_config(tmp_path / "vit.json", CONFIG)


def import_args(state: Path, config: Path, out: Path, arch: str = "vit") -> list[object]:
    return ["import", "vit-pytorch", state, "--arch", arch, "--config", config, "-o", out]


def test_import_writes_a_checkpoint_that_loads(capsys: pytest.CaptureFixture[str], files: tuple[Path, Path]) -> None:
    state_path, config_path = files
    out = state_path.parent / "ckpt"
    code, stdout, err = run(capsys, *import_args(state_path, config_path, out))
    assert code == 0, err
    assert f"wrote {out}" in stdout and "vit_pytorch.vit:ViT" in stdout

    model = vit_torch.load(out)
    state = reference_vit_state()
    ours = {k: v.numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(ours["cls_token"], state["cls_token"].numpy()[None])
    np.testing.assert_array_equal(ours["pos_embedding"], state["pos_embedding"].numpy()[None])
    renamed = {
        "to_patch_embedding.pre_norm.weight": "to_patch_embedding.1.weight",
        "to_patch_embedding.proj.weight": "to_patch_embedding.2.weight",
        "to_patch_embedding.post_norm.bias": "to_patch_embedding.3.bias",
        "transformer.blocks.0.norm1.weight": "transformer.layers.0.0.norm.weight",
        "transformer.blocks.0.attn.to_qkv.weight": "transformer.layers.0.0.to_qkv.weight",
        "transformer.blocks.0.attn.to_out.bias": "transformer.layers.0.0.to_out.0.bias",
        "transformer.blocks.0.norm2.bias": "transformer.layers.0.1.net.0.bias",
        "transformer.blocks.0.ff.fc1.weight": "transformer.layers.0.1.net.1.weight",
        "transformer.blocks.0.ff.fc2.weight": "transformer.layers.0.1.net.4.weight",
        "transformer.norm.weight": "transformer.norm.weight",
        "mlp_head.bias": "mlp_head.bias",
    }
    for ours_key, ref_key in renamed.items():
        np.testing.assert_array_equal(ours[ours_key], state[ref_key].numpy(), err_msg=ours_key)

    meta = ckpt_io.read_config(out)
    assert meta["arch"] == "vit" and meta["layout"] == "torch"
    assert meta["modules"] == module_kinds(model)
    assert meta["config"] == to_json(model.config)  # complete: our defaults filled in
    assert meta["extra"]["imported"]["class"] == "vit_pytorch.vit:ViT"
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_failures_write_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path, files: tuple[Path, Path]) -> None:
    """Each failure is one line naming what is wrong; the destination is neither created nor touched."""
    state_path, config_path = files
    out = tmp_path / "ckpt"

    def failing(*argv: object, match: str) -> None:
        fails(capsys, *argv, match=match)
        assert not out.exists()

    failing(*import_args(tmp_path / "missing.pt", config_path, out), match="missing.pt not found")
    not_a_dict = save_state(tmp_path / "list.pt", [torch.zeros(2)])
    failing(*import_args(not_a_dict, config_path, out), match="is not a state dict: expected a dict of tensors")
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file")
    failing(*import_args(text, config_path, out), match="is not a torch state dict")
    mixed = save_state(tmp_path / "mixed.pt", {**reference_vit_state(), "step": 3})
    failing(*import_args(mixed, config_path, out), match="the entries ['step'] are not tensors")
    failing(
        *import_args(state_path, config_path, out, arch="nope"), match="no vit-pytorch import for architecture 'nope'"
    )

    state = reference_vit_state()
    del state["mlp_head.bias"]
    state["extra.weight"] = torch.zeros(1)
    renamed = save_state(tmp_path / "renamed.pt", state)
    failing(
        *import_args(renamed, config_path, out),
        match="missing keys ['mlp_head.bias'], unexpected keys ['extra.weight']",
    )
    deeper = write_config(tmp_path / "deeper.json", {**CONFIG, "depth": 2})
    failing(*import_args(state_path, deeper, out), match="missing keys ['transformer.layers.1.0.norm.bias'")

    failing(*import_args(state_path, tmp_path / "none.json", out), match="none.json not found")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{depth: 1")
    failing(*import_args(state_path, bad_json, out), match="is not valid JSON")
    unknown = write_config(tmp_path / "unknown.json", {**CONFIG, "depht": 1})
    failing(*import_args(state_path, unknown, out), match="takes no arguments ['depht']")
    lacking = write_config(tmp_path / "lacking.json", {k: v for k, v in CONFIG.items() if k != "dim"})
    failing(*import_args(state_path, lacking, out), match="lacks the required arguments ['dim']")
    mean = write_config(tmp_path / "mean.json", {**CONFIG, "pool": "mean"})
    failing(*import_args(state_path, mean, out), match="pool='mean' the reference builds no class token")


def test_failure_keeps_the_previous_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: tuple[Path, Path]
) -> None:
    state_path, config_path = files
    out = tmp_path / "ckpt"
    assert run(capsys, *import_args(state_path, config_path, out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    state = reference_vit_state()
    del state["cls_token"]
    fails(capsys, *import_args(save_state(tmp_path / "broken.pt", state), config_path, out), match="cls_token")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_read_state_dict_refuses_pickled_objects(tmp_path: Path) -> None:
    """weights_only=True: a file holding anything but tensors and plain containers is refused, not run."""
    path = save_state(tmp_path / "object.pt", {"w": torch.zeros(1), "where": Path("x")})
    with pytest.raises(reference.ReferenceImportError, match="is not a torch state dict"):
        reference.read_state_dict(path)


def _importable_cases() -> list[Any]:
    params = []
    for arch, spec in REGISTRY.items():
        if arch not in reference.TABLES:
            continue
        for case in spec.cases:
            params.append(pytest.param(arch, case, id=f"{arch}-{case.name}"))
    return params


@pytest.mark.parametrize(("arch", "case"), _importable_cases())
def test_tables_name_the_models_kinds(arch: str, case: Any) -> None:
    """Without the reference: for every case whose config imports, the rules name exactly the built model's module
    kinds, the config survives the trip through the reference's arguments, and every leaf written is one of its
    kind's."""
    try:
        ours = reference.our_config(arch, reference.reference_config(arch, case.config))
    except reference.ReferenceImportError:
        return  # refused on purpose (tests_reference checks why)
    torch.manual_seed(0)
    model = case.build("torch", REGISTRY[arch].load_class("torch"))
    checked_with = {k: v for k, v in reference.TABLES[arch].check_with.items() if k in model.config}
    assert ours == {**model.config, **checked_with}
    assert reference.module_kinds(arch, ours) == module_kinds(model)
    for rule in reference.TABLES[arch].rules:
        if isinstance(rule, Rule) and rule.dst is not None:
            allowed = {leaf for leaf, *_ in RULES[rule.kind]} | set(TORCH_ONLY.get(rule.kind, {}))
            assert set(rule.leaf_map().values()) | set(rule.fill) <= allowed, rule
