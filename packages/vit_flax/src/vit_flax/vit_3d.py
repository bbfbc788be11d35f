"""3D ViT: the ViT of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020) on tubelets of videos or volumes."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vit_flax.vit import ClassTokenViT
from vit_parity.core.config import records_config
from vit_parity.core.validate import video_geometry

__all__ = ["ViT"]

VIDEO_AXES = ("frames", "height", "width")


@records_config
class ViT(ClassTokenViT):
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
        size, patch = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        super().__init__(
            size=size, patch_size=patch, axis_names=VIDEO_AXES, input_name="video", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, pool=pool, channels=channels,
            dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout, dtype=dtype, rngs=rngs,
        )  # fmt: skip
