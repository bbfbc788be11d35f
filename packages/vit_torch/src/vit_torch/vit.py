"""ViT: "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vit_parity.config import records_config
from vit_parity.validate import as_tuple, check_choice, check_divisible, check_input
from vit_torch.layers import Intermediates, PatchEmbed, Transformer, crop_grid

__all__ = ["ViT"]


@records_config
class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al., 2020) with a class token and learned positions.

    Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and
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
    ) -> None:
        super().__init__()
        self.image_size = as_tuple(image_size, 2, "image_size")
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        check_divisible(self.image_size, self.patch_size, "image_size", "patch_size")
        check_choice(pool, ("cls", "mean"), "pool")
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.image_size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Linear(dim, num_classes)

    def forward(self, img: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        check_input(
            img.shape, name="img", channels_last=False, channels=self.channels,
            max_size=self.image_size, patch=self.patch_size, axis_names=("height", "width"),
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        x = x + crop_grid(self.pos_embedding[:, 1:], self.grid, grid)
        cls = (self.cls_token + self.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        x = self.dropout(torch.cat((cls, x), dim=1))
        x = self.transformer(x, intermediates=intermediates)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.mlp_head(x)
