"""Saving and loading vit_flax checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import vit_flax
from vit_flax import SimpleViT, ViT
from vit_flax.checkpoint import module_kinds, state_numpy
from vit_parity.checkpoint import CheckpointError

SMALL = dict(num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = ViT(image_size=(32, 16), patch_size=8, pool="mean", **SMALL, rngs=nnx.Rngs(3))
    vit_flax.save(model, tmp_path / "ckpt")
    loaded = vit_flax.load(tmp_path / "ckpt")
    assert isinstance(loaded, ViT) and loaded.config == model.config
    a, b = state_numpy(model), state_numpy(loaded)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["layout"] == "flax" and cfg["modules"]["transformer.blocks.0.ff.fc1"] == "linear"
    x = jax.random.normal(jax.random.key(0), (1, 32, 16, 3))
    model.eval()
    np.testing.assert_array_equal(model(x), loaded(x))


def test_module_kinds_are_by_type() -> None:
    kinds = module_kinds(ViT(image_size=32, patch_size=8, **SMALL))
    assert kinds["transformer.blocks.0.attn.to_qkv"] == "linear"
    assert kinds["to_patch_embedding.pre_norm"] == "layernorm"
    assert kinds["pos_embedding"] == "param"
    assert not any(k.endswith("kernel") or k.endswith("scale") for k in kinds)


def test_loading_another_architecture_fails(tmp_path: Path) -> None:
    vit_flax.save(SimpleViT(image_size=32, patch_size=8, **SMALL), tmp_path / "simple")
    model = ViT(image_size=32, patch_size=8, **SMALL)
    before = state_numpy(model)
    with pytest.raises(CheckpointError, match="'simple_vit', the model is 'vit'"):
        vit_flax.load_weights(model, tmp_path / "simple")
    after = state_numpy(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
