"""ViViT: "ViViT: A Video Vision Transformer" (Arnab et al., 2021), factorized encoder and factorized self-attention."""

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
    Transformer,
    crop_grid,
    default_rngs,
    layer_norm,
    with_features,
)
from vit_flax.vit_3d import VIDEO_AXES
from vit_parity.core.config import records_config
from vit_parity.core.facts import vivit
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, video_geometry

__all__ = ["ViT"]

Array = jax.Array


class FactorizedBlock(Block):
    """A :class:`~vit_flax.layers.Block` whose attention is factorized, on ``(b, f, n, d)`` tokens: over the
    ``n`` tokens of each frame group (``norm1``, ``attn``), then over the ``f`` frame groups at each spatial
    position (``temporal_norm``, ``temporal_attn``), then the MLP (``norm2``, ``ff``)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs, **options)
        self.temporal_norm = layer_norm(dim, 1e-5, rngs, dtype)
        self.temporal_attn = Attention(dim, heads, dim_head, dropout, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, mask: Array | None = None, *, return_attn: bool = False) -> Any:
        b, f, n, d = x.shape
        x = x.reshape(b * f, n, d)
        spatial = self.attn(self.norm1(x), return_attn=return_attn)
        x = x + (spatial[0] if return_attn else spatial)
        x = x.reshape(b, f, n, d).swapaxes(1, 2).reshape(b * n, f, d)
        temporal = self.temporal_attn(self.temporal_norm(x), return_attn=return_attn)
        x = x + (temporal[0] if return_attn else temporal)
        x = x + self.ff(self.norm2(x))
        x = x.reshape(b, n, f, d).swapaxes(1, 2)
        return (x, {"spatial": spatial[1], "temporal": temporal[1]}) if return_attn else x


@records_config
class ViT(nnx.Module):
    """ViViT (Arnab et al., 2021) on tubelets of ``frame_patch_size x image_patch_size``.

    ``variant='factorized_encoder'``: a spatial transformer over the tokens of each frame group (with its
    own class token), then a temporal transformer over the frame groups' summaries (with another class
    token). ``variant='factorized_self_attention'``: every block attends over space, then over time
    (``spatial_depth`` blocks; ``temporal_depth`` must be equal). ``pool='mean'`` averages instead of
    using class tokens. Takes ``video`` of shape ``(b, t, h, w, channels)`` with ``t <= frames`` and
    ``h, w <= image_size``; shorter or smaller clips use the matching part of the position grid.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        image_patch_size: int | tuple[int, int],
        frames: int,
        frame_patch_size: int,
        num_classes: int,
        dim: int,
        spatial_depth: int,
        temporal_depth: int,
        heads: int,
        mlp_dim: int,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        variant: str = "factorized_encoder",
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.size, self.patch_size = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        vivit.check_arguments(pool=pool, variant=variant, spatial_depth=spatial_depth, temporal_depth=temporal_depth)
        self.pool = pool
        self.variant = variant
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        def token() -> nnx.Param:
            return nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid), dim)))
        self.spatial_cls_token = token() if pool == "cls" else None
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        if variant == "factorized_encoder":
            self.temporal_cls_token = token() if pool == "cls" else None
            self.spatial_transformer = Transformer(
                dim, spatial_depth, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs
            )
            self.temporal_transformer = Transformer(
                dim, temporal_depth, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs
            )
        else:
            self.factorized_transformer = Transformer(
                dim, spatial_depth, heads, dim_head, mlp_dim, dropout, block=FactorizedBlock, dtype=dtype, rngs=rngs
            )
        self.mlp_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, video: Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        features = Features.request(return_features, return_attn)
        check_input(
            video.shape, name="video", channels_last=True, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=VIDEO_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(video)
        x = x + crop_grid(self.pos_embedding[...], self.grid, grid).astype(x.dtype)
        b, _, d = x.shape
        f = grid[0]
        x = x.reshape(b, f, -1, d)
        if self.spatial_cls_token is not None:
            cls_tokens = jnp.broadcast_to(self.spatial_cls_token[...], (b, f, 1, d)).astype(x.dtype)
            x = jnp.concatenate((cls_tokens, x), axis=2)
        x = self.dropout(x)
        cls = self.pool == "cls"

        if self.variant == "factorized_encoder":
            x = self.spatial_transformer(x.reshape(b * f, -1, d), features=features, prefix="spatial/")
            x = x.reshape(b, f, -1, d)
            x = x[:, :, 0] if cls else x.mean(axis=2)
            if self.temporal_cls_token is not None:
                cls_token = jnp.broadcast_to(self.temporal_cls_token[...], (b, 1, d)).astype(x.dtype)
                x = jnp.concatenate((cls_token, x), axis=1)
            x = self.temporal_transformer(x, features=features, prefix="temporal/")
            x = x[:, 0] if cls else x.mean(axis=1)
        else:
            x = self.factorized_transformer(x, features=features)
            x = x[:, 0, 0] if cls else x.mean(axis=(1, 2))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
