"""DeepViT: "DeepViT: Towards Deeper Vision Transformer" (Zhou et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.attention_variants import TalkingHeadsBlock
from vit_flax.layers import PatchEmbed, Transformer, crop_grid, default_rngs, layer_norm, with_features
from vit_parity.core.config import records_config
from vit_parity.core.facts import deepvit
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, image_geometry

__all__ = ["DeepViT"]

IMAGE_AXES = ("height", "width")


@records_config
class DeepViT(nnx.Module):
    """DeepViT (Zhou et al., 2021): a ViT whose attention is re-attention.

    In every block the softmax attention maps are mixed across heads by a learned ``(heads, heads)`` matrix and
    normalized over the heads (a LayerNorm) before they weigh the values
    (:class:`~vit_flax.attention_variants.TalkingHeadsAttention` with ``pre_mix=False, head_norm=True``).
    A class token, learned positions, and a head that normalizes the pooled token (``norm``) and classifies it.
    Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` and divisible by
    ``patch_size``; smaller images use the top-left part of the position grid.
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
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        deepvit.check_arguments(pool=pool, heads=heads)
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = Transformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, final_norm=False, block=TalkingHeadsBlock,
            pre_mix=False, post_mix=True, head_norm=True, dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self.norm = layer_norm(dim, 1e-5, rngs, dtype)
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
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid).astype(x.dtype)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        x = self.dropout(jnp.concatenate((cls.astype(x.dtype), x), axis=1))
        x = self.transformer(x, features=features)
        x = self.norm(x[:, 0] if self.pool == "cls" else x.mean(axis=1))  # as the reference: pool, then normalize
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
