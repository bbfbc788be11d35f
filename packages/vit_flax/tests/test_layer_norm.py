"""vit_flax.layers.LayerNorm: nnx.LayerNorm's values and gradients with a leaner backward pass."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from vit_flax.layers import LayerNorm, layer_norm


def pair(dim: int = 24, dtype: jnp.dtype | None = None) -> tuple[LayerNorm, nnx.LayerNorm]:
    ours = layer_norm(dim, 1e-5, nnx.Rngs(0), dtype)
    ref = nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=nnx.Rngs(0))
    scale = jax.random.normal(jax.random.key(1), (dim,))
    bias = jax.random.normal(jax.random.key(2), (dim,))
    for m in (ours, ref):
        m.scale.set_value(scale)
        m.bias.set_value(bias)
    return ours, ref


def loss(norm: nnx.LayerNorm, x: jax.Array) -> jax.Array:
    w = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)  # every output weighs differently
    return (norm(x).astype(jnp.float32) * w).sum()


def test_is_an_nnx_layer_norm_with_its_parameters() -> None:
    ours, _ = pair()
    assert isinstance(ours, nnx.LayerNorm)  # the checkpoint's module kind and the parameter names follow
    assert set(nnx.state(ours, nnx.Param).keys()) == {"scale", "bias"}


@pytest.mark.parametrize("offset", [0.0, 300.0])  # a large mean is where one-pass variance loses digits
def test_values_and_gradients_match_nnx_layer_norm(offset: float) -> None:
    ours, ref = pair()
    x = jax.random.normal(jax.random.key(3), (2, 5, 24)) * 3 + offset
    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    g_ours = nnx.grad(loss, argnums=(0, 1))(ours, x)
    g_ref = nnx.grad(loss, argnums=(0, 1))(ref, x)
    np.testing.assert_allclose(g_ours[1], g_ref[1], rtol=1e-4, atol=1e-5)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(g_ours[0][name][...], g_ref[0][name][...], rtol=1e-5, atol=1e-5)


def test_values_match_an_explicit_computation() -> None:
    ours, _ = pair()
    x = np.asarray(jax.random.normal(jax.random.key(4), (3, 24)), np.float64)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    want = want * np.asarray(ours.scale[...]) + np.asarray(ours.bias[...])
    np.testing.assert_allclose(ours(jnp.asarray(x, jnp.float32)), want, rtol=1e-5, atol=1e-5)


def test_backward_keeps_the_input_and_row_statistics_only() -> None:
    x = jnp.ones((4, 6, 24))

    def residuals(norm: nnx.LayerNorm) -> list[str]:
        graphdef, state = nnx.split(norm)
        buf = io.StringIO()
        with redirect_stdout(buf):
            print_saved_residuals(lambda s, x: loss(nnx.merge(graphdef, s), x), state, x)
        # activations of x's size made inside the norm (x itself is an argument, the loss weights are the test's)
        lines = buf.getvalue().splitlines()
        return [s for s in lines if "[4,6,24]" in s and ("normalization.py" in s or "vit_flax/layers.py" in s)]

    ours, ref = pair()
    assert residuals(ours) == []
    assert len(residuals(ref)) >= 2


def test_bfloat16_compute_dtype() -> None:
    ours, ref = pair(dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(5), (2, 7, 24))
    y = ours(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), ref(x).astype(jnp.float32), rtol=2e-2, atol=2e-2)
    grad = nnx.grad(loss, argnums=1)(ours, x)
    assert grad.dtype == x.dtype and bool(jnp.isfinite(grad).all())
