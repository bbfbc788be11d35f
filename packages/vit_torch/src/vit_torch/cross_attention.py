"""Cross-attention with a residual: a few query tokens of one stream attend to another stream's tokens.

CrossViT ("CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification", Chen et al., 2021)
exchanges information between its two branches this way: each branch's class token, projected to the other
branch's width, attends to that branch's patch tokens and to itself, and is projected back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vit_torch.layers import Attention, Linear


class CrossAttention(nn.Module):
    """Pre-norm cross-attention of queries ``x`` ``(b, m, dim)`` to ``context`` ``(b, n, context_dim)``, with a
    residual (CrossViT, Chen et al., 2021).

    ``x + project_out(attn(q, context=kv))`` with ``q = norm(project_in(x))`` and ``kv = [q; context]``
    (``include_self=True``, the queries attend to themselves as well) or ``kv = context``. Only the queries are
    normalized here: the context is used as given (CrossViT's patch tokens leave their transformer through its
    final norm). ``project_in`` / ``project_out`` map ``dim`` to ``context_dim`` and back, and are identities
    when the widths agree. ``attn`` replaces the default :class:`~vit_torch.layers.Attention` (of
    ``context_dim``) by any module with the call ``attn(q, mask, context=kv, return_attn=...)``.
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
        attn: nn.Module | None = None,
    ) -> None:
        super().__init__()
        context_dim = dim if context_dim is None else context_dim
        self.include_self = include_self
        self.project_in = Linear(dim, context_dim) if context_dim != dim else nn.Identity()
        self.norm = nn.LayerNorm(context_dim, eps=eps)
        self.attn = attn or Attention(context_dim, heads, dim_head, dropout)
        self.project_out = Linear(context_dim, dim) if context_dim != dim else nn.Identity()

    def forward(
        self, x: Tensor, context: Tensor, mask: Tensor | None = None, *, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Any]:
        q = self.norm(self.project_in(x))
        kv = torch.cat((q, context), dim=1) if self.include_self else context
        y = self.attn(q, mask, context=kv, return_attn=return_attn)
        y, attn = y if return_attn else (y, None)
        x = x + self.project_out(y)
        return (x, attn) if return_attn else x
