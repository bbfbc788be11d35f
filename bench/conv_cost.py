"""Where flax's convolutions cost more than torch's on CPU: one convolution's forward and backward pass, timed alone.

``python bench/conv_cost.py`` prints the median milliseconds (5 rounds of 20 steps, after a warm-up) of, in torch
and in flax (jitted), on the shapes of ``bench/archs.py``'s configs:

- XCiT's depthwise 3x3 convolution on a batch of 4 maps of 8x8 patches and 192 channels, beside one feed-forward
  block of the same model (dim 192, MLP 768, 64 tokens) for scale;
- CCT 3D's first tokenizer convolution (3 to 64 channels, a 3x7x7 kernel, stride (1, 2, 2)) on 4 clips of 8
  frames of 32x32.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from vit_flax.convolution import DepthwiseConv as FlaxDepthwise
from vit_flax.layers import FeedForward as FlaxFeedForward
from vit_torch.convolution import DepthwiseConv as TorchDepthwise
from vit_torch.layers import FeedForward as TorchFeedForward


def median_ms(step: Callable[[], None], rounds: int = 5, steps: int = 20) -> float:
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times) * 1e3


def torch_step(module: torch.nn.Module, x: np.ndarray) -> Callable[[], None]:
    inp = torch.from_numpy(x).requires_grad_()
    return lambda: module(inp).sum().backward()


def flax_step(module: nnx.Module, x: np.ndarray) -> Callable[[], None]:
    grad = nnx.jit(nnx.grad(lambda m, v: m(v).sum()))
    inp = jnp.asarray(x)
    return lambda: jax.block_until_ready(grad(module, inp))


def main() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((4, 8, 8, 192), dtype=np.float32)  # channels-last
    tokens = rng.standard_normal((4, 64, 192), dtype=np.float32)
    clips = rng.standard_normal((4, 8, 32, 32, 3), dtype=np.float32)
    conv3d_torch = torch.nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
    conv3d_flax = nnx.Conv(
        3, 64, (3, 7, 7), strides=(1, 2, 2), padding=((1, 1), (3, 3), (3, 3)), use_bias=False, rngs=nnx.Rngs(0)
    )
    rows = [
        ("depthwise 3x3, (4, 192, 8, 8)", torch_step(TorchDepthwise(192, 3), maps.transpose(0, 3, 1, 2).copy()),
         flax_step(FlaxDepthwise(192, 3, rngs=nnx.Rngs(0)), maps)),
        ("feed-forward 192-768-192, (4, 64, 192)", torch_step(TorchFeedForward(192, 768), tokens),
         flax_step(FlaxFeedForward(192, 768, rngs=nnx.Rngs(0)), tokens)),
        ("conv3d 3->64 3x7x7, (4, 3, 8, 32, 32)", torch_step(conv3d_torch, clips.transpose(0, 4, 1, 2, 3).copy()),
         flax_step(conv3d_flax, clips)),
    ]  # fmt: skip
    print(f"forward + backward, median ms ({torch.get_num_threads()} torch threads)")
    print(f"{'':42} {'torch':>8} {'flax':>8}")
    for name, t, f in rows:
        print(f"{name:42} {median_ms(t):8.2f} {median_ms(f):8.2f}")


if __name__ == "__main__":
    main()
