"""Cross-attention with a residual: a few query tokens of one stream attend to another stream's tokens.

Mirrors ``vit_torch.cross_attention``. CrossViT ("CrossViT: Cross-Attention Multi-Scale Vision Transformer for
Image Classification", Chen et al., 2021) exchanges information between its two branches this way: each branch's
class token, projected to the other branch's width, attends to that branch's patch tokens and to itself, and is
projected back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Attention, layer_norm

Array = jax.Array


class CrossAttention(nnx.Module):
    """Pre-norm cross-attention of queries ``x`` ``(b, m, dim)`` to ``context`` ``(b, n, context_dim)``, with a
    residual (CrossViT, Chen et al., 2021).

    ``x + project_out(attn(q, context=kv))`` with ``q = norm(project_in(x))`` and ``kv = [q; context]``
    (``include_self=True``, the queries attend to themselves as well) or ``kv = context``. Only the queries are
    normalized here: the context is used as given (CrossViT's patch tokens leave their transformer through its
    final norm). ``project_in`` / ``project_out`` map ``dim`` to ``context_dim`` and back, and are absent when the
    widths agree. ``attn`` replaces the default :class:`~vit_flax.layers.Attention` (of ``context_dim``) by any
    module with the call ``attn(q, mask, context=kv, return_attn=...)``.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        *,
        include_self: bool = True,
        eps: float = 1e-5,
        attn: nnx.Module | None = None,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        context_dim = dim if context_dim is None else context_dim
        project = context_dim != dim
        self.include_self = include_self
        self.project_in = nnx.Linear(dim, context_dim, dtype=dtype, rngs=rngs) if project else None
        self.norm = layer_norm(context_dim, eps, rngs, dtype)
        self.attn = attn or Attention(context_dim, heads, dim_head, dropout, dtype=dtype, rngs=rngs)
        self.project_out = nnx.Linear(context_dim, dim, dtype=dtype, rngs=rngs) if project else None

    def __call__(
        self, x: Array, context: Array, mask: Array | None = None, *, return_attn: bool = False
    ) -> Array | tuple[Array, Any]:
        q = self.norm(x if self.project_in is None else self.project_in(x))
        kv = jnp.concatenate((q, context), axis=1) if self.include_self else context
        y = self.attn(q, mask, context=kv, return_attn=return_attn)
        y, attn = y if return_attn else (y, None)
        x = x + (y if self.project_out is None else self.project_out(y))
        return (x, attn) if return_attn else x
