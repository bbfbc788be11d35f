"""Building blocks shared by every architecture: attention, feed-forward, blocks, transformer, patches, positions.

A :class:`Block` owns its norms and composes an attention and a feed-forward module (its own by
default, any module with the same call contract otherwise), with layer scale and stochastic depth
as options. A :class:`Transformer` is a stack of blocks and a final norm; it records each block's
output in a :class:`~vit_parity.core.features.Features` when one is given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.core.features import Features, block_label
from vit_parity.core.posemb import sincos_table
from vit_parity.core.validate import check_choice, drop_path_rates
from vit_torch import gemm

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact, torch's default
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """A LayerNorm or RMSNorm over the last axis, by name."""
    check_choice(kind, NORMS, "norm")
    return nn.LayerNorm(dim, eps=eps) if kind == "layernorm" else nn.RMSNorm(dim, eps=eps)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention weights ``(b, h, n_q, n_k)``; ``mask`` is True where a query may attend."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return logits.softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head attention fused through ``scaled_dot_product_attention`` ("Attention Is All You Need").

    ``forward(x, mask)`` takes ``x`` of shape ``(b, n, dim)`` (normalized by the caller: the block owns
    its norms) and an optional boolean ``mask`` broadcastable to ``(b, heads, n, n)``, True where a query
    may attend to a key. ``context=c`` makes it cross-attention: queries from ``x``, keys and values from
    ``c``, through the same ``to_qkv`` weights. ``return_attn=True`` also returns the attention weights
    (explicit softmax). ``qk_norm`` adds an RMSNorm over each head's queries and keys ("Scaling Vision
    Transformers to 22B Parameters"). ``x`` may be a jagged nested tensor when there is no mask.
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
        self.to_qkv = Linear(dim, inner * 3, bias=qkv_bias)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = Linear(inner, dim, bias=out_bias) if project_out else nn.Identity()
        self.out_drop = nn.Dropout(dropout)
        self.q_norm = nn.RMSNorm(dim_head, eps=eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(dim_head, eps=eps) if qk_norm else None

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, context: Tensor | None = None, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        q, k, v = (self._split_heads(t) for t in project_qkv(self.to_qkv, x, context))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if return_attn:
            attn = attention_weights(q, k, mask)
            out = F.dropout(attn, self.dropout, self.training) @ v
        else:
            p = self.dropout if self.training else 0.0
            if q.is_nested:  # torch's jagged kernel builds a strided nested tensor and warns about that API
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype")
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_drop(self.to_out(out.transpose(1, 2).flatten(-2)))
        return (out, attn) if return_attn else out

    def _split_heads(self, t: Tensor) -> Tensor:
        """``(b, n, heads * d)`` to ``(b, n, heads, d)``; fused attention wants jagged tensors contiguous."""
        return (t.contiguous() if t.is_nested else t).unflatten(-1, (self.heads, -1))


def project_qkv(to_qkv: nn.Linear, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Queries of ``x`` and keys and values of ``context`` (default: ``x``) through one fused ``to_qkv`` projection
    (its output features ordered q, k, v), each ``(b, tokens, inner)``."""
    if context is None:
        q, k, v = to_qkv(x).chunk(3, dim=-1)
        return q, k, v
    w = to_qkv.weight.chunk(3)
    b = (None,) * 3 if to_qkv.bias is None else to_qkv.bias.chunk(3)
    return F.linear(x, w[0], b[0]), F.linear(context, w[1], b[1]), F.linear(context, w[2], b[2])


