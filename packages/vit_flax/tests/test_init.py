"""vit_flax.init: the shared initializer's rules on nnx modules, drawn in the torch layout."""

from __future__ import annotations

import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.checkpoint import state_numpy
from vit_flax.init import init_weights
from vit_parity.core import spec
from vit_parity.core.init import InitError, init_tensors

TRUNC_STD = 0.8796256610342398  # std of a standard normal cut at +-2


class Toy(nnx.Module):
    def __init__(self, extra: bool = False, *, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(16, 64, (7, 7), padding="VALID", rngs=rngs)
        self.up = nnx.ConvTranspose(32, 8, (3, 3), padding="VALID", rngs=rngs)
        self.norm = nnx.LayerNorm(64, rngs=rngs)
        self.bn = nnx.BatchNorm(64, rngs=rngs)
        self.fc = nnx.Linear(512, 512, rngs=rngs)
        self.tok = nnx.Embed(100, 64, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, 64)))
        self.table = nnx.Variable(jnp.arange(6.0))  # kind 'buffer': kept
        if extra:
            self.fc2 = nnx.Linear(64, 64, rngs=rngs)


def _toy(**kw: bool) -> Toy:
    return Toy(**kw, rngs=nnx.Rngs(0))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def test_statistics_by_kind() -> None:
    model = _toy()
    model.bn.var.set_value(jnp.full((64,), 3.0))
    assert init_weights(model, seed=0) is model
    w = np.asarray(model.fc.kernel[...])
    limit = math.sqrt(6 / sum(w.shape))  # Xavier uniform: fan-in + fan-out
    assert _rel(w.std(), limit / math.sqrt(3)) < 0.03 and abs(w.mean()) < 1e-3
    assert np.abs(w).max() <= limit
    assert _rel(float(model.conv.kernel[...].std()), math.sqrt(2 / (16 * 7 * 7))) < 0.03
    assert _rel(float(model.up.kernel[...].std()), math.sqrt(2 / (32 * 3 * 3))) < 0.05  # in channels x kernel
    assert _rel(float(model.tok.embedding[...].std()), 0.02) < 0.05
    cls = np.asarray(model.cls_token[...])
    assert np.abs(cls).max() <= 0.04 and cls.std() > 0
    for t in (model.fc.bias, model.conv.bias, model.up.bias, model.norm.bias, model.bn.bias, model.bn.mean):
        np.testing.assert_array_equal(t[...], 0)
    for t in (model.norm.scale, model.bn.scale, model.bn.var):
        np.testing.assert_array_equal(t[...], 1)


def test_values_are_the_cores_draws_in_the_torch_layout() -> None:
    model = init_weights(_toy(), seed=4)
    shapes = {"fc.weight": (512, 512), "conv.weight": (64, 16, 7, 7), "tok.weight": (100, 64), "cls_token": (1, 1, 64)}
    kinds = {"fc": "linear", "conv": "conv", "tok": "embedding", "cls_token": "param"}
    want = init_tensors(shapes, kinds, seed=4)
    np.testing.assert_array_equal(model.fc.kernel[...], want["fc.weight"].T)
    np.testing.assert_array_equal(model.conv.kernel[...], want["conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.tok.embedding[...], want["tok.weight"])
    np.testing.assert_array_equal(model.cls_token[...], want["cls_token"])


def test_seeds() -> None:
    a, b, c = (state_numpy(init_weights(_toy(), seed=s)) for s in (1, 1, 2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("conv.kernel", "fc.kernel", "tok.embedding", "cls_token"):
        assert not np.array_equal(a[key], c[key])


def test_adding_a_layer_leaves_the_other_tensors_alone() -> None:
    small, big = state_numpy(init_weights(_toy(), seed=3)), state_numpy(init_weights(_toy(extra=True), seed=3))
    assert set(big) - set(small) == {"fc2.kernel", "fc2.bias"}
    for key in small:
        np.testing.assert_array_equal(big[key], small[key], err_msg=key)


def test_adding_a_block_leaves_the_other_tensors_alone() -> None:
    config = dict(image_size=32, patch_size=8, num_classes=5, dim=32, heads=2, mlp_dim=64, dim_head=16)
    cls = spec.get("vit").load_class("flax")
    one, two = (state_numpy(init_weights(cls(**config, depth=d, rngs=nnx.Rngs(0)), seed=0)) for d in (1, 2))
    assert len(two) > len(one)
    for key in one:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)


def test_buffers_are_left_alone() -> None:
    model = init_weights(_toy(), seed=0)
    np.testing.assert_array_equal(model.table[...], np.arange(6.0))


def test_dtype_is_kept() -> None:
    model = init_weights(nnx.Linear(8, 8, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), seed=0)
    assert model.kernel[...].dtype == jnp.bfloat16
    f32 = init_weights(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), seed=0)
    np.testing.assert_array_equal(model.kernel[...], f32.kernel[...].astype(jnp.bfloat16))


class Scaled(nnx.Module):
    """A layer scale whose start comes from its own ``init_rules``."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.init_rules = {"gamma": ("constant", 1e-5)}
        self.gamma = nnx.Param(jnp.zeros(8))
        self.fc = nnx.Linear(8, 8, rngs=rngs)


class Outer(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.a, self.b = Scaled(rngs=rngs), Scaled(rngs=rngs)
        self.mix = nnx.Param(jnp.zeros((4, 4)))

    @property
    def init_rules(self) -> dict:
        return {"mix": ("identity",), "b.gamma": ("ones",)}


def test_overrides_and_init_rules() -> None:
    model = init_weights(Outer(rngs=nnx.Rngs(0)), seed=0)
    np.testing.assert_array_equal(model.a.gamma[...], np.full(8, 1e-5, np.float32))  # the layer's rule
    np.testing.assert_array_equal(model.b.gamma[...], 1)  # the model's rule wins over the layer's
    np.testing.assert_array_equal(model.mix[...], np.eye(4))
    model = init_weights(Outer(rngs=nnx.Rngs(0)), overrides={"*.gamma": ("zeros",), "*.fc.bias": ("normal", 1.0)})
    np.testing.assert_array_equal(model.a.gamma[...], 0)
    np.testing.assert_array_equal(model.b.gamma[...], 0)
    assert float(jnp.abs(model.a.fc.bias[...]).max()) > 0
    model = Outer(rngs=nnx.Rngs(0))
    before = np.asarray(model.a.fc.kernel[...])
    init_weights(model, overrides={"a.fc.weight": "keep"})
    np.testing.assert_array_equal(model.a.fc.kernel[...], before)


def test_overrides_name_torch_layout_keys() -> None:
    model = init_weights(_toy(), overrides={"norm.weight": ("constant", 2.0)})
    np.testing.assert_array_equal(model.norm.scale[...], 2.0)
    with pytest.raises(InitError, match="match no tensor"):
        init_weights(_toy(), overrides={"norm.scale": ("constant", 2.0)})


def test_the_module_does_not_pull_torch() -> None:
    code = "import sys, vit_flax.init; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
