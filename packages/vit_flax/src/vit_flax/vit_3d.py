"""3D ViT: the ViT of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020) on tubelets of videos or volumes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Intermediates, PatchEmbed, Transformer, crop_grid, default_rngs
from vit_parity.config import records_config
from vit_parity.validate import check_choice, check_input, video_geometry

__all__ = ["ViT"]

VIDEO_AXES = ("frames", "height", "width")


@records_config
class ViT(nnx.Module):
    """ViT (Dosovitskiy et al., 2020) on videos: tubelets of ``frame_patch_size x image_patch_size``,
    a class token and learned positions over the ``(t, h, w)`` tubelet grid.

    Takes ``video`` of shape ``(b, t, h, w, channels)`` with ``t <= frames``, ``h, w <= image_size`` and
    every side divisible by its patch size; shorter or smaller clips use the matching part of the grid.
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
        depth: int,
        heads: int,
        mlp_dim: int,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.size, self.patch_size = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        check_choice(pool, ("cls", "mean"), "pool")
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs)
        self.mlp_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, video: jax.Array, intermediates: Intermediates | None = None) -> jax.Array:
        check_input(
            video.shape, name="video", channels_last=True, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=VIDEO_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(video)
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        x = self.dropout(jnp.concatenate((cls.astype(x.dtype), x), axis=1))
        x = self.transformer(x, intermediates=intermediates)
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return self.mlp_head(x)
