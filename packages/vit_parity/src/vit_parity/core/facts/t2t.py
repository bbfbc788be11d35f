"""Tokens-to-Token ViT (Yuan et al., 2021): the soft-split arithmetic and the argument checks, once for both
backends.

A soft split unfolds a token map with a ``(kernel, stride)`` window, zero padding ``stride // 2`` and floor
rounding (torch's ``nn.Unfold`` arithmetic): each token of the result holds the ``kernel x kernel`` neighbourhood
of every channel, ordered ``(channel, row, column)``, so the token width grows ``kernel ** 2`` times per split. A
backend builds its model from :func:`geometry` and checks each image with :func:`check_image`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vit_parity.core.validate import as_tuple, check_choice

__all__ = [
    "DEFAULT_LAYERS",
    "POOLS",
    "Geometry",
    "check_image",
    "check_layers",
    "check_transformer",
    "geometry",
    "min_side",
    "split_grids",
    "split_padding",
    "unfold_grid",
    "widths",
]

DEFAULT_LAYERS = ((7, 4), (3, 2), (3, 2))
POOLS = ("cls", "mean")
Layers = tuple[tuple[int, int], ...]


def _pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


def unfold_grid(
    size: Sequence[int], kernel: int | Sequence[int], stride: int | Sequence[int], padding: int | Sequence[int] = 0
) -> tuple[int, int]:
    """The ``(rows, columns)`` of windows that an unfold of a ``size`` map takes: ``(s + 2 p - k) // stride + 1``
    along each axis (ints apply to both axes); a side below 1 means the window does not fit."""
    k, s, p = _pair(kernel, "kernel_size", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    h, w = size
    return (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1


def split_padding(stride: int) -> int:
    """The zero padding of a soft split of ``stride``: half the stride, rounded down."""
    return stride // 2


def check_layers(t2t_layers: Sequence[Sequence[int]]) -> Layers:
    """``t2t_layers`` as a tuple of ``(kernel, stride)`` pairs of positive ints, or raise naming it."""
    ok = isinstance(t2t_layers, Sequence) and len(t2t_layers) > 0
    layers = []
    for layer in t2t_layers if ok else ():
        ok = ok and isinstance(layer, Sequence) and len(layer) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layer)
        if ok:
            layers.append((layer[0], layer[1]))
    if not ok:
        raise ValueError(f"t2t_layers must be a non-empty sequence of (kernel_size, stride) pairs, got {t2t_layers!r}")
    return tuple(layers)


def split_grids(size: Sequence[int], t2t_layers: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """The token grid after each soft split of an image of ``size`` ``(h, w)``; the last one is the model's."""
    grids, grid = [], tuple(size)
    for kernel, stride in check_layers(t2t_layers):
        grid = unfold_grid(grid, kernel, stride, split_padding(stride))
        grids.append(grid)
    return tuple(grids)


def widths(channels: int, t2t_layers: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The token width after each soft split: ``channels`` times the window area of every split so far."""
    out, width = [], channels
    for kernel, _ in check_layers(t2t_layers):
        width *= kernel * kernel
        out.append(width)
    return tuple(out)


def min_side(t2t_layers: Sequence[Sequence[int]]) -> int:
    """The smallest image side that leaves at least one token after every soft split (the arithmetic is
    monotonic, so every larger side does too)."""
    need = 1
    for kernel, stride in reversed(check_layers(t2t_layers)):
        need = max(1, (need - 1) * stride + kernel - 2 * split_padding(stride))
    return need


def check_transformer(*, transformer_given: bool, depth: int | None, heads: int | None, mlp_dim: int | None) -> None:
    """Either ``transformer`` is given and ``depth``, ``heads`` and ``mlp_dim`` are None, or all three are given."""
    given = {"depth": depth, "heads": heads, "mlp_dim": mlp_dim}
    if transformer_given:
        clash = {k: v for k, v in given.items() if v is not None}
        if clash:
            raise ValueError(f"transformer= replaces depth, heads and mlp_dim: leave them None, got {clash}")
    else:
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"depth, heads and mlp_dim must all be given unless transformer= is; missing {missing}")


@dataclass(frozen=True)
class Geometry:
    """A T2T-ViT's validated layout: the largest image ``size`` ``(h, w)``, the soft splits ``layers`` (each
    ``(kernel, stride)``), the token ``grid`` of that image, the token ``widths`` after each split and the
    ``min_side`` an image needs."""

    size: tuple[int, int]
    layers: Layers
    grid: tuple[int, int]
    widths: tuple[int, ...]
    min_side: int


def geometry(
    *,
    image_size: int | Sequence[int],
    channels: int,
    t2t_layers: Sequence[Sequence[int]],
    pool: str,
    depth: int | None,
    heads: int | None,
    mlp_dim: int | None,
    transformer_given: bool,
) -> Geometry:
    """Check T2TViT's constructor arguments (named as the constructor names them) and lay the model out.

    Raises naming the argument at fault: an unknown ``pool``, malformed ``t2t_layers``, ``transformer=`` together
    with (or without all of) ``depth``, ``heads`` and ``mlp_dim``, or an ``image_size`` below the smallest side the
    soft splits take.
    """
    check_choice(pool, POOLS, "pool")
    check_transformer(transformer_given=transformer_given, depth=depth, heads=heads, mlp_dim=mlp_dim)
    layers = check_layers(t2t_layers)
    size = as_tuple(image_size, 2, "image_size")
    (channels,) = as_tuple(channels, 1, "channels")
    least = min_side(layers)
    if min(size) < least:
        raise ValueError(
            f"image_size {size} is too small for t2t_layers {layers}: each side must be at least {least} to leave "
            "a token after every soft split"
        )
    return Geometry(size, layers, split_grids(size, layers)[-1], widths(channels, layers), least)


def check_image(shape: Sequence[int], spatial: Sequence[int], geometry: Geometry, name: str = "img") -> None:
    """Raise unless every side of ``spatial`` (an image of ``shape``) leaves a token after every soft split."""
    for axis, side in zip(("height", "width"), spatial):
        if side < geometry.min_side:
            raise ValueError(
                f"{name} {axis} {side} is too small for t2t_layers {geometry.layers}: it must be at least "
                f"{geometry.min_side} (shape {tuple(shape)})"
            )
