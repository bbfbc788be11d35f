"""CCT 3D: "Escaping the Big Data Paradigm with Compact Transformers" (Hassani et al., 2021) on videos."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.config import records_config
from vit_parity.posemb import sinusoidal_table
from vit_parity.validate import as_tuple, check_choice, check_input
from vit_torch.layers import Attention, DropPath, FeedForward, Intermediates, crop_grid
from vit_torch.vit_3d import VIDEO_AXES

__all__ = ["CCT", "cct_2", "cct_4", "cct_6", "cct_7", "cct_8", "cct_14", "cct_16"]

POSITIONAL_EMBEDDINGS = ("learnable", "sine", "none")
Triple = tuple[int, int, int]


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window (floor mode) along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


class Tokenizer(nn.Module):
    """Conv3d (no bias), ReLU, MaxPool3d, ``n_conv_layers`` times; ``(b, c, t, h, w)`` to tokens ``(b, n, dim)``.

    Returns the tokens in ``(t, h, w)`` row-major order and their grid.
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
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
            for c_in, c_out in itertools.pairwise(channels)
        )
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.pool_kernel, self.pool_stride, self.pool_padding = pool_kernel, pool_stride, pool_padding
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight)

    def grid(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an input of spatial ``size`` ``(t, h, w)``."""
        for _ in self.convs:
            size = tuple(conv_out(*a) for a in zip(size, self.kernel, self.stride, self.padding))
            size = tuple(conv_out(*a) for a in zip(size, self.pool_kernel, self.pool_stride, self.pool_padding))
        return size

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        for conv in self.convs:
            x = F.max_pool3d(F.relu(conv(x)), self.pool_kernel, self.pool_stride, self.pool_padding)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


class EncoderLayer(nn.Module):
    """CCT's encoder layer: ``x + drop_path(attn(x))`` (pre-norm attention), then the stream itself is
    normalized, then ``x + drop_path(ff(x))`` with an MLP that has no norm of its own."""

    def __init__(self, attn: Attention, norm: nn.LayerNorm, ff: FeedForward, drop_path: DropPath) -> None:
        super().__init__()
        self.attn = attn
        self.norm = norm
        self.ff = ff
        self.drop_path = drop_path

    def forward(self, x: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(x, None, intermediates))
        x = self.norm(x)
        return x + self.drop_path(self.ff(x))


@records_config
class CCT(nn.Module):
    """Compact Convolutional Transformer (Hassani et al., 2021) for videos: a Conv3d tokenizer, a
    transformer with stochastic depth, and sequence pooling (attention-weighted mean of the tokens).

    ``positional_embedding`` is ``'learnable'``, ``'sine'`` (1-D sinusoidal over the flattened token
    sequence) or ``'none'``. Takes ``video`` of shape ``(b, n_input_channels, t, h, w)`` with
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
    ) -> None:
        super().__init__()
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
        )
        self.grid = self.tokenizer.grid(self.size)
        if min(self.grid) < 1:
            raise ValueError(f"the tokenizer leaves no tokens for num_frames x img_size {self.size} (grid {self.grid})")
        n = math.prod(self.grid)
        if positional_embedding == "learnable":
            self.positional_emb = nn.Parameter(torch.randn(1, n, embedding_dim) * 0.2)
        elif positional_embedding == "sine":
            table = torch.from_numpy(sinusoidal_table(n, embedding_dim).copy())[None]
            self.register_buffer("positional_emb", table, persistent=False)
        else:
            self.positional_emb = None
        self.dropout = nn.Dropout(dropout_rate)
        heads, dim_head = num_heads, embedding_dim // num_heads
        rates = [stochastic_depth_rate * i / (num_layers - 1) if num_layers > 1 else 0.0 for i in range(num_layers)]
        self.blocks = nn.ModuleList(
            EncoderLayer(
                Attention(embedding_dim, heads, dim_head, dropout_rate, attn_dropout=attention_dropout),
                nn.LayerNorm(embedding_dim),
                FeedForward(embedding_dim, int(embedding_dim * mlp_ratio), dropout_rate, norm=False),
                DropPath(rate),
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embedding_dim)
        self.attention_pool = nn.Linear(embedding_dim, 1)
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(self, video: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        check_input(
            video.shape, name="video", channels_last=False, channels=self.channels,
            max_size=self.size, patch=(1, 1, 1), axis_names=VIDEO_AXES,
        )  # fmt: skip
        if min(self.tokenizer.grid(tuple(video.shape[2:]))) < 1:
            raise ValueError(f"video of shape {tuple(video.shape)} is too small: the tokenizer leaves no tokens")
        x, grid = self.tokenizer(video)
        if self.positional_emb is not None:
            x = x + crop_grid(self.positional_emb, self.grid, grid)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, intermediates)
            if intermediates is not None:
                intermediates.blocks.append(x)
        x = self.norm(x)
        weights = self.attention_pool(x).softmax(dim=1)  # (b, n, 1)
        return self.fc((weights * x).sum(dim=1))


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
    derived from it unless given. Other keyword arguments go to :class:`CCT`."""
    return _cct(2, 2, 1, 128, **kwargs)


def cct_4(**kwargs: Any) -> CCT:
    """CCT-4: 4 layers, 2 heads, mlp ratio 1, dim 128; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments go to :class:`CCT`."""
    return _cct(4, 2, 1, 128, **kwargs)


def cct_6(**kwargs: Any) -> CCT:
    """CCT-6: 6 layers, 4 heads, mlp ratio 2, dim 256; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments go to :class:`CCT`."""
    return _cct(6, 4, 2, 256, **kwargs)


def cct_7(**kwargs: Any) -> CCT:
    """CCT-7: 7 layers, 4 heads, mlp ratio 2, dim 256; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments go to :class:`CCT`."""
    return _cct(7, 4, 2, 256, **kwargs)


def cct_8(**kwargs: Any) -> CCT:
    """CCT-8: 8 layers, 4 heads, mlp ratio 2, dim 256; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments go to :class:`CCT`."""
    return _cct(8, 4, 2, 256, **kwargs)


def cct_14(**kwargs: Any) -> CCT:
    """CCT-14: 14 layers, 6 heads, mlp ratio 3, dim 384; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments go to :class:`CCT`."""
    return _cct(14, 6, 3, 384, **kwargs)


def cct_16(**kwargs: Any) -> CCT:
    """CCT-16: 16 layers, 6 heads, mlp ratio 3, dim 384; kernel_size 3 unless given, stride and padding
    derived from it unless given. Other keyword arguments go to :class:`CCT`."""
    return _cct(16, 6, 3, 384, **kwargs)
