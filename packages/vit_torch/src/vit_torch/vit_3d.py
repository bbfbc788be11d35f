"""3D ViT: the ViT of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020) on tubelets of videos or volumes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vit_parity.config import records_config
from vit_parity.validate import check_choice, check_input, video_geometry
from vit_torch.layers import Intermediates, PatchEmbed, Transformer, crop_grid

__all__ = ["ViT"]

VIDEO_AXES = ("frames", "height", "width")


@records_config
class ViT(nn.Module):
    """ViT (Dosovitskiy et al., 2020) on videos: tubelets of ``frame_patch_size x image_patch_size``,
    a class token and learned positions over the ``(t, h, w)`` tubelet grid.

    Takes ``video`` of shape ``(b, channels, t, h, w)`` with ``t <= frames``, ``h, w <= image_size`` and
    every side divisible by its patch size; shorter or smaller clips use the matching part of the grid.
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
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.size, self.patch_size = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        check_choice(pool, ("cls", "mean"), "pool")
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Linear(dim, num_classes)

    def forward(self, video: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        check_input(
            video.shape, name="video", channels_last=False, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=VIDEO_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(video)
        x = x + crop_grid(self.pos_embedding[:, 1:], self.grid, grid)
        cls = (self.cls_token + self.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        x = self.dropout(torch.cat((cls, x), dim=1))
        x = self.transformer(x, intermediates=intermediates)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.mlp_head(x)
