"""CrossViT (Chen et al., 2021): the geometry of its two patch sizes, checked once for both backends.

Both branches cut the same image, one into ``sm_patch_size`` patches and one into ``lg_patch_size`` patches, so
the image size (at construction) and every input's sides must be divisible by both; the errors name both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vit_parity.core.validate import as_tuple

__all__ = ["IMAGE_AXES", "Geometry", "check_image", "geometry"]

IMAGE_AXES = ("height", "width")
Pair = tuple[int, int]


@dataclass(frozen=True)
class Geometry:
    """A CrossViT's validated layout: the largest image ``size`` ``(h, w)``, each branch's patch and the patch
    grid of that image in each branch."""

    size: tuple[int, ...]
    sm_patch: tuple[int, ...]
    lg_patch: tuple[int, ...]

    @property
    def sm_grid(self) -> Pair:
        return _grid(self.size, self.sm_patch)

    @property
    def lg_grid(self) -> Pair:
        return _grid(self.size, self.lg_patch)


def _grid(size: Sequence[int], patch: Sequence[int]) -> Pair:
    h, w = (s // p for s, p in zip(size, patch))
    return h, w


def geometry(
    image_size: int | Sequence[int], sm_patch_size: int | Sequence[int], lg_patch_size: int | Sequence[int]
) -> Geometry:
    """Check the constructor's sizes (an int or an ``(h, w)`` pair each): ``image_size`` must be divisible by
    ``sm_patch_size`` and by ``lg_patch_size``; the error names both."""
    size = as_tuple(image_size, 2, "image_size")
    sm, lg = as_tuple(sm_patch_size, 2, "sm_patch_size"), as_tuple(lg_patch_size, 2, "lg_patch_size")
    if any(s % a or s % b for s, a, b in zip(size, sm, lg)):
        raise ValueError(
            f"image_size {size} must be divisible by both sm_patch_size {sm} and lg_patch_size {lg} "
            "(each branch cuts the whole image into its own patches)"
        )
    return Geometry(size, sm, lg)


def check_image(shape: Sequence[int], geometry: Geometry, *, channels: int, channels_last: bool) -> Pair:
    """Raise unless ``shape`` is a batch of images ``(b, c, h, w)`` (``(b, h, w, c)`` channels-last) with
    ``channels`` channels and sides at most the model's, each divisible by both patch sizes; return ``(h, w)``."""
    layout = "b h w c" if channels_last else "b c h w"
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"img must be a 4-D tensor ({layout}), got shape {shape}")
    c = shape[-1] if channels_last else shape[1]
    if c != channels:
        raise ValueError(f"img must have channels={channels} ({layout}), got {c} in shape {shape}")
    spatial = shape[1:3] if channels_last else shape[2:4]
    for axis, s, limit, a, b in zip(IMAGE_AXES, spatial, geometry.size, geometry.sm_patch, geometry.lg_patch):
        if s > limit:
            raise ValueError(f"img {axis} {s} is larger than the model's {limit} (shape {shape})")
        if s == 0 or s % a or s % b:
            raise ValueError(
                f"img {axis} {s} must be a positive multiple of both sm_patch_size {a} and lg_patch_size {b} "
                f"(shape {shape})"
            )
    h, w = spatial
    return h, w
