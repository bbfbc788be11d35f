"""CrossViT: "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification" (Chen et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.cross_attention import CrossAttention
from vit_flax.layers import Head, PatchEmbed, Transformer, crop_grid, default_rngs, with_features
from vit_parity.core.config import records_config
from vit_parity.core.facts import cross_vit as facts
from vit_parity.core.features import Features, block_label

__all__ = ["CrossViT"]

Array = jax.Array


class ImageEmbedder(nnx.Module):
    """One branch's tokens ``(b, 1 + n, dim)``: a class token, then the embedded patches, with learned positions
    over the patch grid (smaller images use its top-left part), then dropout."""

    def __init__(
        self,
        *,
        dim: int,
        size: tuple[int, ...],
        patch_size: tuple[int, ...],
        channels: int,
        dropout: float,
        dtype: jnp.dtype | None,
        rngs: nnx.Rngs,
    ) -> None:
        self.grid = tuple(s // p for s, p in zip(size, patch_size))
        self.to_patch_embedding = PatchEmbed(patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, img: Array) -> Array:
        x, grid = self.to_patch_embedding(img)
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid).astype(x.dtype)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        return self.dropout(jnp.concatenate((cls.astype(x.dtype), x), axis=1))


class MultiScaleBlock(nnx.Module):
    """Both branches' transformers, then ``cross_attn_depth`` rounds in which each branch's class token attends
    to the other branch's patch tokens and to itself (:class:`~vit_flax.cross_attention.CrossAttention`,
    projected to the other branch's width and back)."""

    def __init__(
        self,
        *,
        sm_dim: int,
        lg_dim: int,
        sm_enc: dict[str, int],
        lg_enc: dict[str, int],
        cross_attn_depth: int,
        cross_attn_heads: int,
        cross_attn_dim_head: int,
        dropout: float,
        dtype: jnp.dtype | None,
        rngs: nnx.Rngs,
    ) -> None:
        self.sm_transformer = Transformer(sm_dim, dropout=dropout, dtype=dtype, rngs=rngs, **sm_enc)
        self.lg_transformer = Transformer(lg_dim, dropout=dropout, dtype=dtype, rngs=rngs, **lg_enc)
        cross = dict(heads=cross_attn_heads, dim_head=cross_attn_dim_head, dropout=dropout, dtype=dtype, rngs=rngs)
        self.sm_attend_lg = nnx.List([CrossAttention(sm_dim, lg_dim, **cross) for _ in range(cross_attn_depth)])
        self.lg_attend_sm = nnx.List([CrossAttention(lg_dim, sm_dim, **cross) for _ in range(cross_attn_depth)])

    def __call__(
        self, sm: Array, lg: Array, *, features: Features | None = None, prefix: str = ""
    ) -> tuple[Array, Array]:
        sm = self.sm_transformer(sm, features=features, prefix=f"{prefix}sm/")
        lg = self.lg_transformer(lg, features=features, prefix=f"{prefix}lg/")
        (sm_cls, sm_patches), (lg_cls, lg_patches) = (sm[:, :1], sm[:, 1:]), (lg[:, :1], lg[:, 1:])
        for i, (sm_attend_lg, lg_attend_sm) in enumerate(zip(self.sm_attend_lg, self.lg_attend_sm)):
            sm_label, lg_label = block_label(i, f"{prefix}cross/sm/"), block_label(i, f"{prefix}cross/lg/")
            sm_cls = _cross(sm_attend_lg, sm_cls, lg_patches, sm_patches, features, sm_label)
            lg_cls = _cross(lg_attend_sm, lg_cls, sm_patches, lg_patches, features, lg_label)
        return jnp.concatenate((sm_cls, sm_patches), axis=1), jnp.concatenate((lg_cls, lg_patches), axis=1)


def _cross(
    block: CrossAttention, cls: Array, context: Array, patches: Array, features: Features | None, label: str
) -> Array:
    """``block(cls, context)``; records the branch's tokens ``[cls; patches]`` (and the attention weights when
    asked) under ``label``."""
    if features is None:
        return block(cls, context)
    if features.attn:
        cls, attn = block(cls, context, return_attn=True)
        features.add_attn(label, attn)
    else:
        cls = block(cls, context)
    features.add(label, jnp.concatenate((cls, patches), axis=1))
    return cls


