"""vit_flax.attention.attend: values and gradients against an explicit softmax, blocks, masks, residuals."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from vit_flax.attention import attend


def explicit(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Plain softmax attention, differentiated by autodiff (a fully masked row averages the values)."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, -1e30)
    return jax.nn.softmax(logits, axis=-1) @ v


def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    logits = q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
        logits = np.where(mask.any(-1, keepdims=True), logits, 0.0)  # no key: uniform weights
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v.astype(np.float64)


def inputs(b: int, h: int, nq: int, nk: int, d: int = 8, seed: int = 0) -> tuple[jax.Array, ...]:
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, h, nq, d))
    k, v = (jax.random.normal(key, (b, h, nk, d)) for key in keys[1:])
    return q, k, v


def grads(fn, q, k, v, mask=None):
    # a loss whose gradient differs per output element
    weight = jnp.sin(jnp.arange(q.shape[2] * v.shape[-1], dtype=jnp.float32)).reshape(q.shape[2], v.shape[-1])
    return jax.grad(lambda q, k, v: (fn(q, k, v, mask) * weight).sum(), argnums=(0, 1, 2))(q, k, v)


# block_bytes: 1 GiB keeps one block; 2000 bytes cut 37 queries into blocks of 8 with a padded last block
@pytest.mark.parametrize("block_bytes", [2**30, 2000])
@pytest.mark.parametrize("nk", [37, 21])
def test_values_and_gradients_match_explicit_softmax(block_bytes: int, nk: int) -> None:
    q, k, v = inputs(2, 3, 37, nk)
    out = attend(q, k, v, block_bytes=block_bytes)
    np.testing.assert_allclose(out, numpy_attention(*map(np.asarray, (q, k, v))), rtol=1e-5, atol=1e-5)
    got = grads(lambda *a: attend(*a, block_bytes=block_bytes), q, k, v)
    for g, want in zip(got, grads(explicit, q, k, v)):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_bytes", [2**30, 2000])
@pytest.mark.parametrize("mask_shape", [(2, 1, 37, 37), (2, 3, 37, 37), (37, 37)])
def test_masks_broadcast_and_a_query_without_keys_averages_the_values(block_bytes: int, mask_shape: tuple) -> None:
    q, k, v = inputs(2, 3, 37, 37, seed=1)
    mask = np.array(jax.random.uniform(jax.random.key(5), mask_shape) > 0.5)
    mask[..., 4, :] = False  # query 4 may attend to nothing
    full = np.broadcast_to(mask, (2, 3, 37, 37))
    out = attend(q, k, v, jnp.asarray(mask), block_bytes=block_bytes)
    np.testing.assert_allclose(out, numpy_attention(*map(np.asarray, (q, k, v)), full), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, :, 4], np.asarray(v).mean(axis=2), rtol=1e-5, atol=1e-6)
    fn = lambda *a: attend(*a, block_bytes=block_bytes)  # noqa: E731
    dq, dk, dv = grads(fn, q, k, v, jnp.asarray(mask))
    want = grads(explicit, q, k, v, jnp.asarray(full))
    for g, w in zip((dq, dk, dv), want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(dq[:, :, 4], 0.0)  # its output does not depend on its query


def test_blocks_do_not_change_the_result_under_jit() -> None:
    q, k, v = inputs(1, 2, 100, 100, seed=2)
    whole = jax.jit(lambda q, k, v: attend(q, k, v, block_bytes=2**30))
    blocked = jax.jit(lambda q, k, v: attend(q, k, v, block_bytes=4096))
    np.testing.assert_allclose(blocked(q, k, v), whole(q, k, v), rtol=1e-6, atol=1e-6)
    for a, b in zip(grads(lambda *x: attend(*x, block_bytes=4096), q, k, v), grads(attend, q, k, v)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_backward_keeps_no_attention_matrix() -> None:
    q, k, v = inputs(1, 2, 64, 64)
    for fn in (attend, explicit):
        buf = io.StringIO()
        with redirect_stdout(buf):
            print_saved_residuals(lambda q, k, v, fn=fn: fn(q, k, v).sum(), q, k, v)
        quadratic = [line for line in buf.getvalue().splitlines() if "64,64]" in line]
        # the explicit softmax keeps its (1, 2, 64, 64) probabilities; attend keeps none
        assert bool(quadratic) == (fn is explicit), buf.getvalue()


def test_bfloat16_inputs_give_bfloat16_close_to_float32() -> None:
    q, k, v = inputs(2, 2, 33, 33, seed=3)
    low = attend(*(t.astype(jnp.bfloat16) for t in (q, k, v)))
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(jnp.float32), attend(q, k, v), rtol=2e-2, atol=2e-2)
    g = jax.grad(lambda q: attend(q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16)).astype(jnp.float32).sum())
    assert g(q.astype(jnp.bfloat16)).dtype == jnp.bfloat16
