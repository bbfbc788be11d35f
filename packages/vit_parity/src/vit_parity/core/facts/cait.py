"""CaiT (Touvron et al., 2021): the argument checks and the layer-scale start that both backends make."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_arguments", "check_keep_layers", "layer_scale_init"]


def layer_scale_init(depth: int) -> float:
    """Where every layer-scale ``gamma`` of a CaiT with ``depth`` patch blocks starts, as in section 2 of the paper:
    0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 beyond (one value for the whole model, class-attention blocks included).
    """
    if depth <= 18:
        return 0.1
    if depth <= 24:
        return 1e-5
    return 1e-6


def check_arguments(
    *, depth: int, cls_depth: int, layer_dropout: float, depth_means: str = "patch self-attention blocks"
) -> None:
    """Raise naming the argument at fault: ``depth`` at least 0, ``cls_depth`` at least 1 (the class token must read
    the patches at least once), ``layer_dropout`` a probability in [0, 1). ``depth_means`` says what ``depth``
    counts (XCiT's are cross-covariance blocks)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth ({depth_means}) must be an int >= 0, got {depth!r}")
    if isinstance(cls_depth, bool) or not isinstance(cls_depth, int) or cls_depth < 1:
        raise ValueError(
            f"cls_depth (class-attention blocks) must be an int >= 1: the class token reads the patches there, "
            f"got {cls_depth!r}"
        )
    if isinstance(layer_dropout, bool) or not isinstance(layer_dropout, (int, float)) or not 0 <= layer_dropout < 1:
        raise ValueError(f"layer_dropout must be a probability in [0, 1), got {layer_dropout!r}")


def check_keep_layers(shape: Sequence[int], *, depth: int, cls_depth: int) -> None:
    """``keep_layers`` holds one flag per block: the ``depth`` patch blocks, then the ``cls_depth`` class blocks."""
    n = depth + cls_depth
    if tuple(shape) != (n,):
        raise ValueError(
            f"keep_layers must hold one boolean per block, shape ({n},) (depth {depth} + cls_depth {cls_depth}), "
            f"got shape {tuple(shape)}"
        )
