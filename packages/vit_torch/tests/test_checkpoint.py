"""Saving and loading vit_torch checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vit_torch
from vit_parity.core.checkpoint import CheckpointError
from vit_parity.core.convert import ConversionError, convert
from vit_torch import SimpleViT, ViT
from vit_torch.checkpoint import load_tensors, module_kinds, state_numpy

SMALL = dict(num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ViT(image_size=(32, 16), patch_size=8, pool="mean", **SMALL)
    vit_torch.save(model, tmp_path / "ckpt")
    loaded = vit_torch.load(tmp_path / "ckpt")
    assert isinstance(loaded, ViT) and loaded.config == model.config
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["arch"] == "vit" and cfg["layout"] == "torch" and cfg["config"]["image_size"] == [32, 16]


def test_module_kinds_are_by_type() -> None:
    kinds = module_kinds(ViT(image_size=32, patch_size=8, **SMALL))
    assert kinds["transformer.blocks.0.attn.to_qkv"] == "linear"
    assert kinds["transformer.blocks.1.norm1"] == "layernorm"
    assert kinds["pos_embedding"] == "param" and kinds["cls_token"] == "param"
    assert "transformer.blocks.0.attn.out_drop" not in kinds


def test_loading_another_architecture_fails_and_names_both(tmp_path: Path) -> None:
    vit_torch.save(SimpleViT(image_size=32, patch_size=8, **SMALL), tmp_path / "simple")
    model = ViT(image_size=32, patch_size=8, **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="'simple_vit', the model is 'vit'"):
        vit_torch.load_weights(model, tmp_path / "simple")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shape_mismatch_lists_the_keys(tmp_path: Path) -> None:
    vit_torch.save(ViT(image_size=32, patch_size=8, **SMALL), tmp_path / "a")
    other = ViT(image_size=32, patch_size=8, **dict(SMALL, num_classes=7))
    with pytest.raises(ConversionError, match=r"mlp_head.weight: \(5, 32\) vs model \(7, 32\)"):
        vit_torch.load_weights(other, tmp_path / "a")


def test_failed_save_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ViT(image_size=32, patch_size=8, **SMALL)
    vit_torch.save(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    import vit_parity.core.checkpoint as io

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(io, "write_safetensors", broken)
    with torch.no_grad():
        model.mlp_head.bias.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        vit_torch.save(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        vit_torch.load(tmp_path / "nope")


class Odd(nn.Module):
    """Modules the ViTs do not use: buffers, norms without parameters, a transposed convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.plain_norm = nn.LayerNorm(4, elementwise_affine=False)
        self.stats_only = nn.BatchNorm2d(4, affine=False)
        self.stateless_bn = nn.BatchNorm2d(4, affine=False, track_running_stats=False)
        self.register_buffer("scale", torch.randn(4))
        self.register_buffer("table", torch.arange(4.0), persistent=False)
        self.inner = nn.Module()
        self.inner.register_buffer("count", torch.tensor(3))


def test_module_kinds_cover_buffers_transposed_convs_and_skip_stateless_modules() -> None:
    model = Odd()
    kinds = module_kinds(model)
    assert kinds == {
        "up": "conv_transpose", "conv": "conv", "stats_only": "batchnorm", "scale": "buffer", "inner.count": "buffer",
    }  # fmt: skip
    state = state_numpy(model)
    assert "table" not in state  # a non-persistent buffer stays out of checkpoints
    back = convert(convert(state, kinds, source="torch", target="flax"), kinds, source="flax", target="torch")
    assert back.keys() == state.keys()
    assert all(np.array_equal(back[k], state[k]) for k in state)
    other = Odd()
    load_tensors(other, back)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
