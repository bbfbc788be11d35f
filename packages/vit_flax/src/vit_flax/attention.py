"""Memory-lean softmax attention for XLA on any device, the counterpart of torch's fused SDPA.

``attend(q, k, v, mask)`` computes ``softmax(q k^T / sqrt(d)) v`` on ``(b, h, n, d)`` arrays. Its backward
pass keeps only the inputs, the output and two numbers per query (the softmax's max and sum) and recomputes
the attention probabilities, as flash attention does ("FlashAttention", Dao et al., 2022): no
``(b, h, n_q, n_k)`` array outlives the forward pass. Long sequences are processed in blocks of queries so
that each block of logits stays small enough to live in cache; the result does not depend on the block size
beyond rounding.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array

# Largest (b, h, block, n_k) fp32 logits block, in bytes: measured on CPU, blocks of 4-16 MiB run a
# 1025-token ViT-S attention about twice as fast as one whole (b, h, n, n) array; GPUs are indifferent.
BLOCK_BYTES = 8 * 2**20


def attend(q: Array, k: Array, v: Array, mask: Array | None = None, *, block_bytes: int = BLOCK_BYTES) -> Array:
    """Softmax attention of ``(b, h, n_q, d)`` queries over ``(b, h, n_k, d)`` keys and values.

    ``mask`` is boolean, broadcastable to ``(b, h, n_q, n_k)``, True where a query may attend to a key.
    A query that may attend to no key gets the mean of the values, as ``jax.nn.dot_product_attention``
    gives. Computes in float32 whatever the input dtype and returns ``q.dtype``.
    """
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], nq, nk))  # batch and head axes may stay 1
    blocks = max(1, math.ceil(b * h * nq * nk * 4 / block_bytes))
    block = min(nq, (math.ceil(nq / blocks) + 7) // 8 * 8)  # queries per block, a multiple of 8
    return _attend(q, k, v, mask, block)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q: Array, k: Array, v: Array, mask: Array | None, block: int) -> Array:
    return _forward(q, k, v, mask, block)[0]


def _logits(q: Array, k: Array, mask: Array | None) -> Array:
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    return s if mask is None else jnp.where(mask, s, jnp.finfo(jnp.float32).min)


def _blocks(x: Array | None, block: int) -> Array | None:
    """``(..., n, last)`` to ``(n_blocks, ..., block, last)``, zero-padding ``n`` to a multiple of ``block``."""
    if x is None:
        return None
    n = x.shape[-2]
    count = -(-n // block)
    pad = [(0, 0)] * x.ndim
    pad[-2] = (0, count * block - n)
    x = jnp.pad(x, pad).reshape(*x.shape[:-2], count, block, x.shape[-1])
    return jnp.moveaxis(x, -3, 0)


def _unblock(x: Array, n: int) -> Array:
    x = jnp.moveaxis(x, 0, -3)
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])[..., :n, :]


def _forward(q: Array, k: Array, v: Array, mask: Array | None, block: int) -> tuple[Array, tuple]:
    scale = q.shape[-1] ** -0.5
    nq = q.shape[2]

    def one_block(qb: Array, mb: Array | None) -> tuple[Array, Array]:
        s = _logits(qb * jnp.asarray(scale, qb.dtype), k, mb)
        m = s.max(-1, keepdims=True)
        e = jnp.exp(s - m)
        total = e.sum(-1, keepdims=True)
        o = jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), v, preferred_element_type=jnp.float32) / total
        return o, jnp.concatenate([m, 1.0 / total], axis=-1)  # kept apart: min + log(n) rounds to min

    if block >= nq:
        o, stats = one_block(q, mask)
    else:
        _, (o, stats) = jax.lax.scan(
            lambda _, xs: (None, one_block(*xs)), None, (_blocks(q, block), _blocks(mask, block))
        )
        o, stats = _unblock(o, nq), _unblock(stats, nq)
    o = o.astype(q.dtype)
    return o, (q, k, v, mask, o, stats)


def _backward(block: int, res: tuple, do: Array) -> tuple[Array, Array, Array, None]:
    q, k, v, mask, o, stats = res
    scale = q.shape[-1] ** -0.5
    nq = q.shape[2]
    f32 = jnp.float32
    kf, vf = k.astype(f32), v.astype(f32)
    delta = (do.astype(f32) * o.astype(f32)).sum(-1, keepdims=True)  # sum_k p * dp, per query

    def one_block(qb: Array, dob: Array, sb: Array, db: Array, mb: Array | None) -> tuple[Array, Array, Array]:
        qs = qb.astype(f32) * scale
        p = jnp.exp(_logits(qs, kf, mb) - sb[..., :1]) * sb[..., 1:]
        dob = dob.astype(f32)
        dv = jnp.einsum("bhqk,bhqd->bhkd", p, dob)
        ds = p * (jnp.einsum("bhqd,bhkd->bhqk", dob, vf) - db)
        if mb is not None:  # masked logits are constants: a query that sees no key passes no gradient
            ds = jnp.where(mb, ds, 0.0)
        dk = jnp.einsum("bhqk,bhqd->bhkd", ds, qs)
        dq = jnp.einsum("bhqk,bhkd->bhqd", ds, kf) * scale
        return dq, dk, dv

    if block >= nq:
        dq, dk, dv = one_block(q, do, stats, delta, mask)
    else:

        def step(carry: tuple[Array, Array], xs: tuple) -> tuple[tuple[Array, Array], Array]:
            dq, dk, dv = one_block(*xs)
            return (carry[0] + dk, carry[1] + dv), dq

        zeros = jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32)
        xs = (_blocks(q, block), _blocks(do, block), _blocks(stats, block), _blocks(delta, block))
        (dk, dv), dq = jax.lax.scan(step, zeros, (*xs, _blocks(mask, block)))
        dq = _unblock(dq, nq)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attend.defvjp(_forward, _backward)
