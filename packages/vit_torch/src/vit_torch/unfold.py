"""Soft split: every (overlapping) window of a channels-first map becomes one token, as ``nn.Unfold`` cuts it.

Shared by the models that cut overlapping patches (T2T-ViT's soft splits, PiT's patch embedding). The flax
twin (``vit_flax.unfold``) takes channels-last maps and gives the same tokens in the same channel order.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vit_parity.core.facts.t2t import unfold_grid

__all__ = ["unfold"]


def unfold(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> tuple[Tensor, tuple[int, int]]:
    """``(b, c, h, w)`` to tokens ``(b, rows * columns, c * kh * kw)`` and their grid ``(rows, columns)``.

    Windows of ``kernel_size`` every ``stride`` over the map zero-padded by ``padding`` on each side, in
    row-major order; each token lists its window as ``(c, kh, kw)`` (channel slowest), ``nn.Unfold``'s order.
    """
    grid = unfold_grid(tuple(x.shape[2:]), kernel_size, stride, padding) if x.ndim == 4 else (0, 0)
    if min(grid) < 1:
        raise ValueError(
            f"unfold takes a (b, c, h, w) map at least as large as the window {kernel_size} (padding {padding}), "
            f"got shape {tuple(x.shape)}"
        )
    return F.unfold(x, kernel_size, padding=padding, stride=stride).transpose(1, 2), grid
