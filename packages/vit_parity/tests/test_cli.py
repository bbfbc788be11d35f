"""The ``vit`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit_flax
import vit_torch
from vit_parity.core import checkpoint as ckpt_io
from vit_parity.tools import cli
from vit_parity.tools.data import Preprocess

DIGITS = [str(d) for d in range(10)]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def trained(path: Path, data: dict | None = None) -> Path:
    """A tiny 8x8 one-channel ViT over the ten digits, saved as `vit train` saves it (``data``: its training record)."""
    torch.manual_seed(0)
    model = vit_torch.ViT(
        image_size=8, patch_size=4, num_classes=10, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8, channels=1
    )
    vit_torch.save(model, path)
    meta = json.loads((path / ckpt_io.CONFIG).read_text())
    meta["extra"] = {"classes": DIGITS, "preprocess": Preprocess((8, 8), 1, (0.3,), (0.4,)).to_json()}
    if data is not None:
        meta["extra"]["data"] = data
    (path / ckpt_io.CONFIG).write_text(json.dumps(meta))
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A `vit train --out` folder: the checkpoint in ``checkpoint/``, trained on 50 digits with a fifth held out."""
    record = {"name": "digits", "size": 8, "seed": 0, "limit": 50, "eval_fraction": 0.2}
    trained(tmp_path / "run" / "checkpoint", record)
    return tmp_path / "run"


def test_list_shows_every_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("vit", "simple_vit"):
        assert f"| {name} " in out
    assert "checkable" in out


CRITERION = "|flax - torch| <= atol + rtol * |torch| elementwise"


def check_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")][1:]


def test_info_describes_the_environment_and_the_gemm_paths(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIT_TORCH_CPU_GEMM", "default")
    code, out, _ = run(capsys, "info", "--gemm", "32,64,16")
    assert code == 0
    assert f"torch {torch.__version__}" in out and "VIT_TORCH_CPU_GEMM=default" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "->" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["to_qkv", "to_out", "fc1", "fc2"]
    assert "32 -> 96" in rows[0] and "64 -> 32" in rows[3]
    assert all(r.count("default") == 3 for r in rows)  # the override holds for every product


def test_info_rejects_a_bad_block_shape(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "--gemm", "32,64"])
    assert exit_info.value.code == 2
    assert "expected DIM,MLP,TOKENS (three integers)" in capsys.readouterr().err


def test_check_prints_a_table_and_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "simple_vit"]) == 0
    out = capsys.readouterr().out
    assert "| simple_vit | base" in out and "max abs" in out and "0 failed" in out
    # the table and the summary say what passing means; the margin is the share of that tolerance used
    assert re.search(r"\| margin \(<= 1 passes\) +\|", out) and "max rel" not in out
    assert f"passes when {CRITERION}" in out.splitlines()[0]
    assert "margin: the largest |flax - torch| / (atol + rtol * |torch|)" in out
    rows = check_rows(out)
    assert out.splitlines()[-1] == f"{CRITERION}, rtol=1e-05 atol=1e-05: {len(rows)} passed, 0 failed"
    for _, _, _, margin, _, status in rows:
        assert 0 < float(margin) <= 1 and status == "ok"


def test_check_fails_with_an_impossible_tolerance(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "vit", "--rtol", "0", "--atol", "1e-12"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"{CRITERION}, rtol=0 atol=1e-12: 0 passed" in out
    for _, _, max_abs, margin, _, status in check_rows(out):
        # with rtol = 0 the margin is max abs / atol
        assert float(margin) == pytest.approx(float(max_abs) / 1e-12, rel=0.01) and status.startswith("FAIL")


def test_check_rejects_unknown_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "resnet"]) == 2
    assert "unknown architecture" in capsys.readouterr().err


def test_convert_between_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = vit_torch.SimpleViT(image_size=16, patch_size=8, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32)
    vit_torch.save(model, tmp_path / "t")
    assert cli.main(["convert", str(tmp_path / "t"), "--to", "flax", "-o", str(tmp_path / "f")]) == 0
    flax_model = vit_flax.load(tmp_path / "f")
    img = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(flax_model(img.transpose(0, 2, 3, 1)), want, rtol=1e-5, atol=1e-5)
    assert cli.main(["convert", str(tmp_path / "missing"), "--to", "flax", "-o", str(tmp_path / "x")]) == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_convert_takes_a_run_folder(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "convert", run_dir, "--to", "flax", "-o", tmp_path / "f")
    assert code == 0, err
    assert ckpt_io.read_config(tmp_path / "f")["layout"] == "flax"
    assert ckpt_io.read_config(tmp_path / "f")["extra"]["classes"] == DIGITS  # eval and predict still work on it
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "convert", tmp_path / "empty", "--to", "flax", "-o", tmp_path / "x")
    assert code == 1 and "neither a checkpoint folder" in err and "`vit train --out` folder" in err


def test_predict_reports_every_input(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One unreadable input costs its own line, not the others' results; the exit status says something failed."""
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(tmp_path / "seven.png")
    np.save(tmp_path / "clip.npy", np.zeros((4, 8, 8), dtype=np.float32))  # a clip, not a (1, 8, 8) image
    files = [tmp_path / "seven.png", tmp_path / "clip.npy", tmp_path / "missing.npy"]
    report = tmp_path / "pred.json"
    code, out, err = run(capsys, "predict", run_dir, *files, "--top-k", "3", "--json", report)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{files[0]}: ") and lines[0].count("(") == 3
    errors = err.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"vit predict: array {files[1]} has shape (4, 8, 8)")
    assert ".npy arrays shaped (1, 8, 8) (channels first) or (8, 8)" in errors[0] and "images" in errors[0]
    assert str(files[2]) in errors[1] and "not found" in errors[1]
    got = json.loads(report.read_text())
    assert [r["file"] for r in got] == [str(f) for f in files]
    assert len(got[0]["top"]) == 3 and {"error"} <= set(got[1]) and {"error"} <= set(got[2])
    assert "top" not in got[1] and got[1]["error"] in errors[0]
    # the good input alone: the same result, exit status 0
    code, out_alone, _ = run(capsys, "predict", run_dir, files[0], "--top-k", "3")
    assert code == 0 and out_alone == out


def test_eval_defaults_to_the_training_data(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eval", run_dir)
    assert code == 0, err
    assert "on digits (eval split, 10 samples)" in out and "warning" not in err


def test_eval_warns_when_it_cannot_hold_training_samples_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint saved without the record of its data (e.g. by ``train.save`` with classes and preprocessing)."""
    ckpt = trained(tmp_path / "ckpt")
    code, _, err = run(capsys, "eval", ckpt)
    assert code == 1 and err.strip() == f"vit eval: checkpoint {ckpt} records no dataset; " + (
        "pass --data (digits, digits-video, shapes-volume, or a folder of class sub-folders)"
    )
    report = tmp_path / "eval.json"
    code, out, err = run(capsys, "eval", ckpt, "--data", "digits", "--json", report)
    assert code == 0 and "on digits (all split, 1797 samples)" in out
    assert err.startswith("warning: ") and len(err.strip().splitlines()) == 1
    assert '"all" includes samples the model may have been trained on' in err
    assert json.loads(report.read_text())["warning"] in err
    code, _, err = run(capsys, "eval", ckpt, "--data", "digits", "--split", "eval")
    assert code == 1 and "records no train/held-out split, so --split eval is unknown; pass --split all" in err
