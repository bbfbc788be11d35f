"""ViT with a patch merger: "Learning to Merge Tokens in Vision Transformers" (Renggli et al., 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import PatchEmbed, Transformer, crop_grid, default_rngs, layer_norm, run_block, with_features
from vit_parity.core.config import records_config
from vit_parity.core.facts import vit_with_patch_merger as facts
from vit_parity.core.features import Features, block_label
from vit_parity.core.validate import check_input, image_geometry

__all__ = ["ViT"]

IMAGE_AXES = ("height", "width")


class PatchMerger(nnx.Module):
    """The patch merger of Renggli et al. (2022): ``num_tokens_out`` learned queries pool any number of tokens.

    ``__call__(x)`` takes tokens ``(b, n, dim)``, normalizes them (``norm``), scores them against the ``queries``
    ``(num_tokens_out, dim)`` (dot products scaled by ``dim ** -0.5``, a softmax over the ``n`` tokens) and returns
    the weighted sums of the normalized tokens, ``(b, num_tokens_out, dim)``. ``return_attn=True`` also returns the
    weights ``(b, num_tokens_out, n)``.
    """

    def __init__(
        self, dim: int, num_tokens_out: int, *, dtype: jnp.dtype | None = None, rngs: nnx.Rngs | None = None
    ) -> None:
        rngs = default_rngs(rngs)
        self.dim = dim
        self.norm = layer_norm(dim, 1e-5, rngs, dtype)
        self.queries = nnx.Param(jax.random.normal(rngs.params(), (num_tokens_out, dim)))

    def __call__(self, x: jax.Array, *, return_attn: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        facts.check_features(x.shape, self.dim)
        x = self.norm(x)
        logits = jnp.einsum("md,bnd->bmn", self.queries[...].astype(x.dtype), x) * self.dim**-0.5
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bmn,bnd->bmd", weights, x)
        return (out, weights) if return_attn else out


class MergingTransformer(Transformer):
    """A :class:`~vit_flax.layers.Transformer` whose tokens go through a :class:`PatchMerger` (``patch_merger``)
    after block ``merge_index`` (0-based), before the next block; the final norm reads the merged tokens."""

    def __init__(
        self,
        dim: int,
        depth: int,
        *args: Any,
        merge_index: int,
        num_tokens_out: int,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        super().__init__(dim, depth, *args, dtype=dtype, rngs=rngs, **options)
        self.merge_index = merge_index
        self.patch_merger = PatchMerger(dim, num_tokens_out, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, *, features: Features | None = None, prefix: str = ""
    ) -> jax.Array:
        for i, block in enumerate(self.blocks):
            x = run_block(block, x, mask, features, block_label(i, prefix))
            if i == self.merge_index:
                x = self.patch_merger(x)
        return x if self.norm is None else self.norm(x)


@records_config
class ViT(nnx.Module):
    """ViT with a patch merger (Renggli et al., 2022): after block ``patch_merge_layer`` (counted from 1; ``None``:
    half-way, after block ``depth // 2``) a :class:`PatchMerger` reduces the tokens to ``patch_merge_num_tokens``.

    No class token: learned positions over the patch grid, a pre-norm transformer with a final norm, the mean of the
    tokens and a linear head. Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` and
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
        patch_merge_layer: int | None = None,
        patch_merge_num_tokens: int = 8,
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        index = facts.merge_index(
            depth=depth, patch_merge_layer=patch_merge_layer, patch_merge_num_tokens=patch_merge_num_tokens
        )
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid), dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = MergingTransformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, merge_index=index, num_tokens_out=patch_merge_num_tokens,
            dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self.mlp_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, img: jax.Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        features = Features.request(return_features, return_attn)
        check_input(
            img.shape, name="img", channels_last=True, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        x = self.dropout(x + crop_grid(self.pos_embedding[...], self.grid, grid).astype(x.dtype))
        x = self.transformer(x, features=features).mean(axis=1)
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
