"""CCT 3D: "Escaping the Big Data Paradigm with Compact Transformers" (Hassani et al., 2021) on videos."""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Attention, DropPath, FeedForward, Intermediates, crop_grid, default_rngs, layer_norm
from vit_flax.vit_3d import VIDEO_AXES
from vit_parity.config import records_config
from vit_parity.posemb import sinusoidal_table
from vit_parity.validate import as_tuple, check_choice, check_input

__all__ = ["CCT", "cct_2", "cct_4", "cct_6", "cct_7", "cct_8", "cct_14", "cct_16"]

Array = jax.Array
POSITIONAL_EMBEDDINGS = ("learnable", "sine", "none")
Triple = tuple[int, int, int]


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window (floor mode) along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


class Tokenizer(nnx.Module):
    """Conv3d (no bias), ReLU, MaxPool3d, ``n_conv_layers`` times; ``(b, t, h, w, c)`` to tokens ``(b, n, dim)``.

    Convolutions and pools take torch's explicit padding (pools pad with -inf, as torch does). Returns the
    tokens in ``(t, h, w)`` row-major order and their grid.
    """

    def __init__(
        self,
        channels: list[int],
        kernel: Triple,
        stride: Triple,
        padding: Triple,
        pool_kernel: Triple,
        pool_stride: Triple,
        pool_padding: Triple,
        *,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        kaiming = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")  # torch's kaiming_normal_
        self.convs = nnx.List(
            [
                nnx.Conv(
                    c_in,
                    c_out,
                    kernel,
                    stride,
                    padding=[(p, p) for p in padding],
                    use_bias=False,
                    kernel_init=kaiming,
                    dtype=dtype,
                    rngs=rngs,
                )
                for c_in, c_out in itertools.pairwise(channels)
            ]
        )
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.pool_kernel, self.pool_stride, self.pool_padding = pool_kernel, pool_stride, pool_padding

    def grid(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an input of spatial ``size`` ``(t, h, w)``."""
        for _ in self.convs:
            size = tuple(conv_out(*a) for a in zip(size, self.kernel, self.stride, self.padding))
            size = tuple(conv_out(*a) for a in zip(size, self.pool_kernel, self.pool_stride, self.pool_padding))
        return size

    def __call__(self, x: Array) -> tuple[Array, tuple[int, ...]]:
        for conv in self.convs:
            x = nnx.max_pool(
                jax.nn.relu(conv(x)), self.pool_kernel, self.pool_stride, [(p, p) for p in self.pool_padding]
            )
        return x.reshape(x.shape[0], -1, x.shape[-1]), tuple(x.shape[1:-1])


class EncoderLayer(nnx.Module):
    """CCT's encoder layer: ``x + drop_path(attn(x))`` (pre-norm attention), then the stream itself is
    normalized, then ``x + drop_path(ff(x))`` with an MLP that has no norm of its own."""

    def __init__(self, attn: Attention, norm: nnx.LayerNorm, ff: FeedForward, drop_path: DropPath) -> None:
        self.attn = attn
        self.norm = norm
        self.ff = ff
        self.drop_path = drop_path

    def __call__(self, x: Array, intermediates: Intermediates | None = None) -> Array:
        x = x + self.drop_path(self.attn(x, None, intermediates))
        x = self.norm(x)
        return x + self.drop_path(self.ff(x))


@records_config
class CCT(nnx.Module):
    """Compact Convolutional Transformer (Hassani et al., 2021) for videos: a Conv3d tokenizer, a
    transformer with stochastic depth, and sequence pooling (attention-weighted mean of the tokens).

    ``positional_embedding`` is ``'learnable'``, ``'sine'`` (1-D sinusoidal over the flattened token
    sequence) or ``'none'``. Takes ``video`` of shape ``(b, t, h, w, n_input_channels)`` with
    ``t <= num_frames`` and ``h, w <= img_size``; smaller clips use the matching part of the token grid.
    ``frame_padding`` and ``frame_pooling_padding`` default to half their kernel. Convolutions start
    from Kaiming-normal weights; the Linear layers keep the framework's default initialization.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        num_frames: int = 8,
        embedding_dim: int = 768,
        n_input_channels: int = 3,
        n_conv_layers: int = 1,
        frame_stride: int = 1,
        frame_kernel_size: int = 3,
        frame_padding: int | None = None,
        frame_pooling_kernel_size: int = 1,
        frame_pooling_stride: int = 1,
        frame_pooling_padding: int | None = None,
        kernel_size: int = 7,
        stride: int = 2,
        padding: int = 3,
        pooling_kernel_size: int = 3,
        pooling_stride: int = 2,
        pooling_padding: int = 1,
        *,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        positional_embedding: str = "sine",
        dropout_rate: float = 0.0,
        attention_dropout: float = 0.1,
        stochastic_depth_rate: float = 0.1,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        check_choice(positional_embedding, POSITIONAL_EMBEDDINGS, "positional_embedding")
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim {embedding_dim} must be divisible by num_heads {num_heads}")
        frame_padding = frame_kernel_size // 2 if frame_padding is None else frame_padding
        if frame_pooling_padding is None:
            frame_pooling_padding = frame_pooling_kernel_size // 2
        self.size = (as_tuple(num_frames, 1, "num_frames")[0], *as_tuple(img_size, 2, "img_size"))
        self.channels = n_input_channels
        self.tokenizer = Tokenizer(
            [n_input_channels] + [64] * (n_conv_layers - 1) + [embedding_dim],
            (frame_kernel_size, kernel_size, kernel_size),
            (frame_stride, stride, stride),
            (frame_padding, padding, padding),
            (frame_pooling_kernel_size, pooling_kernel_size, pooling_kernel_size),
            (frame_pooling_stride, pooling_stride, pooling_stride),
            (frame_pooling_padding, pooling_padding, pooling_padding),
            dtype=dtype,
            rngs=rngs,
        )
        self.grid = self.tokenizer.grid(self.size)
        if min(self.grid) < 1:
            raise ValueError(f"the tokenizer leaves no tokens for num_frames x img_size {self.size} (grid {self.grid})")
        n = math.prod(self.grid)
        self.positional_embedding = positional_embedding
        self.positional_emb = (
            nnx.Param(jax.random.normal(rngs.params(), (1, n, embedding_dim)) * 0.2)
            if positional_embedding == "learnable"
            else None
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        heads, dim_head = num_heads, embedding_dim // num_heads
        rates = [stochastic_depth_rate * i / (num_layers - 1) if num_layers > 1 else 0.0 for i in range(num_layers)]
        self.blocks = nnx.List(
            [
                EncoderLayer(
                    Attention(
                        embedding_dim,
                        heads,
                        dim_head,
                        dropout_rate,
                        attn_dropout=attention_dropout,
                        dtype=dtype,
                        rngs=rngs,
                    ),
                    layer_norm(embedding_dim, 1e-5, rngs, dtype),
                    FeedForward(
                        embedding_dim, int(embedding_dim * mlp_ratio), dropout_rate, norm=False, dtype=dtype, rngs=rngs
                    ),
                    DropPath(rate, rngs=rngs),
                )
                for rate in rates
            ]
        )
        self.norm = layer_norm(embedding_dim, 1e-5, rngs, dtype)
        self.attention_pool = nnx.Linear(embedding_dim, 1, dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(embedding_dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, video: Array, intermediates: Intermediates | None = None) -> Array:
        check_input(
            video.shape, name="video", channels_last=True, channels=self.channels,
            max_size=self.size, patch=(1, 1, 1), axis_names=VIDEO_AXES,
        )  # fmt: skip
        if min(self.tokenizer.grid(tuple(video.shape[1:-1]))) < 1:
            raise ValueError(f"video of shape {tuple(video.shape)} is too small: the tokenizer leaves no tokens")
        x, grid = self.tokenizer(video)
        if self.positional_embedding == "learnable":
            x = x + crop_grid(self.positional_emb[...], self.grid, grid).astype(x.dtype)
        elif self.positional_embedding == "sine":
            table = jnp.asarray(sinusoidal_table(math.prod(self.grid), x.shape[-1]))[None]
            x = x + crop_grid(table, self.grid, grid).astype(x.dtype)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, intermediates)
            if intermediates is not None:
                intermediates.blocks.append(x)
        x = self.norm(x)
        weights = jax.nn.softmax(self.attention_pool(x), axis=1)  # (b, n, 1)
        return self.fc((weights * x).sum(axis=1))


def _cct(
    num_layers: int,
    num_heads: int,
    mlp_ratio: float,
    embedding_dim: int,
    *,
    kernel_size: int = 3,
    stride: int | None = None,
    padding: int | None = None,
    **kwargs: Any,
) -> CCT:
    stride = max(1, kernel_size // 2 - 1) if stride is None else stride
    padding = max(1, kernel_size // 2) if padding is None else padding
    return CCT(
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        embedding_dim=embedding_dim,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        **kwargs,
    )


def cct_2(**kwargs: Any) -> CCT:
    """CCT-2: 2 layers, 2 heads, mlp ratio 1, dim 128; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments (``rngs`` too) go to :class:`CCT`."""
    return _cct(2, 2, 1, 128, **kwargs)


def cct_4(**kwargs: Any) -> CCT:
    """CCT-4: 4 layers, 2 heads, mlp ratio 1, dim 128; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments (``rngs`` too) go to :class:`CCT`."""
    return _cct(4, 2, 1, 128, **kwargs)


def cct_6(**kwargs: Any) -> CCT:
    """CCT-6: 6 layers, 4 heads, mlp ratio 2, dim 256; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments (``rngs`` too) go to :class:`CCT`."""
    return _cct(6, 4, 2, 256, **kwargs)


def cct_7(**kwargs: Any) -> CCT:
    """CCT-7: 7 layers, 4 heads, mlp ratio 2, dim 256; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments (``rngs`` too) go to :class:`CCT`."""
    return _cct(7, 4, 2, 256, **kwargs)


def cct_8(**kwargs: Any) -> CCT:
    """CCT-8: 8 layers, 4 heads, mlp ratio 2, dim 256; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments (``rngs`` too) go to :class:`CCT`."""
    return _cct(8, 4, 2, 256, **kwargs)


def cct_14(**kwargs: Any) -> CCT:
    """CCT-14: 14 layers, 6 heads, mlp ratio 3, dim 384; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments (``rngs`` too) go to :class:`CCT`."""
    return _cct(14, 6, 3, 384, **kwargs)


def cct_16(**kwargs: Any) -> CCT:
    """CCT-16: 16 layers, 6 heads, mlp ratio 3, dim 384; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments (``rngs`` too) go to :class:`CCT`."""
    return _cct(16, 6, 3, 384, **kwargs)
