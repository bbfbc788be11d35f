"""Convolution pieces shared by the convolutional and hybrid models, on channels-last maps ``(b, h, w, c)``.

Mirrors ``vit_torch.convolution`` (channels-first there): same classes, arguments and attribute paths, so that a
checkpoint converts by module kind (``conv``, ``batchnorm``).

- :class:`DepthwiseConv`: a 2-D convolution of each channel with its own kernel (``feature_group_count =
  channels``), explicit zero padding ``kernel_size // 2`` on every side, as torch's (never 'SAME').
- :class:`BatchNorm`: batch normalization over ``(b, h, w)`` per channel ("Batch Normalization", Ioffe and Szegedy,
  2015) that takes torch's arguments and computes torch's numbers, running statistics included.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


class DepthwiseConv(nnx.Conv):
    """Depthwise 2-D convolution (as in MobileNets, Howard et al., 2017): ``channels`` in and out, one
    ``kernel_size x kernel_size`` kernel per channel, ``stride``, zero padding ``kernel_size // 2``, a bias."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        bias: bool = True,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        pad = kernel_size // 2
        super().__init__(
            channels, channels, (kernel_size, kernel_size), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
            feature_group_count=channels, use_bias=bias, dtype=dtype, rngs=rngs,
        )  # fmt: skip


class BatchNorm(nnx.BatchNorm):
    """Batch normalization of ``(b, h, w, channels)`` maps ("Batch Normalization", Ioffe and Szegedy, 2015), with
    torch's arguments and numbers.

    ``momentum`` is torch's (the weight of the new batch; ``nnx.BatchNorm`` holds ``1 - momentum``), ``eps`` too.
    In training (``use_running_average=False``: ``model.train()``) it normalizes with the batch's mean and biased
    variance (two-pass, in at least float32) and updates the running statistics as torch does, with the unbiased
    variance for ``var``; ``model.eval()`` normalizes with the running statistics. The output has the module's
    ``dtype``, else the input's. Parameters and statistics are ``nnx.BatchNorm``'s (``scale``, ``bias``, ``mean``,
    ``var``), so checkpoints convert by the 'batchnorm' rule.
    """

    def __init__(
        self,
        channels: int,
        *,
        momentum: float = 0.1,
        eps: float = 1e-5,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm momentum must be a number in [0, 1], got {momentum!r}")
        super().__init__(
            channels, use_running_average=False, momentum=1.0 - momentum, epsilon=eps, use_fast_variance=False,
            dtype=dtype, rngs=rngs,
        )  # fmt: skip

    def __call__(self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None) -> Array:
        if mask is not None:
            raise ValueError("BatchNorm takes no mask")
        running = self.use_running_average if use_running_average is None else use_running_average
        out_dtype = self.dtype or x.dtype
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        axes = tuple(range(x.ndim - 1))
        if running:
            mean, var = self.mean[...], self.var[...]
        else:
            n = math.prod(x.shape[:-1])
            if n < 2:
                raise ValueError(
                    f"BatchNorm in training needs more than one value per channel, got input shape {tuple(x.shape)}"
                )
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            keep = self.momentum  # the running statistics' share: 1 - torch's momentum
            self.mean[...] = jax.lax.stop_gradient(keep * self.mean[...] + (1 - keep) * mean)
            self.var[...] = jax.lax.stop_gradient(keep * self.var[...] + (1 - keep) * var * (n / (n - 1)))
        scale = jax.lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            scale = scale * self.scale[...]
        y = (xf - mean) * scale
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(out_dtype)
