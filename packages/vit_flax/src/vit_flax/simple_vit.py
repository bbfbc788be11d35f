"""SimpleViT: "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Intermediates, PatchEmbed, Transformer, default_rngs, sincos_posemb
from vit_parity.config import records_config
from vit_parity.validate import as_tuple, check_divisible, check_input

__all__ = ["SimpleViT"]


@records_config
class SimpleViT(nnx.Module):
    """Simple ViT (Beyer et al., 2022): 2-D sin-cos positions, no class token, mean pooling, no dropout.

    Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` and
    divisible by ``patch_size``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
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
        self.image_size = as_tuple(image_size, 2, "image_size")
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        check_divisible(self.image_size, self.patch_size, "image_size", "patch_size")
        self.channels = channels
        self.dim = dim
        sincos_posemb((1, 1), dim)  # fails early on a dim too small for the table

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, out_bias=False, dtype=dtype, rngs=rngs)
        self.linear_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, img: jax.Array, intermediates: Intermediates | None = None) -> jax.Array:
        check_input(
            img.shape, name="img", channels_last=True, channels=self.channels,
            max_size=self.image_size, patch=self.patch_size, axis_names=("height", "width"),
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        x = x + sincos_posemb(grid, self.dim).astype(x.dtype)
        x = self.transformer(x, intermediates=intermediates)
        return self.linear_head(x.mean(axis=1))
