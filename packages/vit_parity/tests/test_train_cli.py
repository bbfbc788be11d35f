"""`vit train` for every architecture of the registry (its adapter), its one-line refusals and its run folder;
the two backends' ``train`` modules agree on the initial weights and on what weight decay applies to."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import RUN_FILES, fails, one_thread, run  # noqa: F401 (one_thread: autouse)

import vit_flax.checkpoint
import vit_flax.train
import vit_torch.checkpoint
import vit_torch.train
from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core import loop, spec
from vit_parity.core.config import MODEL_KEY
from vit_parity.tools import adapters

TINY = ["--image-size", "8", "--patch-size", "4", "--dim", "16", "--depth", "1", "--heads", "2", "--quiet"]
IMAGES = ["--data", "digits", "--limit", "40", "--batch-size", "32", *TINY]
CLIPS = ["--data", "digits-video", "--frames", "2", "--frame-patch-size", "2", *IMAGES[2:]]


def data_args(arch: str) -> list[str]:
    """Tiny images or clips, whichever the architecture takes."""
    case = spec.get(arch).cases[0]
    return CLIPS if len(case.inputs[0].axes.split()) == 5 else IMAGES


@pytest.mark.parametrize("arch", sorted(n for n in spec.REGISTRY if adapters.trains(n) == "yes"))
def test_the_same_seed_builds_the_same_weights_in_both_backends(arch: str) -> None:
    case = spec.get(arch).cases[0]
    config = {**case.config, **{k: {MODEL_KEY: name, "config": cfg} for k, (name, cfg) in case.models.items()}}
    t, f = vit_torch.train.build(arch, config, seed=3), vit_flax.train.build(arch, config, seed=3)
    want = vit_torch.checkpoint.state_numpy(t)
    got = vit_flax.checkpoint.to_checkpoint(f).to_layout("torch").tensors
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    other = vit_torch.checkpoint.state_numpy(vit_torch.train.build(arch, config, seed=4))
    assert any(not np.array_equal(other[k], v) for k, v in want.items())  # the seed matters


def test_weight_decay_skips_embeddings_tokens_norms_and_biases_in_both_backends() -> None:
    config = dict(image_size=8, patch_size=4, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)
    torch_keys = vit_torch.train.decayed_parameters(vit_torch.train.build("vit", config))
    flax_keys = vit_flax.train.decayed_parameters(vit_flax.train.build("vit", config))
    modules = {k.removesuffix(".weight") for k in torch_keys}
    assert {k.removesuffix(".kernel") for k in flax_keys} == modules and len(modules) == len(torch_keys)
    kinds = vit_torch.checkpoint.module_kinds(vit_torch.train.build("vit", config))
    assert {kinds[m] for m in modules} == {"linear"}  # a ViT has no convolution
    # the patch projection, the attention's qkv and output, the MLP's two layers and the head
    assert len(modules) == 6 and "mlp_head" in modules and "to_patch_embedding.proj" in modules
    assert {k for k, kind in kinds.items() if kind == "linear"} == modules


def test_every_registry_entry_has_an_adapter_or_a_refusal() -> None:
    assert set(adapters.ADAPTERS) == set(spec.REGISTRY)
    for name in spec.REGISTRY:
        assert isinstance(adapters.ADAPTERS[name], (adapters.Adapter, adapters.Refusal)), name


TRAINABLE = [n for n in sorted(spec.REGISTRY) if isinstance(adapters.ADAPTERS.get(n), adapters.Adapter)]


def _family(arch: str) -> tuple:
    """Architectures whose adapter maps the options and feeds the batches alike train the same way."""
    entry = adapters.ADAPTERS[arch]
    return entry.arguments, tuple(sorted((entry.feeds or {}).items()))


# every trainable architecture in torch, one of each family in flax (its compilation is the test's cost)
FAMILIES = {_family(a): a for a in sorted(TRAINABLE, key=lambda a: (len(a), a), reverse=True)}  # the shortest name
ONE_EPOCH = [(a, "torch") for a in TRAINABLE] + [(a, "flax") for a in sorted(FAMILIES.values())]


@pytest.mark.parametrize(("arch", "backend"), ONE_EPOCH)
def test_one_epoch_of_every_architecture(arch: str, backend: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, text, err = run(capsys, "train", "--arch", arch, "--backend", backend, *data_args(arch), "--epochs", 1,
                          "--out", out)  # fmt: skip
    assert code == 0, err
    assert "held-out accuracy" in text
    ckpt = ckpt_io.load(out / "checkpoint")
    assert spec.same_weights(ckpt.arch, arch) and ckpt.layout == backend  # flax: the NaViTs share a class
    models = [sub["config"] for sub in ckpt.config.values() if isinstance(sub, dict) and MODEL_KEY in sub]
    cfg = {k: v for c in [ckpt.config, *models] for k, v in c.items()}  # the efficient ViT's transformer's too

    # the size options reach the constructor, under whatever names it has
    def first(*names: str) -> object:
        return next(cfg[n] for n in names if n in cfg)

    assert first("dim", "embedding_dim", "sm_dim") == 16
    assert first("depth", "num_layers", "spatial_depth") == 1
    assert first("heads", "num_heads", "sm_enc_heads") == 2
    assert first("channels", "n_input_channels") == 1  # the digits are grey
    assert sum(v.size for v in ckpt.tensors.values()) < 40_000  # tiny (CrossViT: two branches)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and [e["epoch"] for e in metrics["epochs"]] == [0]
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0 and metrics["eval"]["samples"] == 10
    if arch.startswith("navit"):  # eval reads the run's own data and feeds it the way the model takes it
        code, text, err = run(capsys, "eval", out, "--json", tmp_path / "eval.json")
        assert code == 0, err
        assert json.loads((tmp_path / "eval.json").read_text())["backends"][backend]["accuracy"] == pytest.approx(
            metrics["eval"]["accuracy"]
        )


def test_cct_3d_takes_the_size_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cct"
    code, _, err = run(capsys, "train", "--arch", "cct_3d", *CLIPS, "--mlp-dim", "48", "--epochs", 1, "--out", out)
    assert code == 0, err
    cfg = ckpt_io.read_config(out / "checkpoint")["config"]
    assert {k: cfg[k] for k in ("embedding_dim", "num_layers", "num_heads", "mlp_ratio")} == {
        "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "mlp_ratio": 3.0,
    }  # fmt: skip
    assert (cfg["img_size"], cfg["num_frames"], cfg["n_input_channels"], cfg["num_classes"]) == (8, 2, 1, 10)
    base = ["train", "--arch", "cct_3d", *CLIPS, "--out", tmp_path / "bad"]
    fails(capsys, *base, "--heads", "3", match="CCT needs --dim (16) divisible by --heads (3)")
    fails(capsys, *base, "--dim-head", "4", match="CCT's heads are dim / heads wide")
    assert not (tmp_path / "bad").exists()


def test_bad_sizes_stop_with_one_line(tmp_path: Path, capsys) -> None:
    base = ["train", "--arch", "vit", *IMAGES, "--out", tmp_path / "out"]
    fails(capsys, *base, "--heads", "0", match="--heads must be at least 1, got 0")
    fails(capsys, *base, "--dim", "0", match="--dim must be at least 1, got 0")
    fails(capsys, *base, "--patch-size", "0", match="--patch-size must be at least 1, got 0")
    fails(capsys, "train", "--arch", "navit", *IMAGES, "--patch-size", "3", "--out", tmp_path / "out",
          match="cannot build 'navit'")  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_a_config_that_cannot_be_saved_is_refused_at_build(backend: str) -> None:
    config = dict(image_size=8, patch_size=4, num_classes=2, dim=8, depth=1, heads=1, mlp_dim=8, dim_head=8)
    train = vit_torch.train if backend == "torch" else vit_flax.train
    with pytest.raises(TypeError, match=r"'token_dropout_prob' = .* cannot be stored in a checkpoint config"):
        train.build("navit", dict(config, token_dropout_prob=lambda h, w: 0.1))
    assert train.build("navit", dict(config, token_dropout_prob=0.1)).config["token_dropout_prob"] == 0.1


def test_a_refused_architecture_says_why(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(adapters.ADAPTERS, "vit", adapters.Refusal("its inputs are not samples of one size"))
    fails(capsys, "train", "--arch", "vit", *IMAGES, "--out", tmp_path / "out",
          match="'vit' does not train from `vit train`: its inputs are not samples of one size")  # fmt: skip
    code, out, _ = run(capsys, "list")
    assert code == 0 and "| no: its inputs are not samples of one size" in out


def test_list_says_what_trains(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(adapters.ADAPTERS, "cait", adapters.Refusal("its inputs are not samples of one size"))
    code, out, _ = run(capsys, "list")
    assert code == 0
    header, _, *rows = out.splitlines()
    column = [c.strip() for c in header.split("|")].index("vit train")
    said = {row.split("|")[1].strip(): row.split("|")[column].strip() for row in rows}
    assert said.keys() == spec.REGISTRY.keys()
    for name, entry in adapters.ADAPTERS.items():
        assert said[name] == ("yes" if isinstance(entry, adapters.Adapter) else f"no: {entry.reason}"), name
    assert said["vit"] == "yes" and said["cait"] == "no: its inputs are not samples of one size"


def _predict(out: Path) -> np.ndarray:
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    return vit_torch.train.predict(vit_torch.load(out / "checkpoint"), x)


def test_an_existing_run_is_kept_unless_resumed_or_overwritten(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--arch", "vit", *IMAGES, "--epochs", 1, "--out", out]
    fails(capsys, *argv, "--resume", match=f"--resume: there is no run to continue ({out} does not exist)")
    assert run(capsys, *argv)[0] == 0
    first = _predict(out)
    before = sorted(p.name for p in out.iterdir())
    assert before == RUN_FILES
    held = "checkpoint, metrics.json, metrics.jsonl" + (", ..." if len(RUN_FILES) > 3 else "")
    fails(capsys, *argv, match=f"{out} already holds a run ({held}); continue it with --resume")
    fails(capsys, *argv, "--resume", "--overwrite", match="pick one")
    (tmp_path / "empty").mkdir()
    fails(capsys, *argv[:-1], tmp_path / "empty", "--resume", match="holds no checkpoint/")

    # an overwrite interrupted before its first checkpoint leaves the earlier run as it was
    shift = loop.random_shift
    monkeypatch.setattr(loop, "random_shift", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    fails(capsys, *argv, "--overwrite", "--seed", 1, match=f"no epoch completed; {out} keeps the earlier run", code=130)
    monkeypatch.setattr(loop, "random_shift", shift)
    np.testing.assert_array_equal(_predict(out), first)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]  # no staging folder left

    old_umask = os.umask(0o022)
    try:
        assert run(capsys, *argv, "--overwrite", "--seed", 1)[0] == 0
    finally:
        os.umask(old_umask)
    # the run swapped in from its staging folder is readable by others, as any folder made under umask 022
    made = [out, *out.rglob("*")]
    assert {p.stat().st_mode & 0o777 for p in made if p.is_dir()} == {0o755}
    assert {p.stat().st_mode & 0o777 for p in made if p.is_file()} == {0o644}
    assert not np.array_equal(_predict(out), first)  # the new run, from other weights
    assert ckpt_io.read_config(out / "checkpoint")["extra"]["train"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]  # the earlier run is gone, whole


def test_bf16_training_and_evaluation(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert run(capsys, "train", "--arch", "vit", *IMAGES, "--epochs", 2, "--precision", "bf16", "--out", out)[0] == 0
    ckpt = ckpt_io.load(out / "checkpoint")
    assert ckpt.extra["train"]["precision"] == "bf16" and {v.dtype for v in ckpt.tensors.values()} <= {
        np.dtype(np.float32),
        np.dtype(np.int64),
    }
    code, printed, _ = run(capsys, "eval", out, "--precision", "bf16", "--json", tmp_path / "eval.json")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert code == 0 and report["precision"] == "bf16" and 0.5 <= report["fp32_agreement"]["torch"] <= 1.0
    same = round(report["fp32_agreement"]["torch"] * report["samples"])
    assert f"torch in bf16 gives the fp32 prediction on {same}/{report['samples']} samples" in printed
