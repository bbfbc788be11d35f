"""Parallel ViT: "Three things everyone should know about Vision Transformers" (Touvron et al., 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import parallel_vit as facts
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, image_geometry
from vit_torch.layers import Block, Linear, Transformer, crop_grid, grid_of, patchify, with_features

__all__ = ["ViT"]

IMAGE_AXES = ("height", "width")


class ParallelBlock(nn.Module):
    """A residual block with ``branches`` attention branches summed into one residual, then as many feed-forward
    branches summed into another: ``x + sum_j attn_j(norm1_j(x))``, then ``x + sum_j ff_j(norm2_j(x))``.

    Branch ``j`` is a :class:`~vit_torch.layers.Block` (``branches.j``) of which only the pieces run: its ``norm1``,
    ``attn``, ``ls1`` and ``drop_path`` are the ``j``-th attention branch, its ``norm2``, ``ff``, ``ls2`` and
    ``drop_path`` the ``j``-th feed-forward branch; every option of :class:`~vit_torch.layers.Block` applies to each
    branch. ``return_attn=True`` returns the maps as ``{"branch0": ..., "branch1": ...}``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        *,
        branches: int = 2,
        **options: Any,
    ) -> None:
        super().__init__()
        facts.check_branches(branches)
        self.branches = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim, dropout, **options) for _ in range(branches))

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        outs = [b.attn(b.norm1(x), mask, return_attn=return_attn) for b in self.branches]
        ys, maps = zip(*outs) if return_attn else (outs, ())
        x = x + sum(b.drop_path(b.ls1(y)) for b, y in zip(self.branches, ys))
        x = x + sum(b.drop_path(b.ls2(b.ff(b.norm2(x)))) for b in self.branches)
        return (x, {f"branch{j}": a for j, a in enumerate(maps)}) if return_attn else x


class LinearPatchEmbed(nn.Module):
    """Cut ``(b, c, h, w)`` into patches, each flattened as ``(ph, pw, c)``, and project them to ``dim`` (``proj``),
    without the norms of :class:`~vit_torch.layers.PatchEmbed`. Returns the tokens ``(b, n, dim)`` and the grid."""

    def __init__(self, patch_size: tuple[int, ...], channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = Linear(channels * math.prod(self.patch_size), dim)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return self.proj(patchify(x, self.patch_size)), grid_of(x.shape[2:], self.patch_size)


@records_config
class ViT(nn.Module):
    """Parallel ViT (Touvron et al., 2022): every block runs ``num_parallel_branches`` attention branches side by
    side and sums them into one residual, then as many feed-forward branches (:class:`ParallelBlock`).

    Linearly embedded patches, a class token and learned positions, no norm at the end of the stack, and a head that
    normalizes the pooled token (``norm``: the class token, or the mean of every token with ``pool='mean'``) and
    classifies it. Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and divisible
    by ``patch_size``; smaller images use the top-left part of the position grid.
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
        num_parallel_branches: int = 2,
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        facts.check_arguments(pool=pool, num_parallel_branches=num_parallel_branches)
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = LinearPatchEmbed(self.patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, final_norm=False, block=ParallelBlock,
            branches=num_parallel_branches,
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
        x = self.transformer(self.dropout(torch.cat((cls, x), dim=1)), features=features)
        x = self.norm(x[:, 0] if self.pool == "cls" else x.mean(dim=1))  # as the reference: pool, then normalize
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
