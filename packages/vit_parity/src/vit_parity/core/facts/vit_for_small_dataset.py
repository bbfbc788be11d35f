"""ViT for small datasets (Lee, Lee and Song, 2021): the facts both backends share.

Shifted patch tokenization concatenates the image with four shifted copies of it, in :data:`SHIFTS` order, before
cutting patches. Each copy moves the image by one pixel (as vit-pytorch's ``SPT`` does; the paper shifts by half a
patch, diagonally), and the pixels it uncovers are zeros.
"""

from __future__ import annotations

from vit_parity.core.validate import check_choice

__all__ = ["POOLS", "SHIFTS", "check_arguments"]

POOLS = ("cls", "mean")

# (down, right) offsets in pixels of the four copies, in channel order: right, left, down, up.
# A copy shifted by (dy, dx) holds the image's pixel (i - dy, j - dx) at (i, j), zero where that is outside.
SHIFTS: tuple[tuple[int, int], ...] = ((0, 1), (0, -1), (1, 0), (-1, 0))


def check_arguments(*, pool: str) -> None:
    """Raise naming the argument at fault: ``pool`` must be ``'cls'`` or ``'mean'``."""
    check_choice(pool, POOLS, "pool")
