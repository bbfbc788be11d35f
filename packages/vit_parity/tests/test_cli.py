"""The ``vit`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vit_flax
import vit_torch
from vit_parity import cli


def test_list_shows_every_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("vit", "simple_vit"):
        assert f"| {name} " in out
    assert "checkable" in out


def test_check_prints_a_table_and_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "simple_vit"]) == 0
    out = capsys.readouterr().out
    assert "| simple_vit | base" in out and "max abs" in out and "0 failed" in out


def test_check_fails_with_an_impossible_tolerance(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "vit", "--rtol", "0", "--atol", "1e-12"]) == 1
    assert "FAIL" in capsys.readouterr().out


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
