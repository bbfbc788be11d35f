"""DeepViT: "DeepViT: Towards Deeper Vision Transformer" (Zhou et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import deepvit
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, image_geometry
from vit_torch.attention_variants import TalkingHeadsBlock
from vit_torch.layers import Linear, PatchEmbed, Transformer, crop_grid, with_features

__all__ = ["DeepViT"]

IMAGE_AXES = ("height", "width")


@records_config
class DeepViT(nn.Module):
    """DeepViT (Zhou et al., 2021): a ViT whose attention is re-attention.

    In every block the softmax attention maps are mixed across heads by a learned ``(heads, heads)`` matrix and
    normalized over the heads (a LayerNorm) before they weigh the values
    (:class:`~vit_torch.attention_variants.TalkingHeadsAttention` with ``pre_mix=False, head_norm=True``).
    A class token, learned positions, and a head that normalizes the pooled token (``norm``) and classifies it.
    Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and divisible by
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
    ) -> None:
        super().__init__()
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        deepvit.check_arguments(pool=pool, heads=heads)
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, final_norm=False, block=TalkingHeadsBlock,
            pre_mix=False, post_mix=True, head_norm=True,
        )  # fmt: skip
        self.norm = nn.LayerNorm(dim)
        self.mlp_head = Linear(dim, num_classes)

    def forward(
        self, img: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        check_input(
            img.shape, name="img", channels_last=False, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        x = x + crop_grid(self.pos_embedding[:, 1:], self.grid, grid)
        cls = (self.cls_token + self.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        x = self.dropout(torch.cat((cls, x), dim=1))
        x = self.transformer(x, features=features)
        x = self.norm(x[:, 0] if self.pool == "cls" else x.mean(dim=1))  # as the reference: pool, then normalize
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