class MultiScaleEncoder(nnx.Module):
    """A stack of :class:`MultiScaleBlock` s (``layers``); returns both branches' tokens."""

    def __init__(self, layers: Sequence[MultiScaleBlock]) -> None:
        self.layers = nnx.List(list(layers))

    def __call__(self, sm: Array, lg: Array, *, features: Features | None = None) -> tuple[Array, Array]:
        for i, layer in enumerate(self.layers):
            sm, lg = layer(sm, lg, features=features, prefix=f"enc{i}/")
        return sm, lg


@records_config
class CrossViT(nnx.Module):
    """CrossViT (Chen et al., 2021): two vision transformers on the same image, one on small patches (``sm_``) and
    one on large patches (``lg_``), that exchange information through their class tokens.

    Each branch embeds the image into its own patches with its own class token and positions. ``depth``
    multi-scale blocks each run both branches' transformers, then ``cross_attn_depth`` rounds of cross-attention
    in which each class token attends to the other branch's patch tokens and to itself. Each class token goes
    through its branch's head (LayerNorm, Linear) and the two logits are summed.

    Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` and divisible by both patch
    sizes; smaller images use the top-left part of each branch's position grid.
    Features: ``enc0/sm/block00`` ... and ``enc0/lg/block00`` ... (each branch's transformer blocks),
    ``enc0/cross/sm/block00``, ``enc0/cross/lg/block00`` ... (the branch's tokens after each cross-attention
    round, in which only its class token changed) and ``pre_logits``, the two class tokens concatenated
    ``(b, sm_dim + lg_dim)``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        num_classes: int,
        sm_dim: int,
        lg_dim: int,
        sm_patch_size: int | tuple[int, int] = 12,
        sm_enc_depth: int = 1,
        sm_enc_heads: int = 8,
        sm_enc_mlp_dim: int = 2048,
        sm_enc_dim_head: int = 64,
        lg_patch_size: int | tuple[int, int] = 16,
        lg_enc_depth: int = 4,
        lg_enc_heads: int = 8,
        lg_enc_mlp_dim: int = 2048,
        lg_enc_dim_head: int = 64,
        cross_attn_depth: int = 2,
        cross_attn_heads: int = 8,
        cross_attn_dim_head: int = 64,
        depth: int = 3,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        channels: int = 3,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.geometry = g = facts.geometry(image_size, sm_patch_size, lg_patch_size)
        self.channels = channels
        embed = dict(size=g.size, channels=channels, dropout=emb_dropout, dtype=dtype, rngs=rngs)
        self.sm_image_embedder = ImageEmbedder(dim=sm_dim, patch_size=g.sm_patch, **embed)
        self.lg_image_embedder = ImageEmbedder(dim=lg_dim, patch_size=g.lg_patch, **embed)
        sm_enc = dict(depth=sm_enc_depth, heads=sm_enc_heads, dim_head=sm_enc_dim_head, mlp_dim=sm_enc_mlp_dim)
        lg_enc = dict(depth=lg_enc_depth, heads=lg_enc_heads, dim_head=lg_enc_dim_head, mlp_dim=lg_enc_mlp_dim)
        block = dict(
            sm_dim=sm_dim, lg_dim=lg_dim, sm_enc=sm_enc, lg_enc=lg_enc, cross_attn_depth=cross_attn_depth,
            cross_attn_heads=cross_attn_heads, cross_attn_dim_head=cross_attn_dim_head, dropout=dropout,
        )  # fmt: skip
        self.multi_scale_encoder = MultiScaleEncoder(
            [MultiScaleBlock(**block, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.sm_mlp_head = Head(sm_dim, num_classes, dtype=dtype, rngs=rngs)
        self.lg_mlp_head = Head(lg_dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, img: Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        features = Features.request(return_features, return_attn)
        facts.check_image(img.shape, self.geometry, channels=self.channels, channels_last=True)
        sm, lg = self.multi_scale_encoder(self.sm_image_embedder(img), self.lg_image_embedder(img), features=features)
        sm_cls, lg_cls = sm[:, 0], lg[:, 0]
        if features is not None:
            features.add("pre_logits", jnp.concatenate((sm_cls, lg_cls), axis=-1))
        return with_features(self.sm_mlp_head(sm_cls) + self.lg_mlp_head(lg_cls), features)
