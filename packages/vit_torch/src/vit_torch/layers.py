"""Building blocks shared by every architecture: attention, feed-forward, transformer, patches, positions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.posemb import sincos_table


@dataclass
class Intermediates:
    """Collects each transformer block's output (and attention maps when ``with_attn``) in a forward pass."""

    with_attn: bool = False
    blocks: list[Tensor] = field(default_factory=list)
    attn: list[Tensor] = field(default_factory=list)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention weights ``(b, h, n_q, n_k)``; ``mask`` is True where a query may attend."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return logits.softmax(dim=-1)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention, fused through ``scaled_dot_product_attention``.

    ``forward(x, mask)`` takes ``x`` of shape ``(b, n, dim)`` and an optional boolean ``mask``
    broadcastable to ``(b, heads, n, n)``, True where a query may attend to a key.
    ``qk_norm`` adds an RMSNorm over each head's queries and keys ("Scaling Vision Transformers to
    22B Parameters"). ``forward(x, mask, context=c)`` is cross-attention: queries from ``x``, keys
    and values from ``c`` (not normalized here), through the same ``to_qkv`` weights. ``x`` may be a
    jagged nested tensor (``torch.nested``, ``layout=torch.jagged``) when there is no mask.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        *,
        qkv_bias: bool = False,
        attn_dropout: float | None = None,
        out_bias: bool = True,
        eps: float = 1e-5,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout if attn_dropout is None else attn_dropout
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Linear(inner, dim, bias=out_bias) if project_out else nn.Identity()
        self.out_drop = nn.Dropout(dropout)
        self.q_norm = nn.RMSNorm(dim_head, eps=eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(dim_head, eps=eps) if qk_norm else None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        intermediates: Intermediates | None = None,
        *,
        context: Tensor | None = None,
    ) -> Tensor:
        x = self.norm(x)
        if context is None:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            w = self.to_qkv.weight.chunk(3)
            b = (None,) * 3 if self.to_qkv.bias is None else self.to_qkv.bias.chunk(3)
            q, k, v = F.linear(x, w[0], b[0]), F.linear(context, w[1], b[1]), F.linear(context, w[2], b[2])
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if intermediates is not None and intermediates.with_attn:
            attn = attention_weights(q, k, mask)
            intermediates.attn.append(attn)
            out = F.dropout(attn, self.dropout, self.training) @ v
        else:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_drop(self.to_out(out.transpose(1, 2).flatten(-2)))

    def _split_heads(self, t: Tensor) -> Tensor:
        """``(b, n, heads * d)`` to ``(b, n, heads, d)``; fused attention wants jagged tensors contiguous."""
        return (t.contiguous() if t.is_nested else t).unflatten(-1, (self.heads, -1))


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` whose backward recomputes the GELU from ``h``.

    Plain autograd keeps both ``h`` and ``gelu(h)`` (each ``hidden_dim`` wide) until the backward pass;
    this keeps ``h`` only, which cuts a training step's activation memory by about a quarter.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        h, weight, bias = inputs
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        h, weight = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # computed in the dtype of grad, as autocast's own linear backward does
            grad_h = torch.ops.aten.gelu_backward(grad @ weight.to(grad.dtype), h)
        if ctx.needs_input_grad[1]:
            grad_w = grad.flatten(0, -2).T @ F.gelu(h).flatten(0, -2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.flatten(0, -2).sum(0)
        return grad_h, grad_w, grad_b


class FeedForward(nn.Module):
    """Pre-norm MLP: LayerNorm, Linear, GELU (exact), Dropout, Linear, Dropout (``norm=False``: no LayerNorm)."""

    def __init__(
        self, dim: int, hidden_dim: int, dropout: float = 0.0, *, eps: float = 1e-5, norm: bool = True
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(self.norm(x))
        if torch.is_grad_enabled() and not h.is_nested and (self.drop.p == 0 or not self.training):
            return self.drop(_GeluLinear.apply(h, self.fc2.weight, self.fc2.bias))  # same numbers, less memory
        return self.drop(self.fc2(self.drop(F.gelu(h))))


class Block(nn.Module):
    """One residual transformer block: ``x + attn(x)``, then ``x + ff(x)``."""

    def __init__(self, attn: Attention, ff: FeedForward) -> None:
        super().__init__()
        self.attn = attn
        self.ff = ff

    def forward(self, x: Tensor, mask: Tensor | None = None, intermediates: Intermediates | None = None) -> Tensor:
        x = x + self.attn(x, mask, intermediates)
        return x + self.ff(x)


class Transformer(nn.Module):
    """A stack of pre-norm blocks followed by a final LayerNorm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        out_bias: bool = True,
        eps: float = 1e-5,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(
                Attention(dim, heads, dim_head, dropout, out_bias=out_bias, eps=eps, qk_norm=qk_norm),
                FeedForward(dim, mlp_dim, dropout, eps=eps),
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, mask: Tensor | None = None, intermediates: Intermediates | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, mask, intermediates)
            if intermediates is not None:
                intermediates.blocks.append(x)
        return self.norm(x)


class PatchEmbed(nn.Module):
    """Cut ``(b, c, *spatial)`` into non-overlapping patches of any number of axes and embed them.

    Each patch is flattened as ``(*patch, c)``, normalized, projected to ``dim`` and normalized again.
    Returns the tokens ``(b, n, dim)`` and the patch grid.
    """

    def __init__(self, patch_size: tuple[int, ...], channels: int, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        patch_dim = channels * math.prod(self.patch_size)
        self.pre_norm = nn.LayerNorm(patch_dim, eps=eps)
        self.proj = nn.Linear(patch_dim, dim)
        self.post_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return self.post_norm(self.proj(self.pre_norm(patchify(x, self.patch_size)))), grid_of(
            x.shape[2:], self.patch_size
        )

    def embed(self, patches: Tensor) -> Tensor:
        """Embed patches already cut by :func:`patchify`: ``(..., prod(patch) * c)`` to ``(..., dim)``."""
        return self.post_norm(self.proj(self.pre_norm(patches)))


def grid_of(spatial: tuple[int, ...] | torch.Size, patch_size: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s // p for s, p in zip(spatial, patch_size))


def patchify(x: Tensor, patch_size: tuple[int, ...]) -> Tensor:
    """``(b, c, *spatial)`` to ``(b, n_patches, prod(patch) * c)``, patches in row-major grid order."""
    b, c, *spatial = x.shape
    n = len(patch_size)
    split = [b, c]
    for s, p in zip(spatial, patch_size):
        split += [s // p, p]
    order = [0, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2), 1]
    return x.reshape(split).permute(order).reshape(b, -1, c * math.prod(patch_size))


def crop_grid(pos: Tensor, full_grid: tuple[int, ...], grid: tuple[int, ...]) -> Tensor:
    """Positional embeddings ``(1, prod(full_grid), d)`` cut to the top-left ``grid`` of the same layout."""
    if tuple(grid) == tuple(full_grid):
        return pos
    pos = pos.reshape(1, *full_grid, -1)[(slice(None), *(slice(0, g) for g in grid))]
    return pos.reshape(1, math.prod(grid), -1)


def sincos_posemb(grid: tuple[int, ...], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed sin-cos embedding ``(prod(grid), dim)`` for an n-D grid (shared numpy table)."""
    return torch.tensor(sincos_table(tuple(grid), dim, temperature))


class DropPath(nn.Module):
    """Stochastic depth ("Deep Networks with Stochastic Depth", Huang et al., 2016): in training, zero each
    sample's residual branch with probability ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep
        return x * mask.to(x.dtype) / keep
