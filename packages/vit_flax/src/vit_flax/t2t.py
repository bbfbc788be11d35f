"""T2T-ViT: "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet" (Yuan et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import RecordsUserModules, Transformer, crop_grid, default_rngs, with_features
from vit_flax.unfold import unfold
from vit_flax.vit import IMAGE_AXES
from vit_parity.core.config import records_config
from vit_parity.core.facts import t2t
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input

__all__ = ["T2TViT"]

Array = jax.Array


class TokensToToken(nnx.Module):
    """The tokens-to-token stage: soft splits of the image, then of the token map, with a one-block transformer
    between two splits, then a linear to ``dim``; ``(b, h, w, c)`` to tokens ``(b, n, dim)`` and their grid.

    Laid out by a :class:`vit_parity.core.facts.t2t.Geometry`. Each token transformer runs at the width its split
    leaves (``w``): one head of width ``w`` and a feed-forward of width ``w``. Its blocks are recorded as
    ``t2t0/block00``, ``t2t1/block00`` ...
    """

    def __init__(
        self,
        geometry: t2t.Geometry,
        dim: int,
        dropout: float = 0.0,
        *,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.layers = geometry.layers
        self.dtype = dtype
        self.transformers = nnx.List(
            [Transformer(w, 1, 1, w, w, dropout, dtype=dtype, rngs=rngs) for w in geometry.widths[:-1]]
        )
        self.proj = nnx.Linear(geometry.widths[-1], dim, dtype=dtype, rngs=rngs)

    def __call__(self, img: Array, features: Features | None = None) -> tuple[Array, tuple[int, int]]:
        x, grid = img, tuple(img.shape[1:3])
        for i, (kernel, stride) in enumerate(self.layers):
            if i:  # tokens back to a (b, h, w, c) map
                x = x.reshape(x.shape[0], *grid, x.shape[-1])
            x, grid = unfold(x, kernel, stride, t2t.split_padding(stride))
            if self.dtype is not None:  # the token transformers' residual stream runs in the compute dtype
                x = x.astype(self.dtype)
            if i < len(self.transformers):
                x = self.transformers[i](x, features=features, prefix=f"t2t{i}/")
        return self.proj(x), grid


@records_config
class T2TViT(RecordsUserModules, nnx.Module):
    """Tokens-to-Token ViT (Yuan et al., 2021): overlapping soft splits that shrink the token grid step by step
    (:class:`TokensToToken`), then a class token, learned positions, a transformer and a linear head.

    ``t2t_layers`` lists the ``(kernel, stride)`` of each soft split (padding ``stride // 2``). ``transformer``
    replaces the default transformer (then ``depth``, ``heads`` and ``mlp_dim`` stay None) by any nnx module mapping
    ``(b, n, dim)`` to ``(b, n, dim)``; a :class:`vit_flax.layers.Transformer` also records its blocks. Takes
    ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` (int or ``(h, w)``); smaller
    images use the top-left part of the positional grid.

    The forward pass is built from :meth:`tokens` (the embedded sequence with its class token and positions),
    :meth:`encode` (the transformer) and :meth:`pool_tokens`, so that a subclass can insert a token (a distillation
    token) between them.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int | None = None,
        heads: int | None = None,
        mlp_dim: int | None = None,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        transformer: nnx.Module | None = None,
        t2t_layers: Sequence[tuple[int, int]] = t2t.DEFAULT_LAYERS,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        geometry = t2t.geometry(
            image_size=image_size, channels=channels, t2t_layers=t2t_layers, pool=pool, depth=depth, heads=heads,
            mlp_dim=mlp_dim, transformer_given=transformer is not None,
        )  # fmt: skip
        self.geometry = geometry
        self.size, self.grid = geometry.size, geometry.grid
        self.channels, self.pool = channels, pool
        self.dim, self.num_classes = dim, num_classes

        self.to_patch_embedding = TokensToToken(geometry, dim, dropout, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        if transformer is None:
            transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=rngs)
        self.transformer = transformer
        self.mlp_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def positions(self, grid: tuple[int, int]) -> Array:
        """The positional embeddings ``(1, 1 + prod(grid), dim)`` of the class token and a token ``grid``."""
        pos = self.pos_embedding[...]
        return jnp.concatenate((pos[:, :1], crop_grid(pos[:, 1:], self.grid, grid)), axis=1)

    def tokens(self, img: Array, features: Features | None = None) -> Array:
        """Check ``img``, embed it (:class:`TokensToToken`, recording its token transformers' blocks in
        ``features``), prepend the class token and add the positions: ``(b, 1 + n, dim)``, before the embedding
        dropout."""
        spatial = check_input(
            img.shape, name="img", channels_last=True, channels=self.channels, max_size=self.size, patch=(1, 1),
            axis_names=IMAGE_AXES,
        )  # fmt: skip
        t2t.check_image(img.shape, spatial, self.geometry)
        x, grid = self.to_patch_embedding(img, features)
        cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        return jnp.concatenate((cls, x), axis=1) + self.positions(grid).astype(x.dtype)

    def encode(self, x: Array, features: Features | None = None) -> Array:
        """The transformer on a token sequence ``(b, n, dim)``, recording its blocks when it is a library one."""
        if isinstance(self.transformer, Transformer):
            return self.transformer(x, features=features)
        return self.transformer(x)

    def pool_tokens(self, x: Array) -> Array:
        """What the head reads: the class token (``pool='cls'``) or the mean of every token."""
        return x[:, 0] if self.pool == "cls" else x.mean(axis=1)

    def __call__(
        self, img: Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        features = Features.request(return_features, return_attn)
        x = self.dropout(self.tokens(img, features))
        x = self.pool_tokens(self.encode(x, features))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
