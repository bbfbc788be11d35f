"""3D SimpleViT: "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022) on tubelets of videos or volumes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Intermediates, PatchEmbed, Transformer, default_rngs, sincos_posemb
from vit_flax.vit_3d import VIDEO_AXES
from vit_parity.config import records_config
from vit_parity.validate import check_input, video_geometry

__all__ = ["SimpleViT"]


@records_config
class SimpleViT(nnx.Module):
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
        rngs = default_rngs(rngs)
        self.size, self.patch_size = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        self.channels = channels
        self.dim = dim
        sincos_posemb((1, 1, 1), dim)  # fails early on a dim too small for the table

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, out_bias=False, dtype=dtype, rngs=rngs)
        self.linear_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, video: jax.Array, intermediates: Intermediates | None = None) -> jax.Array:
        check_input(
            video.shape, name="video", channels_last=True, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=VIDEO_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(video)
        # a table's entry depends only on its position, so the table of the clip's grid is the matching part
        x = x + sincos_posemb(grid, self.dim).astype(x.dtype)
        x = self.transformer(x, intermediates=intermediates)
        return self.linear_head(x.mean(axis=1))
