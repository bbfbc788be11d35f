"""DeepViT: "DeepViT: Towards Deeper Vision Transformer" (Zhou et al., 2021)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vit_flax.attention_variants import TalkingHeadsBlock
from vit_flax.vit import IMAGE_AXES, ClassTokenViT
from vit_parity.core.config import records_config
from vit_parity.core.facts import deepvit
from vit_parity.core.validate import image_geometry

__all__ = ["DeepViT"]


@records_config
class DeepViT(ClassTokenViT):
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
        size, patch = image_geometry(image_size, patch_size)
        deepvit.check_arguments(pool=pool, heads=heads)
        super().__init__(
            size=size, patch_size=patch, axis_names=IMAGE_AXES, input_name="img", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, pool=pool, channels=channels,
            dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout, norm_pooled=True,  # as the reference
            final_norm=False, block=TalkingHeadsBlock, pre_mix=False, post_mix=True, head_norm=True,
            dtype=dtype, rngs=rngs,
        )  # fmt: skip
