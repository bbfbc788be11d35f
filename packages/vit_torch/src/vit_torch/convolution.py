"""Convolution pieces shared by the convolutional and hybrid models, on channels-first maps ``(b, c, h, w)``.

Mirrors ``vit_flax.convolution`` (channels-last there): same classes, arguments and attribute paths, so that a
checkpoint converts by module kind (``conv``, ``batchnorm``).

- :class:`DepthwiseConv`: a 2-D convolution of each channel with its own kernel (``groups = channels``), zero
  padding ``kernel_size // 2`` on every side (an odd kernel keeps the map's size at stride 1).
- :class:`BatchNorm`: batch normalization over ``(b, h, w)`` per channel ("Batch Normalization", Ioffe and Szegedy,
  2015), with torch's conventions: ``momentum`` is the weight of the new batch in the running statistics, and the
  running variance is updated with the unbiased batch variance.
"""

from __future__ import annotations

from torch import nn


class DepthwiseConv(nn.Conv2d):
    """Depthwise 2-D convolution (as in MobileNets, Howard et al., 2017): ``channels`` in and out, one
    ``kernel_size x kernel_size`` kernel per channel, ``stride``, zero padding ``kernel_size // 2``, a bias."""

    def __init__(self, channels: int, kernel_size: int = 3, *, stride: int = 1, bias: bool = True) -> None:
        super().__init__(
            channels, channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=channels, bias=bias
        )


class BatchNorm(nn.BatchNorm2d):
    """Batch normalization of ``(b, channels, h, w)`` maps ("Batch Normalization", Ioffe and Szegedy, 2015).

    In training it normalizes with the batch's statistics (biased variance) and updates the running ones:
    ``running = (1 - momentum) * running + momentum * batch`` (the unbiased variance for ``running_var``); in eval
    mode it normalizes with the running statistics. ``momentum`` and ``eps`` are torch's (0.1, 1e-5).
    """

    def __init__(self, channels: int, *, momentum: float = 0.1, eps: float = 1e-5) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm momentum must be a number in [0, 1], got {momentum!r}")
        super().__init__(channels, eps=eps, momentum=float(momentum))
