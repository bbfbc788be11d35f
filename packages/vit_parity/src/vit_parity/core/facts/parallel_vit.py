"""Parallel ViT (Touvron et al., 2022): the argument checks that both backends make."""

from __future__ import annotations

from vit_parity.core.validate import check_choice

__all__ = ["POOLS", "check_arguments", "check_branches"]

POOLS = ("cls", "mean")


def check_branches(branches: int) -> None:
    """Raise unless ``branches`` (the parallel attention and feed-forward branches of a block) is a positive int."""
    if isinstance(branches, bool) or not isinstance(branches, int) or branches < 1:
        raise ValueError(f"num_parallel_branches must be a positive int, got {branches!r}")


def check_arguments(*, pool: str, num_parallel_branches: int) -> None:
    """Raise naming the argument at fault: ``pool`` must be known and ``num_parallel_branches`` positive."""
    check_choice(pool, POOLS, "pool")
    check_branches(num_parallel_branches)
