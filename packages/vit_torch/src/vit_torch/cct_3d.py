"""CCT 3D: "Escaping the Big Data Paradigm with Compact Transformers" (Hassani et al., 2021) on videos."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import cct
from vit_parity.core.features import Features
from vit_parity.core.posemb import sinusoidal_table
from vit_parity.core.validate import check_input
from vit_torch.layers import Transformer, crop_grid, with_features
from vit_torch.vit_3d import VIDEO_AXES

__all__ = ["CCT", "cct_2", "cct_4", "cct_6", "cct_7", "cct_8", "cct_14", "cct_16"]


class Tokenizer(nn.Module):
    """Conv3d (no bias), ReLU, MaxPool3d, ``n_conv_layers`` times; ``(b, c, t, h, w)`` to tokens ``(b, n, dim)``.

    Laid out by a :class:`vit_parity.core.facts.cct.TokenizerGeometry`. Returns the tokens in ``(t, h, w)``
    row-major order and their grid.
    """

    def __init__(self, geometry: cct.TokenizerGeometry) -> None:
        super().__init__()
        g = geometry
        self.convs = nn.ModuleList(
            nn.Conv3d(c_in, c_out, g.kernel, stride=g.stride, padding=g.padding, bias=False)
            for c_in, c_out in itertools.pairwise(g.channels)
        )
        self.kernel, self.stride, self.padding = g.kernel, g.stride, g.padding
        self.pool_kernel, self.pool_stride, self.pool_padding = g.pool_kernel, g.pool_stride, g.pool_padding
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight)

    def grid(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an input of spatial ``size`` ``(t, h, w)``."""
        return cct.token_grid(
            size, len(self.convs), self.kernel, self.stride, self.padding,
            self.pool_kernel, self.pool_stride, self.pool_padding,
        )  # fmt: skip

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        for conv in self.convs:
            x = F.max_pool3d(F.relu(conv(x)), self.pool_kernel, self.pool_stride, self.pool_padding)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


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
        geometry = cct.geometry(
            img_size=img_size, num_frames=num_frames, embedding_dim=embedding_dim, n_input_channels=n_input_channels,
            n_conv_layers=n_conv_layers, frame_stride=frame_stride, frame_kernel_size=frame_kernel_size,
            frame_padding=frame_padding, frame_pooling_kernel_size=frame_pooling_kernel_size,
            frame_pooling_stride=frame_pooling_stride, frame_pooling_padding=frame_pooling_padding,
            kernel_size=kernel_size, stride=stride, padding=padding, pooling_kernel_size=pooling_kernel_size,
            pooling_stride=pooling_stride, pooling_padding=pooling_padding, num_layers=num_layers,
            num_heads=num_heads, positional_embedding=positional_embedding,
            stochastic_depth_rate=stochastic_depth_rate,
        )  # fmt: skip
        self.size, self.grid = geometry.size, geometry.grid
        self.channels = n_input_channels
        self.tokenizer = Tokenizer(geometry.tokenizer)
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
        self.transformer = Transformer(
            embedding_dim, num_layers, heads, dim_head, int(embedding_dim * mlp_ratio), dropout_rate,
            drop_path=geometry.rates, attn_dropout=attention_dropout, post_norm=True,
        )  # fmt: skip
        self.attention_pool = nn.Linear(embedding_dim, 1)
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(
        self, video: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        check_input(
            video.shape, name="video", channels_last=False, channels=self.channels,
            max_size=self.size, patch=(1, 1, 1), axis_names=VIDEO_AXES,
        )  # fmt: skip
        cct.check_tokens(video.shape, self.tokenizer.grid(tuple(video.shape[2:])))
        x, grid = self.tokenizer(video)
        if self.positional_emb is not None:
            x = x + crop_grid(self.positional_emb, self.grid, grid)
        x = self.dropout(x)
        x = self.transformer(x, features=features)
        weights = self.attention_pool(x).softmax(dim=1)  # (b, n, 1)
        x = (weights * x).sum(dim=1)
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.fc(x), features)


def cct_2(**kwargs: Any) -> CCT:
    """CCT-2: the ``cct_2`` row of :data:`vit_parity.core.facts.cct.PRESETS`; kernel, stride, padding and
    other keyword arguments as :func:`vit_parity.core.facts.cct.preset` takes them."""
    return CCT(**cct.preset("cct_2", **kwargs))


def cct_4(**kwargs: Any) -> CCT:
    """CCT-4: as :func:`cct_2`, with the ``cct_4`` preset."""
    return CCT(**cct.preset("cct_4", **kwargs))


def cct_6(**kwargs: Any) -> CCT:
    """CCT-6: as :func:`cct_2`, with the ``cct_6`` preset."""
    return CCT(**cct.preset("cct_6", **kwargs))


def cct_7(**kwargs: Any) -> CCT:
    """CCT-7: as :func:`cct_2`, with the ``cct_7`` preset."""
    return CCT(**cct.preset("cct_7", **kwargs))


def cct_8(**kwargs: Any) -> CCT:
    """CCT-8: as :func:`cct_2`, with the ``cct_8`` preset."""
    return CCT(**cct.preset("cct_8", **kwargs))


def cct_14(**kwargs: Any) -> CCT:
    """CCT-14: as :func:`cct_2`, with the ``cct_14`` preset."""
    return CCT(**cct.preset("cct_14", **kwargs))


def cct_16(**kwargs: Any) -> CCT:
    """CCT-16: as :func:`cct_2`, with the ``cct_16`` preset."""
    return CCT(**cct.preset("cct_16", **kwargs))
