"""Saving and loading vit_flax checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vit_flax
from vit_flax import SimpleViT, ViT
from vit_flax.checkpoint import load_tensors, module_kinds, state_numpy
from vit_parity.core.checkpoint import CheckpointError
from vit_parity.core.convert import ConversionError, convert

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


class Buffer(nnx.Variable):
    """State that is not trained, like a persistent torch buffer."""


class Odd(nnx.Module):
    """Modules the ViTs do not use: buffers, norms without parameters, a transposed convolution."""

    def __init__(self, rngs: nnx.Rngs, *, transpose_kernel: bool = False) -> None:
        pad = ((2, 2), (2, 2))
        self.up = nnx.ConvTranspose(3, 4, (4, 4), (2, 2), padding=pad, transpose_kernel=transpose_kernel, rngs=rngs)
        self.conv = nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.plain_norm = nnx.LayerNorm(4, use_scale=False, use_bias=False, rngs=rngs)
        self.stats_only = nnx.BatchNorm(4, use_scale=False, use_bias=False, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.scale = nnx.BatchStat(jax.random.normal(rngs.params(), (4,)))
        self.inner = nnx.Dict(count=Buffer(jnp.array(3)))
        self.rngs = rngs


def test_module_kinds_cover_buffers_transposed_convs_and_skip_stateless_modules() -> None:
    model = Odd(nnx.Rngs(0, dropout=1))
    kinds = module_kinds(model)
    assert kinds == {
        "conv": "conv", "inner.count": "buffer", "scale": "buffer", "stats_only": "batchnorm", "up": "conv_transpose",
    }  # fmt: skip
    state = state_numpy(model)
    assert sorted(state) == ["conv.kernel", "inner.count", "scale", "stats_only.mean", "stats_only.var", "up.bias",
                             "up.kernel"]  # random-number state stays out of checkpoints  # fmt: skip
    back = convert(convert(state, kinds, source="flax", target="torch"), kinds, source="torch", target="flax")
    assert all(np.array_equal(back[k], state[k]) for k in state)
    other = Odd(nnx.Rngs(1, dropout=1))
    load_tensors(other, back)
    after = state_numpy(other)
    assert all(np.array_equal(after[k], state[k]) and after[k].dtype == state[k].dtype for k in state)


def test_a_transposed_convolution_with_transpose_kernel_is_refused() -> None:
    # its kernel is (*k, O, I) and flipped: loading a converted torch kernel would give other numbers
    model = Odd(nnx.Rngs(0), transpose_kernel=True)
    with pytest.raises(ConversionError, match=r"up: .*transpose_kernel=False"):
        module_kinds(model)
    with pytest.raises(ConversionError, match="transpose_kernel=False"):
        load_tensors(model, state_numpy(model))
