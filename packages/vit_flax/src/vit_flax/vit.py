"""ViT: "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Intermediates, PatchEmbed, Transformer, crop_grid, default_rngs
from vit_parity.config import records_config
from vit_parity.validate import as_tuple, check_choice, check_divisible, check_input

__all__ = ["ViT"]


@records_config
class ViT(nnx.Module):
    """Vision Transformer (Dosovitskiy et al., 2020) with a class token and learned positions.

    Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` and
    divisible by ``patch_size``; smaller images use the top-left part of the position grid.
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
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.image_size = as_tuple(image_size, 2, "image_size")
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        check_divisible(self.image_size, self.patch_size, "image_size", "patch_size")
        check_choice(pool, ("cls", "mean"), "pool")
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.image_size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs)
        self.mlp_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, img: jax.Array, intermediates: Intermediates | None = None) -> jax.Array:
        check_input(
            img.shape, name="img", channels_last=True, channels=self.channels,
            max_size=self.image_size, patch=self.patch_size, axis_names=("height", "width"),
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        x = self.dropout(jnp.concatenate((cls.astype(x.dtype), x), axis=1))
        x = self.transformer(x, intermediates=intermediates)
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return self.mlp_head(x)
