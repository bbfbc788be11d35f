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


@lru_cache(maxsize=64)
def sinusoidal_table(length: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """The 1-D sinusoidal table of "Attention Is All You Need" over ``length`` positions, shape ``(length, dim)``.

    Feature ``i`` of position ``p`` is ``p / temperature ** (2 * (i // 2) / dim)``, through sin on even
    ``i`` and cos on odd ``i`` (the interleaved layout CCT uses for its flattened token sequence); float32.
    """
    if length < 1 or dim < 1:
        raise ValueError(f"length and dim must be positive, got length={length}, dim={dim}")
    i = np.arange(dim)
    angles = np.arange(length, dtype=np.float64)[:, None] / temperature ** (2 * (i // 2) / dim)[None, :]
    table = np.where(i % 2 == 0, np.sin(angles), np.cos(angles)).astype(np.float32)
    table.setflags(write=False)
    return table
