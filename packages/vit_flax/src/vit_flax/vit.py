"""ViT: "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import PatchEmbed, Transformer, crop_grid, default_rngs, layer_norm, with_features
from vit_parity.core.config import records_config
from vit_parity.core.features import Features
from vit_parity.core.validate import check_choice, check_input, image_geometry

__all__ = ["ViT"]

IMAGE_AXES = ("height", "width")


class ClassTokenViT(nnx.Module):
    """The ViT body on patches of any number of axes: a class token, learned positions over the patch
    grid, a pre-norm transformer and a linear head. ``vit.ViT`` (images) and ``vit_3d.ViT`` (videos,
    volumes) differ only in how they read their geometry. DeepViT, Parallel ViT and ViT for small datasets
    differ in their blocks (``transformer_options`` go to :class:`~vit_flax.layers.Transformer`), their patch
    embedding (``patch_embedding(patch_size, channels, dim, dtype=, rngs=)`` builds it, :meth:`embed_patches` runs it)
    and where the last norm sits (``norm_pooled``: the pooled token is normalized, by ``norm``, before the head).

    The forward pass is built from :meth:`tokens`, :meth:`encode` and :meth:`pool_tokens` (as T2T-ViT's), so
    that a subclass can insert a token between them (``distill.DistillableViT``)."""

    def __init__(
        self,
        *,
        size: tuple[int, ...],
        patch_size: tuple[int, ...],
        axis_names: Sequence[str],
        input_name: str,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        pool: str,
        channels: int,
        dim_head: int,
        dropout: float,
        emb_dropout: float,
        dtype: jnp.dtype | None,
        rngs: nnx.Rngs | None,
        patch_embedding: Callable[..., nnx.Module] = PatchEmbed,
        norm_pooled: bool = False,
        **transformer_options: Any,
    ) -> None:
        rngs = default_rngs(rngs)
        check_choice(pool, ("cls", "mean"), "pool")
        self.size, self.patch_size = size, patch_size
        self.axis_names, self.input_name = tuple(axis_names), input_name
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(size, patch_size))

        self.to_patch_embedding = patch_embedding(patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = Transformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs, **transformer_options
        )
        self.norm = layer_norm(dim, 1e-5, rngs, dtype) if norm_pooled else None
        self.mlp_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def tokens(self, x: jax.Array, features: Features | None = None) -> jax.Array:
        """Check ``x``, embed its patches, add the positions and prepend the class token: ``(b, 1 + n, dim)``,
        before the embedding dropout. ``features`` is unused (T2T-ViT's ``tokens`` records its token blocks there)."""
        check_input(
            x.shape, name=self.input_name, channels_last=True, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=self.axis_names,
        )  # fmt: skip
        x, grid = self.embed_patches(x)
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid).astype(x.dtype)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        return jnp.concatenate((cls.astype(x.dtype), x), axis=1)

    def embed_patches(self, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        """The patch tokens ``(b, n, dim)`` of the input and their grid."""
        return self.to_patch_embedding(x)

    def encode(self, x: jax.Array, features: Features | None = None) -> jax.Array:
        """The transformer on a token sequence ``(b, n, dim)``, recording its blocks in ``features``."""
        return self.transformer(x, features=features)

    def pool_tokens(self, x: jax.Array) -> jax.Array:
        """What the head reads: the class token (``pool='cls'``) or the mean of every token (then ``norm``)."""
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return x if self.norm is None else self.norm(x)

    def __call__(
        self, x: jax.Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        features = Features.request(return_features, return_attn)
        x = self.pool_tokens(self.encode(self.dropout(self.tokens(x, features)), features))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)


@records_config
class ViT(ClassTokenViT):
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
        size, patch = image_geometry(image_size, patch_size)
        super().__init__(
            size=size, patch_size=patch, axis_names=IMAGE_AXES, input_name="img", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, pool=pool, channels=channels,
            dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout, dtype=dtype, rngs=rngs,
        )  # fmt: skip
