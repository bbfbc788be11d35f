"""Fixed positional embeddings, computed once in numpy so that both backends use the same table."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def sincos_table(grid: tuple[int, ...], dim: int, temperature: float = 10000.0) -> np.ndarray:
    """Sin-cos embedding of every position of an n-D grid, shape ``(prod(grid), dim)``, float32.

    Each axis gets ``dim // (2 * n)`` frequencies; features are ordered last axis first
    (``w.sin, w.cos, h.sin, h.cos[, t.sin, t.cos]``) and zero-padded to ``dim``, as in
    "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022) for 2-D grids.
    """
    n = len(grid)
    fourier = dim // (2 * n)
    if fourier < 2:
        raise ValueError(f"dim must be at least {4 * n} for a {n}-D sin-cos embedding, got {dim}")
    omega = 1.0 / temperature ** (np.arange(fourier, dtype=np.float64) / (fourier - 1))
    coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid], indexing="ij")
    parts = []
    for c in reversed(coords):
        angles = c.reshape(-1, 1) * omega[None, :]
        parts += [np.sin(angles), np.cos(angles)]
    table = np.concatenate(parts, axis=1)
    table = np.pad(table, ((0, 0), (0, dim - table.shape[1]))).astype(np.float32)
    table.setflags(write=False)
    return table
