"""Input checks shared by both backends: they read only shapes, so they run on any array type."""

from __future__ import annotations

from collections.abc import Sequence


def as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Return ``value`` as an ``n``-tuple of positive ints (an int is repeated), or raise naming ``name``."""
    if isinstance(value, int):
        value = (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{name} must be a positive int or a tuple of {n} positive ints, got {value!r}")
    return value


def check_divisible(size: Sequence[int], patch: Sequence[int], size_name: str, patch_name: str) -> None:
    """Raise unless every side of ``size`` is divisible by the matching side of ``patch``."""
    for s, p in zip(size, patch):
        if s % p:
            raise ValueError(f"{size_name} {tuple(size)} must be divisible by {patch_name} {tuple(patch)}")


def check_choice(value: object, choices: Sequence[object], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_input(
    shape: Sequence[int],
    *,
    name: str,
    channels_last: bool,
    channels: int,
    max_size: Sequence[int],
    patch: Sequence[int],
    axis_names: Sequence[str],
) -> tuple[int, ...]:
    """Validate a batched input of shape (b, c, *spatial) or (b, *spatial, c); return its spatial sides.

    ``axis_names`` names the spatial axes (e.g. ``("height", "width")`` or ``("frames", "height", "width")``)
    so that the error says which side is wrong and what was expected.
    """
    n = len(axis_names)
    layout = "b " + (" ".join(axis_names) + " c" if channels_last else "c " + " ".join(axis_names))
    if len(shape) != n + 2:
        raise ValueError(f"{name} must be a {n + 2}-D tensor ({layout}), got shape {tuple(shape)}")
    c = shape[-1] if channels_last else shape[1]
    spatial = tuple(shape[1:-1] if channels_last else shape[2:])
    if c != channels:
        raise ValueError(f"{name} must have channels={channels} ({layout}), got {c} in shape {tuple(shape)}")
    for axis, s, limit, p in zip(axis_names, spatial, max_size, patch):
        if s > limit:
            raise ValueError(f"{name} {axis} {s} is larger than the model's {limit} (shape {tuple(shape)})")
        if s % p or s == 0:
            raise ValueError(f"{name} {axis} {s} must be a positive multiple of the patch size {p}")
    return spatial


def image_geometry(
    image_size: int | Sequence[int], patch_size: int | Sequence[int], patch_name: str = "patch_size"
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``(h, w)`` size and ``(ph, pw)`` patch of an image model, validated (``patch_name`` names the
    patch argument in errors)."""
    size, patch = as_tuple(image_size, 2, "image_size"), as_tuple(patch_size, 2, patch_name)
    check_divisible(size, patch, "image_size", patch_name)
    return size, patch


def video_geometry(
    image_size: int | Sequence[int], image_patch_size: int | Sequence[int], frames: int, frame_patch_size: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The ``(frames, h, w)`` size and ``(pt, ph, pw)`` tubelet of a video model, validated.

    Raises naming the argument at fault (e.g. frames not divisible by frame_patch_size).
    """
    t = as_tuple(frames, 1, "frames")[0]
    pt = as_tuple(frame_patch_size, 1, "frame_patch_size")[0]
    (h, w), (ph, pw) = image_geometry(image_size, image_patch_size, "image_patch_size")
    if t % pt:
        raise ValueError(f"frames {t} must be divisible by frame_patch_size {pt}")
    return (t, h, w), (pt, ph, pw)


def drop_path_rates(rate: float | Sequence[float], depth: int) -> list[float]:
    """One stochastic-depth rate per block: a sequence as given, a number for every block."""
    if isinstance(rate, (int, float)):
        return [float(rate)] * depth
    if len(rate) != depth:
        raise ValueError(f"drop_path must be a number or one rate per block ({depth}), got {len(rate)} rates")
    return [float(r) for r in rate]
