"""ViViT: "ViViT: A Video Vision Transformer" (Arnab et al., 2021), factorized encoder and factorized self-attention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import vivit
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, video_geometry
from vit_torch.layers import Attention, Block, Linear, PatchEmbed, Transformer, crop_grid, with_features
from vit_torch.vit_3d import VIDEO_AXES

__all__ = ["ViT"]


class FactorizedBlock(Block):
    """A :class:`~vit_torch.layers.Block` whose attention is factorized, on ``(b, f, n, d)`` tokens: over the
    ``n`` tokens of each frame group (``norm1``, ``attn``), then over the ``f`` frame groups at each spatial
    position (``temporal_norm``, ``temporal_attn``), then the MLP (``norm2``, ``ff``)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0, **options: Any) -> None:
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, **options)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_attn = Attention(dim, heads, dim_head, dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, return_attn: bool = False) -> Any:
        b, f, n, d = x.shape
        x = x.reshape(b * f, n, d)
        spatial = self.attn(self.norm1(x), return_attn=return_attn)
        x = x + (spatial[0] if return_attn else spatial)
        x = x.reshape(b, f, n, d).transpose(1, 2).reshape(b * n, f, d)
        temporal = self.temporal_attn(self.temporal_norm(x), return_attn=return_attn)
        x = x + (temporal[0] if return_attn else temporal)
        x = x + self.ff(self.norm2(x))
        x = x.reshape(b, n, f, d).transpose(1, 2)
        return (x, {"spatial": spatial[1], "temporal": temporal[1]}) if return_attn else x


@records_config
class ViT(nn.Module):
    """ViViT (Arnab et al., 2021) on tubelets of ``frame_patch_size x image_patch_size``.

    ``variant='factorized_encoder'``: a spatial transformer over the tokens of each frame group (with its
    own class token), then a temporal transformer over the frame groups' summaries (with another class
    token). ``variant='factorized_self_attention'``: every block attends over space, then over time
    (``spatial_depth`` blocks; ``temporal_depth`` must be equal). ``pool='mean'`` averages instead of
    using class tokens. Takes ``video`` of shape ``(b, channels, t, h, w)`` with ``t <= frames`` and
    ``h, w <= image_size``; shorter or smaller clips use the matching part of the position grid.
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
        spatial_depth: int,
        temporal_depth: int,
        heads: int,
        mlp_dim: int,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        variant: str = "factorized_encoder",
    ) -> None:
        super().__init__()
        self.size, self.patch_size = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        vivit.check_arguments(pool=pool, variant=variant, spatial_depth=spatial_depth, temporal_depth=temporal_depth)
        self.pool = pool
        self.variant = variant
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid), dim))
        self.spatial_cls_token = nn.Parameter(torch.randn(1, 1, dim)) if pool == "cls" else None
        self.dropout = nn.Dropout(emb_dropout)
        if variant == "factorized_encoder":
            self.temporal_cls_token = nn.Parameter(torch.randn(1, 1, dim)) if pool == "cls" else None
            self.spatial_transformer = Transformer(dim, spatial_depth, heads, dim_head, mlp_dim, dropout)
            self.temporal_transformer = Transformer(dim, temporal_depth, heads, dim_head, mlp_dim, dropout)
        else:
            self.factorized_transformer = Transformer(
                dim, spatial_depth, heads, dim_head, mlp_dim, dropout, block=FactorizedBlock
            )
        self.mlp_head = Linear(dim, num_classes)

    def forward(
        self, video: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        check_input(
            video.shape, name="video", channels_last=False, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=VIDEO_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(video)
        x = x + crop_grid(self.pos_embedding, self.grid, grid)
        b, _, d = x.shape
        f = grid[0]
        x = x.reshape(b, f, -1, d)
        if self.spatial_cls_token is not None:
            x = torch.cat((self.spatial_cls_token.expand(b, f, 1, d), x), dim=2)
        x = self.dropout(x)
        cls = self.pool == "cls"

        if self.variant == "factorized_encoder":
            x = self.spatial_transformer(x.flatten(0, 1), features=features, prefix="spatial/").unflatten(0, (b, f))
            x = x[:, :, 0] if cls else x.mean(dim=2)
            if self.temporal_cls_token is not None:
                x = torch.cat((self.temporal_cls_token.expand(b, 1, d), x), dim=1)
            x = self.temporal_transformer(x, features=features, prefix="temporal/")
            x = x[:, 0] if cls else x.mean(dim=1)
        else:
            x = self.factorized_transformer(x, features=features)
            x = x[:, 0, 0] if cls else x.mean(dim=(1, 2))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