class Linear(nn.Linear):
    """An ``nn.Linear`` (same constructor, parameters and state dict) whose products run through :func:`gemm.linear`.

    On CPU in float32 that picks oneDNN or MKL per product shape (see :mod:`vit_torch.gemm`); everywhere
    else it is ``F.linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return gemm.linear(x, self.weight, self.bias)


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` whose backward recomputes the GELU from ``h``.

    Plain autograd keeps both ``h`` and ``gelu(h)`` (each ``hidden_dim`` wide) until the backward pass;
    this keeps ``h`` only, which cuts a training step's activation memory by about a quarter. Its
    matrix products go through :mod:`vit_torch.gemm` (oneDNN on CPU where that is faster).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return gemm.forward_mm(F.gelu(h), weight, bias)

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
            grad_h = torch.ops.aten.gelu_backward(gemm.grad_input_mm(grad, weight.to(grad.dtype)), h)
        if ctx.needs_input_grad[1]:
            grad_w = gemm.grad_weight_mm(grad, F.gelu(h))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.flatten(0, -2).sum(0)
        return grad_h, grad_w, grad_b


class FeedForward(nn.Module):
    """The transformer MLP: Linear, activation (exact GELU by default), Dropout, Linear, Dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, *, act: str = "gelu") -> None:
        super().__init__()
        check_choice(act, tuple(ACTIVATIONS), "act")
        self.act = act
        self.fc1 = Linear(dim, hidden_dim)
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        fused = self.act == "gelu" and torch.is_grad_enabled() and not h.is_nested
        if fused and (self.drop.p == 0 or not self.training):
            return self.drop(_GeluLinear.apply(h, self.fc2.weight, self.fc2.bias))  # same numbers, less memory
        return self.drop(self.fc2(self.drop(ACTIVATIONS[self.act](h))))


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch, ``gamma`` starting at ``init_values`` (CaiT, Touvron et al., 2021)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): ``gamma`` starts at ``init_values``."""
        return {"gamma": ("constant", self.init_values)}

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


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


class Block(nn.Module):
    """A residual transformer block (as timm's ``Block``): it owns its norms and composes an attention and a
    feed-forward module.

    Pre-norm (default): ``x + drop_path(ls1(attn(norm1(x))))``, then ``x + drop_path(ls2(ff(norm2(x))))``.
    ``post_norm=True`` is CCT's layer: ``norm2`` normalizes the stream after the attention residual and the
    feed-forward reads and adds to the normalized stream. ``attn`` and ``ff`` replace the default
    :class:`Attention` and :class:`FeedForward` by any module with the same call: ``attn(x, mask,
    return_attn=...)`` and ``ff(x)`` (talking heads, re-attention, cross-covariance, windowed attention ...).
    ``layer_scale`` (a number) scales each branch by a learned per-channel ``gamma`` starting there.
    A ``context=`` given to the block goes to its attention unchanged (class attention reads the patches).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        *,
        qkv_bias: bool = False,
        attn_dropout: float | None = None,
        out_bias: bool = True,
        qk_norm: bool = False,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        eps: float = 1e-5,
        norm: str = "layernorm",
        act: str = "gelu",
        post_norm: bool = False,
        attn: nn.Module | None = None,
        ff: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if ff is None and mlp_dim is None:
            raise ValueError("Block needs mlp_dim (the feed-forward width) unless a feed-forward module ff is given")
        self.post_norm = post_norm
        self.norm1 = make_norm(norm, dim, eps)
        self.attn = attn or Attention(
            dim, heads, dim_head, dropout, qkv_bias=qkv_bias, attn_dropout=attn_dropout, out_bias=out_bias,
            eps=eps, qk_norm=qk_norm,
        )  # fmt: skip
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = make_norm(norm, dim, eps)
        self.ff = ff or FeedForward(dim, mlp_dim, dropout, act=act)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, context: Tensor | None = None, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Any]:
        extra = {} if context is None else {"context": context}
        y = self.attn(self.norm1(x), mask, return_attn=return_attn, **extra)
        y, attn = y if return_attn else (y, None)
        x = x + self.drop_path(self.ls1(y))
        if self.post_norm:
            x = self.norm2(x)
            x = x + self.drop_path(self.ls2(self.ff(x)))
        else:
            x = x + self.drop_path(self.ls2(self.ff(self.norm2(x))))
        return (x, attn) if return_attn else x


def run_block(block: nn.Module, x: Tensor, mask: Tensor | None, features: Features | None, label: str) -> Tensor:
    """``block(x, mask)``, recording its output (and attention weights when asked) under ``label``."""
    if features is None:
        return block(x, mask)
    if features.attn:
        x, attn = block(x, mask, return_attn=True)
        features.add_attn(label, attn)
    else:
        x = block(x, mask)
    features.add(label, x)
    return x


class Transformer(nn.Module):
    """A stack of blocks followed by a final norm (``final_norm=False``: none).

    ``block`` is the block class (:class:`Block` or a subclass with its constructor, e.g. ViViT's factorized
    block); ``drop_path`` is one rate for every block or one per block; other keyword arguments go to every
    block.
    ``forward(x, mask, features=f, prefix="spatial/")`` records ``spatial/block00`` ... in ``f``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        drop_path: float | Sequence[float] = 0.0,
        eps: float = 1e-5,
        norm: str = "layernorm",
        final_norm: bool = True,
        block: type[Block] | None = None,
        **block_options: Any,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            (block or Block)(
                dim, heads, dim_head, mlp_dim, dropout, drop_path=rate, eps=eps, norm=norm, **block_options
            )
            for rate in drop_path_rates(drop_path, depth)
        )
        self.norm = make_norm(norm, dim, eps) if final_norm else nn.Identity()

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, features: Features | None = None, prefix: str = ""
    ) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = run_block(block, x, mask, features, block_label(i, prefix))
        return self.norm(x)


class PatchEmbed(nn.Module):
    """Cut ``(b, c, *spatial)`` into non-overlapping patches of any number of axes and embed them.

    Each patch is flattened as ``(*patch, c)``, normalized, projected to ``dim`` and normalized again
    (``norms=False``: only projected, as the original ViT). Returns the tokens ``(b, n, dim)`` and the patch grid.
    """

    def __init__(
        self, patch_size: tuple[int, ...], channels: int, dim: int, *, eps: float = 1e-5, norms: bool = True
    ) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        patch_dim = channels * math.prod(self.patch_size)
        self.pre_norm = nn.LayerNorm(patch_dim, eps=eps) if norms else nn.Identity()
        self.proj = Linear(patch_dim, dim)
        self.post_norm = nn.LayerNorm(dim, eps=eps) if norms else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return self.embed(patchify(x, self.patch_size)), grid_of(x.shape[2:], self.patch_size)

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


def with_features(logits: Tensor, features: Features | None) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """What a model returns: its logits, or ``(logits, features)`` when features were asked for."""
    return logits if features is None else (logits, features.result())


class Head(nn.Module):
    """A classifier that normalizes what it reads: LayerNorm (``norm``), then Linear (``fc``)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x))
