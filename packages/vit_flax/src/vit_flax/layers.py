"""Building blocks shared by every architecture: attention, feed-forward, blocks, transformer, patches, positions.

Mirrors ``vit_torch.layers``: same classes, arguments and attribute paths; channels-last inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.attention import attend
from vit_parity.core.features import Features, block_label
from vit_parity.core.posemb import sincos_table
from vit_parity.core.validate import check_choice, drop_path_rates

Array = jax.Array
# torch's default GELU is the exact one. Under jax.checkpoint the backward pass recomputes erf from the input
# instead of keeping its temporaries (same values); why not more is rematerialized: DESIGN.md, speed and memory.
gelu = jax.checkpoint(partial(jax.nn.gelu, approximate=False))
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": gelu,
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, eps: float, rngs: nnx.Rngs, dtype: jnp.dtype | None = None) -> nnx.Module:
    """A LayerNorm or RMSNorm over the last axis, by name, matching torch's."""
    check_choice(kind, NORMS, "norm")
    if kind == "layernorm":
        return layer_norm(dim, eps, rngs, dtype)
    return nnx.RMSNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs, dtype: jnp.dtype | None = None) -> LayerNorm:
    """A LayerNorm matching torch's: explicit eps, two-pass variance."""
    return LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` over the last axis, same parameters and values, with a leaner backward pass.

    Autodiff of ``nnx.LayerNorm`` keeps four activations of the input's size for the backward pass; this
    one keeps the input and two numbers per row (mean, reciprocal standard deviation) and recomputes the
    normalized input, as torch's fused LayerNorm does.
    """

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        if mask is not None or self.scale is None or self.bias is None or self.reduction_axes not in (-1, (-1,)):
            return super().__call__(x, mask=mask)
        x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
        return _layer_norm(x, scale, bias, self.epsilon)


def _norm_stats(x: Array, eps: float) -> tuple[Array, Array, Array]:
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x.mean(-1, keepdims=True)
    return x, mean, jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + eps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_forward(x: Array, scale: Array, bias: Array, eps: float) -> tuple[Array, tuple]:
    xf, mean, rstd = _norm_stats(x, eps)
    y = (xf - mean) * (rstd * scale) + bias  # the order of nnx.LayerNorm's operations
    return y.astype(x.dtype), (x, mean, rstd, scale)


def _layer_norm_backward(eps: float, res: tuple, dy: Array) -> tuple[Array, Array, Array]:
    x, mean, rstd, scale = res
    xhat = (x.astype(mean.dtype) - mean) * rstd
    dy = dy.astype(mean.dtype)
    rows = tuple(range(x.ndim - 1))
    dscale, dbias = (dy * xhat).sum(rows), dy.sum(rows)
    g = dy * scale
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


def attention_weights(q: Array, k: Array, mask: Array | None = None) -> Array:
    """Softmax attention weights ``(b, h, n_q, n_k)`` from ``(b, h, n, d)`` queries and keys."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits, axis=-1)


class Attention(nnx.Module):
    """Multi-head attention through :func:`vit_flax.attention.attend` (flash-style backward pass).

    ``__call__(x, mask)`` takes ``x`` of shape ``(b, n, dim)`` (normalized by the caller: the block owns
    its norms) and an optional boolean ``mask`` broadcastable to ``(b, heads, n, n)``, True where a query
    may attend to a key. ``context=c`` makes it cross-attention: queries from ``x``, keys and values from
    ``c``, through the same ``to_qkv`` weights. ``return_attn=True`` also returns the attention weights
    (explicit softmax). ``qk_norm`` adds an RMSNorm over each head's queries and keys ("Scaling Vision
    Transformers to 22B Parameters").
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nnx.Linear(dim, inner * 3, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nnx.Linear(inner, dim, use_bias=out_bias, dtype=dtype, rngs=rngs) if project_out else None
        self.attn_drop = nnx.Dropout(dropout if attn_dropout is None else attn_dropout, rngs=rngs)
        self.out_drop = nnx.Dropout(dropout, rngs=rngs)
        self.q_norm = nnx.RMSNorm(dim_head, epsilon=eps, dtype=dtype, rngs=rngs) if qk_norm else None
        self.k_norm = nnx.RMSNorm(dim_head, epsilon=eps, dtype=dtype, rngs=rngs) if qk_norm else None

    def __call__(
        self, x: Array, mask: Array | None = None, *, context: Array | None = None, return_attn: bool = False
    ) -> Array | tuple[Array, Array]:
        b, n, _ = x.shape
        q, k, v = project_qkv(self.to_qkv, x, self.heads, context)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        attn = None
        if return_attn or not (self.attn_drop.deterministic or self.attn_drop.rate == 0.0):
            attn = attention_weights(q, k, mask)
            out = self.attn_drop(attn) @ v
        else:
            out = attend(q, k, v, mask)
        out = out.transpose(0, 2, 1, 3).reshape(b, n, -1)
        out = self.out_drop(self.to_out(out) if self.to_out is not None else out)
        return (out, attn) if return_attn else out


def project_qkv(to_qkv: nnx.Linear, x: Array, heads: int, context: Array | None = None) -> tuple[Array, Array, Array]:
    """Queries of ``x`` and keys and values of ``context`` (default: ``x``) through one fused ``to_qkv`` projection
    (its output features ordered q, k, v; each ``heads * d``), each ``(b, heads, tokens, d)``."""
    b, n, _ = x.shape
    if context is None:  # (b, n, 3 * h * d) to three (b, h, n, d), in one transpose
        q, k, v = to_qkv(x).reshape(b, n, 3, heads, -1).transpose(2, 0, 3, 1, 4)
        return q, k, v
    q, k, v = (_linear_part(to_qkv, t, i, 3) for i, t in enumerate((x, context, context)))
    q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(0, 2, 1, 3) for t in (q, k, v))
    return q, k, v


def _linear_part(linear: nnx.Linear, x: Array, part: int, parts: int) -> Array:
    """The ``part``-th of ``parts`` equal slices of ``linear(x)``'s features, computing only that slice."""
    kernel = jnp.split(linear.kernel[...], parts, axis=-1)[part]
    bias = None if linear.bias is None else jnp.split(linear.bias[...], parts)[part]
    dtype = linear.dtype or jnp.result_type(x, kernel)
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype), precision=linear.precision)
    return y if bias is None else y + bias.astype(dtype)


class FeedForward(nnx.Module):
    """The transformer MLP: Linear, activation (exact GELU by default), Dropout, Linear, Dropout."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        dropout: float = 0.0,
        *,
        act: str = "gelu",
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        check_choice(act, tuple(ACTIVATIONS), "act")
        self.act = act
        self.fc1 = nnx.Linear(dim, hidden_dim, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden_dim, dim, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.drop(self.fc2(self.drop(ACTIVATIONS[self.act](self.fc1(x)))))


class LayerScale(nnx.Module):
    """Per-channel scale of a residual branch, ``gamma`` starting at ``init_values`` (CaiT, Touvron et al., 2021)."""

    def __init__(self, dim: int, init_values: float = 1e-5, *, rngs: nnx.Rngs | None = None) -> None:
        self.init_values = init_values
        self.gamma = nnx.Param(jnp.full((dim,), init_values, jnp.float32))

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): ``gamma`` starts at ``init_values``."""
        return {"gamma": ("constant", self.init_values)}

    def __call__(self, x: Array) -> Array:
        return x * self.gamma[...].astype(x.dtype)


class DropPath(nnx.Module):
    """Stochastic depth ("Deep Networks with Stochastic Depth", Huang et al., 2016): in training, zero each
    sample's residual branch with probability ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``.

    Follows ``model.train()`` / ``model.eval()`` like ``nnx.Dropout`` and draws from the 'dropout' stream.
    """

    def __init__(self, drop_prob: float = 0.0, *, rngs: nnx.Rngs) -> None:
        self.drop_prob = float(drop_prob)
        self.deterministic = False
        self.rngs = rngs["dropout"].fork()

    def __call__(self, x: Array) -> Array:
        if self.drop_prob == 0.0 or self.deterministic:
            return x
        keep = 1.0 - self.drop_prob
        mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Block(nnx.Module):
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
        attn: nnx.Module | None = None,
        ff: nnx.Module | None = None,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        if ff is None and mlp_dim is None:
            raise ValueError("Block needs mlp_dim (the feed-forward width) unless a feed-forward module ff is given")
        self.post_norm = post_norm
        self.norm1 = make_norm(norm, dim, eps, rngs, dtype)
        self.attn = attn or Attention(
            dim, heads, dim_head, dropout, qkv_bias=qkv_bias, attn_dropout=attn_dropout, out_bias=out_bias,
            eps=eps, qk_norm=qk_norm, dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else None
        self.norm2 = make_norm(norm, dim, eps, rngs, dtype)
        self.ff = ff or FeedForward(dim, mlp_dim, dropout, act=act, dtype=dtype, rngs=rngs)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path, rngs=rngs)

    def __call__(
        self, x: Array, mask: Array | None = None, *, context: Array | None = None, return_attn: bool = False
    ) -> Array | tuple[Array, Any]:
        extra = {} if context is None else {"context": context}
        y = self.attn(self.norm1(x), mask, return_attn=return_attn, **extra)
        y, attn = y if return_attn else (y, None)
        x = x + self.drop_path(apply_scale(self.ls1, y))
        if self.post_norm:
            x = self.norm2(x)
            x = x + self.drop_path(apply_scale(self.ls2, self.ff(x)))
        else:
            x = x + self.drop_path(apply_scale(self.ls2, self.ff(self.norm2(x))))
        return (x, attn) if return_attn else x


def apply_scale(layer_scale: LayerScale | None, x: Array) -> Array:
    """``x`` scaled by ``layer_scale``, or as it is when there is none (a block without layer scale)."""
    return x if layer_scale is None else layer_scale(x)


def run_block(block: nnx.Module, x: Array, mask: Array | None, features: Features | None, label: str) -> Array:
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


class Transformer(nnx.Module):
    """A stack of blocks followed by a final norm (``final_norm=False``: none).

    ``block`` is the block class (:class:`Block` or a subclass with its constructor, e.g. ViViT's factorized
    block); ``drop_path`` is one rate for every block or one per block; other keyword arguments go to every
    block.
    ``__call__(x, mask, features=f, prefix="spatial/")`` records ``spatial/block00`` ... in ``f``.
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
        **block_options: Any,
    ) -> None:
        block = block or Block
        options = dict(eps=eps, norm=norm, dtype=dtype, rngs=rngs, **block_options)
        self.blocks = nnx.List(
            [
                block(dim, heads, dim_head, mlp_dim, dropout, drop_path=rate, **options)
                for rate in drop_path_rates(drop_path, depth)
            ]
        )
        self.norm = make_norm(norm, dim, eps, rngs, dtype) if final_norm else None

    def __call__(
        self, x: Array, mask: Array | None = None, *, features: Features | None = None, prefix: str = ""
    ) -> Array:
        for i, block in enumerate(self.blocks):
            x = run_block(block, x, mask, features, block_label(i, prefix))
        return x if self.norm is None else self.norm(x)


class PatchEmbed(nnx.Module):
    """Cut ``(b, *spatial, c)`` into non-overlapping patches of any number of axes and embed them.

    Each patch is flattened as ``(*patch, c)``, normalized, projected to ``dim`` and normalized again
    (``norms=False``: only projected, as the original ViT). Returns the tokens ``(b, n, dim)`` and the patch grid.
    """

    def __init__(
        self,
        patch_size: tuple[int, ...],
        channels: int,
        dim: int,
        *,
        eps: float = 1e-5,
        norms: bool = True,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.patch_size = tuple(patch_size)
        patch_dim = channels * math.prod(self.patch_size)
        self.pre_norm = layer_norm(patch_dim, eps, rngs, dtype) if norms else None
        self.proj = nnx.Linear(patch_dim, dim, dtype=dtype, rngs=rngs)
        self.post_norm = layer_norm(dim, eps, rngs, dtype) if norms else None

    def __call__(self, x: Array) -> tuple[Array, tuple[int, ...]]:
        return self.embed(patchify(x, self.patch_size)), grid_of(x.shape[1:-1], self.patch_size)

    def embed(self, patches: Array) -> Array:
        """Embed patches already cut by :func:`patchify`: ``(..., prod(patch) * c)`` to ``(..., dim)``."""
        if self.pre_norm is None:
            return self.proj(patches)
        return self.post_norm(self.proj(self.pre_norm(patches)))


def grid_of(spatial: tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s // p for s, p in zip(spatial, patch_size))


def patchify(x: Array, patch_size: tuple[int, ...]) -> Array:
    """``(b, *spatial, c)`` to ``(b, n_patches, prod(patch) * c)``, patches in row-major grid order."""
    b, *spatial, c = x.shape
    n = len(patch_size)
    split = [b]
    for s, p in zip(spatial, patch_size):
        split += [s // p, p]
    order = [0, *range(1, 1 + 2 * n, 2), *range(2, 2 + 2 * n, 2), 1 + 2 * n]
    return x.reshape(*split, c).transpose(order).reshape(b, -1, c * math.prod(patch_size))


def crop_grid(pos: Array, full_grid: tuple[int, ...], grid: tuple[int, ...]) -> Array:
    """Positional embeddings ``(1, prod(full_grid), d)`` cut to the top-left ``grid`` of the same layout."""
    if tuple(grid) == tuple(full_grid):
        return pos
    pos = pos.reshape(1, *full_grid, -1)[(slice(None), *(slice(0, g) for g in grid))]
    return pos.reshape(1, math.prod(grid), -1)


def sincos_posemb(grid: tuple[int, ...], dim: int, temperature: float = 10000.0) -> Array:
    """Fixed sin-cos embedding ``(prod(grid), dim)`` for an n-D grid (shared numpy table)."""
    return jnp.asarray(sincos_table(tuple(grid), dim, temperature))


def default_rngs(rngs: nnx.Rngs | None) -> nnx.Rngs:
    """The given ``rngs``, or ``nnx.Rngs(0)`` so that torch-style constructors run unchanged."""
    return nnx.Rngs(0) if rngs is None else rngs


def with_features(logits: Array, features: Features | None) -> Array | tuple[Array, dict[str, Any]]:
    """What a model returns: its logits, or ``(logits, features)`` when features were asked for."""
    return logits if features is None else (logits, features.result())


class Head(nnx.Module):
    """A classifier that normalizes what it reads: LayerNorm (``norm``), then Linear (``fc``)."""

    def __init__(self, dim: int, num_classes: int, *, dtype: jnp.dtype | None, rngs: nnx.Rngs) -> None:
        self.norm = layer_norm(dim, 1e-5, rngs, dtype)
        self.fc = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.fc(self.norm(x))


class UserModule:
    """Stands for a module argument that is no registry model (a user's ``transformer=``) in the recorded
    ``config``: nnx keeps no module in a static attribute, and no checkpoint can rebuild one (saving raises naming
    the argument, as torch's does)."""

    def __init__(self, module: nnx.Module) -> None:
        self.type = f"{type(module).__module__}.{type(module).__qualname__}"

    def __repr__(self) -> str:
        return f"<{self.type} module>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserModule) and other.type == self.type

    def __hash__(self) -> int:
        return hash(self.type)


class RecordsUserModules:
    """Mixin of a model that takes a module argument (a user's ``transformer=``): its recorded ``config`` holds a
    :class:`UserModule` stand-in for a module that is no registry model."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "config":
            value = {k: UserModule(v) if isinstance(v, nnx.Module) else v for k, v in value.items()}
        super().__setattr__(name, value)
