"""ViViT: "ViViT: A Video Vision Transformer" (Arnab et al., 2021), factorized encoder and factorized self-attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vit_parity.config import records_config
from vit_parity.validate import check_choice, check_input, video_geometry
from vit_torch.layers import Attention, FeedForward, Intermediates, PatchEmbed, Transformer, crop_grid
from vit_torch.vit_3d import VIDEO_AXES

__all__ = ["ViT"]

VARIANTS = ("factorized_encoder", "factorized_self_attention")


class FactorizedBlock(nn.Module):
    """One block of factorized self-attention on ``(b, f, n, d)`` tokens: attention over the ``n`` tokens of
    each frame group, then over the ``f`` frame groups at each spatial position, then the MLP."""

    def __init__(self, spatial_attn: Attention, temporal_attn: Attention, ff: FeedForward) -> None:
        super().__init__()
        self.spatial_attn = spatial_attn
        self.temporal_attn = temporal_attn
        self.ff = ff

    def forward(self, x: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        b, f, n, d = x.shape
        x = x.reshape(b * f, n, d)
        x = x + self.spatial_attn(x, None, intermediates)
        x = x.reshape(b, f, n, d).transpose(1, 2).reshape(b * n, f, d)
        x = x + self.temporal_attn(x, None, intermediates)
        x = x + self.ff(x)
        return x.reshape(b, n, f, d).transpose(1, 2)


class FactorizedTransformer(nn.Module):
    """A stack of :class:`FactorizedBlock` followed by a final LayerNorm; takes and returns ``(b, f, n, d)``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            FactorizedBlock(
                Attention(dim, heads, dim_head, dropout),
                Attention(dim, heads, dim_head, dropout),
                FeedForward(dim, mlp_dim, dropout),
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, intermediates)
            if intermediates is not None:
                intermediates.blocks.append(x)
        return self.norm(x)


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
        check_choice(pool, ("cls", "mean"), "pool")
        check_choice(variant, VARIANTS, "variant")
        if variant == "factorized_self_attention" and spatial_depth != temporal_depth:
            raise ValueError(
                "variant='factorized_self_attention' alternates spatial and temporal attention in each block, so "
                f"spatial_depth and temporal_depth must be equal, got {spatial_depth} and {temporal_depth}"
            )
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
            self.factorized_transformer = FactorizedTransformer(dim, spatial_depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Linear(dim, num_classes)

    def forward(self, video: Tensor, intermediates: Intermediates | None = None) -> Tensor:
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
            x = self.spatial_transformer(x.flatten(0, 1), intermediates=intermediates).unflatten(0, (b, f))
            x = x[:, :, 0] if cls else x.mean(dim=2)
            if self.temporal_cls_token is not None:
                x = torch.cat((self.temporal_cls_token.expand(b, 1, d), x), dim=1)
            x = self.temporal_transformer(x, intermediates=intermediates)
            x = x[:, 0] if cls else x.mean(dim=1)
        else:
            x = self.factorized_transformer(x, intermediates=intermediates)
            x = x[:, 0, 0] if cls else x.mean(dim=(1, 2))
        return self.mlp_head(x)
