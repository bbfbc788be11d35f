"""Soft split: every (overlapping) window of a channels-last map becomes one token, as torch's ``nn.Unfold``
cuts it.

Shared by the models that cut overlapping patches (T2T-ViT's soft splits, PiT's patch embedding). Mirrors
``vit_torch.unfold``: the same tokens with the same channel order ``(c, kh, kw)``, so that a linear layer that
reads them converts per leaf. The windows are strided slices of the padded map (exact in every dtype, no
matrix product).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from vit_parity.core.facts.t2t import unfold_grid

__all__ = ["unfold"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def unfold(
    x: jax.Array,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> tuple[jax.Array, tuple[int, int]]:
    """``(b, h, w, c)`` to tokens ``(b, rows * columns, c * kh * kw)`` and their grid ``(rows, columns)``.

    Windows of ``kernel_size`` every ``stride`` over the map zero-padded by ``padding`` on each side, in
    row-major order; each token lists its window as ``(c, kh, kw)`` (channel slowest), torch's order.
    """
    grid = unfold_grid(tuple(x.shape[1:3]), kernel_size, stride, padding) if x.ndim == 4 else (0, 0)
    if min(grid) < 1:
        raise ValueError(
            f"unfold takes a (b, h, w, c) map at least as large as the window {kernel_size} (padding {padding}), "
            f"got shape {tuple(x.shape)}"
        )
    return _windows(x, _pair(kernel_size), _pair(stride), _pair(padding), grid), grid


@partial(jax.jit, static_argnums=(1, 2, 3, 4))  # one program per geometry, rather than one per slice when eager
def _windows(
    x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], grid: tuple[int, int]
) -> jax.Array:
    (kh, kw), (sh, sw), (ph, pw), (rows, cols) = kernel, stride, padding, grid
    b, c = x.shape[0], x.shape[3]
    x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    height, width = sh * (rows - 1) + 1, sw * (cols - 1) + 1  # the span of the window origins
    windows = [
        x[:, i : i + height : sh, j : j + width : sw, :] for i in range(kh) for j in range(kw)
    ]  # each (b, rows, cols, c), one per window offset (kh, kw) in row-major order
    return jnp.stack(windows, axis=-1).reshape(b, rows * cols, c * kh * kw)
