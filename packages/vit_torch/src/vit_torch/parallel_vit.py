"""Parallel ViT: "Three things everyone should know about Vision Transformers" (Touvron et al., 2022)."""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import parallel_vit as facts
from vit_parity.core.validate import image_geometry
from vit_torch.layers import Block, PatchEmbed
from vit_torch.vit import IMAGE_AXES, ClassTokenViT

__all__ = ["ViT"]


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


@records_config
class ViT(ClassTokenViT):
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
        size, patch = image_geometry(image_size, patch_size)
        facts.check_arguments(pool=pool, num_parallel_branches=num_parallel_branches)
        super().__init__(
            size=size, patch_size=patch, axis_names=IMAGE_AXES, input_name="img", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, pool=pool, channels=channels,
            dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout, norm_pooled=True,
            patch_embedding=functools.partial(PatchEmbed, norms=False),
            final_norm=False, block=ParallelBlock, branches=num_parallel_branches,
        )  # fmt: skip
