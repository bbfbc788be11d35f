"""XCiT (El-Nouby et al., 2021): the argument checks and the layer-scale start that both backends make.

The two stacks are CaiT's (a patch stack, then class-attention blocks, both with layer dropout), so the checks they
share are :mod:`vit_parity.core.facts.cait`'s, and so is the layer-scale start.
"""

from __future__ import annotations

from vit_parity.core.facts import cait

__all__ = ["check_arguments", "layer_scale_init"]


def layer_scale_init(depth: int) -> float:
    """Where every layer-scale ``gamma`` of an XCiT with ``depth`` cross-covariance blocks starts: CaiT's rule by
    the depth of the patch stack (0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 beyond), one value for the whole model,
    class-attention blocks included. (The reference starts its layer ``i`` (from 1) at 0.1 up to 18 and 1e-6
    beyond, by the layer's index in its own stack; the same for any stack of at most 18 blocks.)"""
    return cait.layer_scale_init(depth)


def check_arguments(*, depth: int, cls_depth: int, layer_dropout: float, local_patch_kernel_size: int) -> None:
    """Raise naming the argument at fault: CaiT's checks of ``depth``, ``cls_depth`` and ``layer_dropout``, and
    ``local_patch_kernel_size`` an odd positive int (the depthwise convolutions pad ``k // 2`` on each side, which
    keeps the patch grid only for an odd ``k``)."""
    cait.check_arguments(
        depth=depth, cls_depth=cls_depth, layer_dropout=layer_dropout, depth_means="cross-covariance blocks"
    )
    k = local_patch_kernel_size
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(
            f"local_patch_kernel_size must be an odd int >= 1 (the depthwise convolutions pad k // 2 on each side "
            f"to keep the patch grid), got {k!r}"
        )
