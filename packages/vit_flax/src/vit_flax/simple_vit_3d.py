"""3D SimpleViT: "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022) on tubelets of videos or volumes."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vit_flax.simple_vit import SinCosViT
from vit_flax.vit_3d import VIDEO_AXES
from vit_parity.core.config import records_config
from vit_parity.core.validate import video_geometry

__all__ = ["SimpleViT"]


@records_config
class SimpleViT(SinCosViT):
    """Simple ViT (Beyer et al., 2022) on videos: 3-D sin-cos positions over the ``(t, h, w)`` tubelet grid,
    no class token, mean pooling, no dropout.

    Takes ``video`` of shape ``(b, t, h, w, channels)`` with ``t <= frames``, ``h, w <= image_size`` and
    every side divisible by its patch size.
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
        channels: int = 3,
        dim_head: int = 64,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        size, patch = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        super().__init__(
            size=size, patch_size=patch, axis_names=VIDEO_AXES, input_name="video", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, channels=channels, dim_head=dim_head,
            dtype=dtype, rngs=rngs,
        )  # fmt: skip
