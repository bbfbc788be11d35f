"""ATS-ViT: "ATS: Adaptive Token Sampling For Efficient Vision Transformers" (Fayyaz et al., 2021).

Mirrors ``vit_torch.ats_vit``: a ViT whose layers keep fewer and fewer patch tokens. A layer that reads more tokens
than its budget ``k`` scores them by the class token's attention weighted by the norms of the values (summed over
heads, normalized to a distribution), draws ``k`` tokens from that distribution (Gumbel-max on the logarithm of
the scores, ``k`` independent draws) and keeps each drawn token once: an image keeps between one and ``k`` tokens,
in their original order, and the rest of the ``k`` places is padding under a mask that the later attention layers
read. The widths are static (``k + 1`` tokens with the class token), so a compiled model is traced once per input
shape, whatever the draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import (
    Attention,
    Block,
    PatchEmbed,
    apply_scale,
    attention_weights,
    crop_grid,
    default_rngs,
    make_norm,
    with_features,
)
from vit_parity.core.config import records_config
from vit_parity.core.facts import ats_vit as facts
from vit_parity.core.features import Features, block_label
from vit_parity.core.validate import check_input, image_geometry

__all__ = ["ViT"]

Array = jax.Array
IMAGE_AXES = ("height", "width")
MASKED = -float(jnp.finfo(jnp.float32).max) / 2  # the pseudo-logit of a padding token: never drawn


def significance(attn: Attention, x: Array, mask: Array | None = None) -> Array:
    """The pseudo-logits ``(b, n - 1)`` of the patch tokens of ``x`` ``(b, n, dim)`` (class token first, already
    normalized), as ``attn`` would attend over them: ``log(s / (sum(s) + eps) + eps)`` with ``s`` the class token's
    attention to each patch token times the norm of its value, summed over the heads. ``mask`` (``(b, 1, 1, n)``,
    True where a key is a real token) keeps padding out. Computed in float32 and without gradient: it only chooses
    which tokens stay."""
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    kernel = jax.lax.stop_gradient(attn.to_qkv.kernel[...]).astype(jnp.float32)
    wq, wk, wv = jnp.split(kernel, 3, axis=-1)
    q, k, v = x[:, :1] @ wq, x @ wk, x @ wv
    if attn.to_qkv.bias is not None:
        bq, bk, bv = jnp.split(jax.lax.stop_gradient(attn.to_qkv.bias[...]).astype(jnp.float32), 3)
        q, k, v = q + bq, k + bk, v + bv
    b = x.shape[0]
    q, k, v = (t.reshape(b, t.shape[1], attn.heads, -1).transpose(0, 2, 1, 3) for t in (q, k, v))  # (b, h, n, d)
    cls_attn = attention_weights(q, k, mask)[:, :, 0, 1:]
    scores = (cls_attn * jnp.linalg.norm(v[:, :, 1:], axis=-1)).sum(axis=1)
    normed = scores / (scores.sum(axis=-1, keepdims=True) + facts.EPS)
    return jnp.log(normed + facts.EPS)


def gumbel(u: Array) -> Array:
    """Gumbel noise from uniform draws ``u`` in [0, 1): ``-log(-log(u + eps) + eps)`` (the reference's transform)."""
    return -jnp.log(-jnp.log(u + facts.EPS) + facts.EPS)


class AdaptiveTokenSampling(nnx.Module):
    """Which of ``n`` patch tokens a layer keeps, at most ``max_tokens`` of them (ATS, Fayyaz et al., 2021).

    ``__call__(logits, valid, noise)`` takes the tokens' pseudo-logits ``(b, n)`` (:func:`significance`), which of
    them are real (``(b, n)`` bool, None: all) and an optional draw ``noise`` of uniform numbers ``(b, k, n)``, and
    returns the positions of the kept tokens ``(b, k)`` (ascending, padding last) and whether each place holds a
    kept token ``(b, k)``. In training, or with an explicit draw in either mode, each of the ``k`` rows of the draw
    picks one token by Gumbel-max (a draw from the normalized scores), and every token picked at least once is
    kept; without a draw, training draws from the 'dropout' stream. Eval mode draws nothing: the ``k`` tokens with
    the largest pseudo-logits are kept (the ranking that Gumbel-max follows without noise). An image with at most
    ``k`` real tokens keeps them all. Follows ``model.train()`` / ``model.eval()``.
    """

    def __init__(self, max_tokens: int, *, rngs: nnx.Rngs) -> None:
        self.max_tokens = max_tokens
        self.deterministic = False
        self.rngs = rngs["dropout"].fork()

    def __call__(self, logits: Array, valid: Array | None = None, noise: Array | None = None) -> tuple[Array, Array]:
        b, n = logits.shape
        k = self.max_tokens
        positions = jnp.arange(n)
        if valid is not None:
            logits = jnp.where(valid, logits, MASKED)
        if noise is None and self.deterministic:
            rank = jnp.argsort(jnp.argsort(logits, axis=-1, descending=True, stable=True), axis=-1)
            chosen = rank < k
        else:
            u = jax.random.uniform(self.rngs(), (b, k, n)) if noise is None else jnp.asarray(noise, jnp.float32)
            drawn = jnp.argmax(logits[:, None, :] + gumbel(u), axis=-1)  # (b, k)
            chosen = (drawn[..., None] == positions).any(axis=1)
        if valid is not None:
            fits = valid.sum(axis=-1, keepdims=True) <= k
            chosen = jnp.where(fits, valid, chosen & valid)
        order = jnp.argsort(jnp.where(chosen, positions, positions + n), axis=-1)[:, :k]
        return order, jnp.take_along_axis(chosen, order, axis=1)


class ATSBlock(Block):
    """A pre-norm :class:`~vit_flax.layers.Block` that samples its tokens between attention and feed-forward (ATS,
    Fayyaz et al., 2021).

    ``__call__(x, valid, noise=...)`` takes tokens ``(b, 1 + n, dim)`` (class token first) and which are real
    (``(b, 1 + n)`` bool, None: all). When ``n`` exceeds ``max_tokens``, the attention output (and the residual) of
    the kept tokens only (:class:`AdaptiveTokenSampling`, ``ats``) go on to the feed-forward: ``1 + max_tokens``
    tokens leave the block. The attention reads the real tokens only (its key mask). Returns the tokens (padding
    set to zero), their mask (None while there is no padding), the positions of the kept patch tokens among the
    ``n`` (``(b, max_tokens)``, None when the block keeps all) and the attention weights (with ``return_attn``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        max_tokens: int,
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, rngs=rngs, **options)
        self.ats = AdaptiveTokenSampling(max_tokens, rngs=rngs)

    def __call__(  # type: ignore[override]
        self, x: Array, valid: Array | None = None, *, noise: Array | None = None, return_attn: bool = False
    ) -> tuple[Array, Array | None, Array | None, Array | None]:
        h = self.norm1(x)
        mask = None if valid is None else valid[:, None, None, :]
        kept = None
        if x.shape[1] - 1 > self.ats.max_tokens:
            patches = None if valid is None else valid[:, 1:]
            kept, kept_valid = self.ats(significance(self.attn, h, mask), patches, noise)
        y = self.attn(h, mask, return_attn=return_attn)
        y, attn = y if return_attn else (y, None)
        x = x + self.drop_path(apply_scale(self.ls1, y))
        if kept is not None:
            x = jnp.concatenate((x[:, :1], jnp.take_along_axis(x[:, 1:], kept[..., None], axis=1)), axis=1)
            valid = jnp.pad(kept_valid, ((0, 0), (1, 0)), constant_values=True)
        x = x + self.drop_path(apply_scale(self.ls2, self.ff(self.norm2(x))))
        if valid is not None:
            x = jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))
        return x, valid, kept, attn


class ATSTransformer(nnx.Module):
    """A stack of :class:`ATSBlock` s, one per token budget, and a final norm (ATS-ViT, Fayyaz et al., 2021).

    ``__call__(x, noise=..., features=f)`` returns the normalized tokens and the ids of the patch tokens that are
    left ``(b, m)`` (their index in the image's patch grid, row-major; -1 for padding), and records ``block00`` ...
    (each block's tokens, padding included and zero) in ``f``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        max_tokens_per_depth: Sequence[int],
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        budgets = facts.check_max_tokens(max_tokens_per_depth, depth)
        self.blocks = nnx.List(
            [ATSBlock(dim, heads, dim_head, mlp_dim, dropout, max_tokens=k, dtype=dtype, rngs=rngs) for k in budgets]
        )
        self.norm = make_norm("layernorm", dim, 1e-5, rngs, dtype)

    def __call__(
        self, x: Array, *, noise: Sequence[Array | None] | None = None, features: Features | None = None
    ) -> tuple[Array, Array]:
        b, width = x.shape[:2]
        ids = jnp.broadcast_to(jnp.arange(width - 1), (b, width - 1))
        valid = None
        record_attn = features is not None and features.attn
        for i, block in enumerate(self.blocks):
            draw = None if noise is None else noise[i]
            x, valid, kept, attn = block(x, valid, noise=draw, return_attn=record_attn)
            if kept is not None:
                ids = jnp.where(valid[:, 1:], jnp.take_along_axis(ids, kept, axis=1), -1)
            if features is not None:
                if record_attn:
                    features.add_attn(block_label(i), attn)
                features.add(block_label(i), x)
        return self.norm(x), ids


@records_config
class ViT(nnx.Module):
    """ATS-ViT (Fayyaz et al., 2021): a ViT whose layer ``i`` keeps at most ``max_tokens_per_depth[i]`` patch tokens,
    sampled from the class token's value-weighted attention (see :class:`AdaptiveTokenSampling`).

    Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` and divisible by
    ``patch_size``; smaller images use the top-left part of the position grid. ``model(img,
    return_sampled_token_ids=True)`` returns ``(logits, token_ids)``: the patch ids the last layer kept, ``(b, m)``
    with ``m`` the smallest of the budgets and the patch count, -1 for padding. ``noise=`` gives the sampling draw
    explicitly: one entry per layer, uniform numbers in [0, 1) of the shape :meth:`noise_shapes` gives, or None
    (the mode decides: training draws from the 'dropout' stream, eval keeps the highest-scoring tokens).
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        max_tokens_per_depth: Sequence[int],
        heads: int,
        mlp_dim: int,
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        self.max_tokens = facts.check_max_tokens(max_tokens_per_depth, depth)
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = ATSTransformer(
            dim, depth, self.max_tokens, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs
        )
        self.mlp_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def _num_patches(self, shape: Sequence[int]) -> int:
        spatial = check_input(
            shape, name="img", channels_last=True, channels=self.channels, max_size=self.size,
            patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        (h, w), (ph, pw) = spatial, self.patch_size
        return (h // ph) * (w // pw)

    def noise_shapes(self, img_shape: Sequence[int]) -> tuple[tuple[int, int, int] | None, ...]:
        """The shape of each layer's explicit draw for images of ``img_shape`` ``(b, h, w, c)``: ``(b, k, n)`` for
        a layer that samples (it reads ``n`` patch tokens, more than its budget ``k``), None for one that does not."""
        return facts.noise_shapes(img_shape[0], self._num_patches(img_shape), self.max_tokens)

    def __call__(
        self,
        img: Array,
        return_sampled_token_ids: bool = False,
        *,
        noise: Sequence[Array | None] | None = None,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Any:
        features = Features.request(return_features, return_attn)
        num_patches = self._num_patches(img.shape)
        if noise is not None:
            if isinstance(noise, (list, tuple)):
                noise = [None if u is None else jnp.asarray(u) for u in noise]
            facts.check_noise(noise, img.shape[0], num_patches, self.max_tokens)
        x, grid = self.to_patch_embedding(img)
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid).astype(x.dtype)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        x = self.dropout(jnp.concatenate((cls.astype(x.dtype), x), axis=1))
        x, token_ids = self.transformer(x, noise=noise, features=features)
        x = x[:, 0]
        if features is not None:
            features.add("pre_logits", x)
        logits = self.mlp_head(x)
        return with_features((logits, token_ids) if return_sampled_token_ids else logits, features)
