"""Fast paths users reach for: jit compiles once per shape, bf16 compute agrees with fp32, lean training memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from io import StringIO

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

import vit_flax.layers
from vit_flax import SimpleViT, ViT
from vit_flax.layers import FeedForward

SMALL = dict(num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
TINY = dict(num_classes=10, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # recorded once per XLA compilation


@contextmanager
def count_compiles() -> Iterator[list[str]]:
    """Collects one entry per XLA backend compilation made inside the block."""
    seen: list[str] = []

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if event == COMPILE_EVENT:
            seen.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_training_step_compiles_once_per_shape() -> None:
    model = ViT(image_size=16, patch_size=8, **TINY, dropout=0.1, rngs=nnx.Rngs(0))
    model.train()
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model: ViT, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        def loss_fn(model: ViT) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    keys = jax.random.split(jax.random.key(0), 3)
    batches = [(jax.random.normal(k, (4, 16, 16, 3)), jnp.arange(4)) for k in keys]
    with count_compiles() as first:
        losses = [step(model, optimizer, *batches[0])]
    assert first, "the first step must compile"
    with count_compiles() as later:
        losses += [step(model, optimizer, x, y) for x, y in batches[1:]]
    assert later == [], f"recompiled for a batch of the same shape: {later}"
    assert int(optimizer.step[...]) == 3
    assert all(np.isfinite(float(v)) for v in losses)


@pytest.mark.parametrize("cls", [ViT, SimpleViT])
def test_inference_compiles_once_per_shape(cls: type) -> None:
    model = cls(image_size=16, patch_size=8, **TINY, rngs=nnx.Rngs(0))
    model.eval()
    forward = nnx.jit(lambda m, x: m(x))
    x0, x1, x2 = jax.random.normal(jax.random.key(1), (3, 2, 16, 16, 3))
    with count_compiles() as first:
        a = forward(model, x0)
    assert first
    with count_compiles() as later:
        b = forward(model, x1)
    assert later == []
    assert not np.allclose(a, b)  # the new batch was really computed
    with count_compiles() as new_shape:  # the counter has teeth: a new batch size compiles again
        forward(model, x2[:1])
    assert len(new_shape) >= 1


@pytest.mark.parametrize("cls", [ViT, SimpleViT])
def test_bf16_compute_agrees_with_fp32(cls: type) -> None:
    ref = cls(image_size=32, patch_size=8, **SMALL, rngs=nnx.Rngs(0))
    fast = cls(image_size=32, patch_size=8, **SMALL, dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    nnx.update(fast, nnx.state(ref, nnx.Param))  # same fp32 weights, bf16 compute
    ref.eval()
    fast.eval()
    params = jax.tree.leaves(nnx.state(fast, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    x = jax.random.normal(jax.random.key(2), (8, 32, 32, 3))
    forward = nnx.jit(lambda m, x: m(x))
    want, got = forward(ref, x), forward(fast, x)
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got, np.float32)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < rel < 2e-2, rel
    np.testing.assert_array_equal(got.argmax(-1), np.asarray(want).argmax(-1))


def test_feed_forward_keeps_few_hidden_activations_for_the_backward_pass() -> None:
    ff = FeedForward(8, 32, rngs=nnx.Rngs(0))
    graphdef, state, rest = nnx.split(ff, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))

    def loss(state: nnx.State, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state, rest)(x).sum()

    def hidden_residuals(fn: Callable) -> int:
        """How many arrays of the hidden width autodiff keeps for the backward pass."""
        with redirect_stdout(StringIO()) as listing:
            print_saved_residuals(fn, state, x)
        return sum(line.startswith("f32[2,5,32] ") for line in listing.getvalue().splitlines())

    def plain(state: nnx.State, x: jax.Array) -> jax.Array:  # the same MLP with the un-checkpointed GELU
        ff = nnx.merge(graphdef, state, rest)
        return ff.fc2(jax.nn.gelu(ff.fc1(x), approximate=False)).sum()

    assert hidden_residuals(loss) <= 2  # fc1's output and the GELU's, nothing of erf's temporaries
    assert hidden_residuals(plain) > hidden_residuals(loss)
    np.testing.assert_allclose(loss(state, x), plain(state, x), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(jax.grad(loss)(state, x)), jax.tree.leaves(jax.grad(plain)(state, x))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_training_step_needs_less_memory_than_with_the_plain_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """XLA's planned temporaries for a training step on 257 tokens: the flash-style attention and the lean
    LayerNorm each lower them against jax.nn.dot_product_attention and nnx.LayerNorm."""

    def temporaries_mib() -> float:
        model = ViT(image_size=128, patch_size=8, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128, dim_head=16)
        graphdef, state, rest = nnx.split(model, nnx.Param, ...)

        def loss(state: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
            logits = nnx.merge(graphdef, state, rest)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        x, y = jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32)
        return jax.jit(jax.grad(loss)).lower(state, x, y).compile().memory_analysis().temp_size_in_bytes / 2**20

    def plain_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        q, k, v = (t.swapaxes(1, 2) for t in (q, k, v))  # (b, h, n, d) to jax's (b, n, h, d)
        return jax.nn.dot_product_attention(q, k, v, mask=mask).swapaxes(1, 2)

    ours = temporaries_mib()
    with monkeypatch.context() as m:
        m.setattr(vit_flax.layers, "LayerNorm", nnx.LayerNorm)
        plain_norm = temporaries_mib()
        m.setattr(vit_flax.layers, "attend", plain_attention)
        plain_both = temporaries_mib()
    assert ours < plain_norm < plain_both, (ours, plain_norm, plain_both)
    assert ours < 0.75 * plain_both, (ours, plain_norm, plain_both)
