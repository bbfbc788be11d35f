"""CCT: "Escaping the Big Data Paradigm with Compact Transformers" (Hassani et al., 2021).

:class:`CompactTransformer` is the body on inputs of any number of spatial axes (a convolutional tokenizer, the
positional embedding, a post-norm transformer with stochastic depth, sequence pooling and the head);
:class:`CCT` reads it on images and ``cct_3d.CCT`` on videos.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import cct
from vit_parity.core.features import Features
from vit_parity.core.posemb import sinusoidal_table
from vit_parity.core.validate import check_input
from vit_torch.layers import Linear, Transformer, crop_grid, with_features
from vit_torch.vit import IMAGE_AXES

__all__ = ["CCT", "cct_2", "cct_4", "cct_6", "cct_7", "cct_8", "cct_14", "cct_16"]

_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOLS: dict[int, Callable[..., Tensor]] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class Tokenizer(nn.Module):
    """Convolution (no bias), ReLU and max pool over every spatial axis, ``n_conv_layers`` times: ``(b, c,
    *spatial)`` to tokens ``(b, n, dim)`` (Conv2d and MaxPool2d on images, Conv3d and MaxPool3d on videos).

    Laid out by a :class:`vit_parity.core.facts.cct.TokenizerGeometry`. Returns the tokens in row-major grid order
    and their grid.
    """

    def __init__(self, geometry: cct.TokenizerGeometry) -> None:
        super().__init__()
        g = geometry
        conv = _CONVS[len(g.kernel)]
        self.convs = nn.ModuleList(
            conv(c_in, c_out, g.kernel, stride=g.stride, padding=g.padding, bias=False)
            for c_in, c_out in itertools.pairwise(g.channels)
        )
        self.kernel, self.stride, self.padding = g.kernel, g.stride, g.padding
        self.pool_kernel, self.pool_stride, self.pool_padding = g.pool_kernel, g.pool_stride, g.pool_padding
        for layer in self.convs:
            nn.init.kaiming_normal_(layer.weight)

    def grid(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an input of spatial ``size`` (``(h, w)`` or ``(t, h, w)``)."""
        return cct.token_grid(
            size, len(self.convs), self.kernel, self.stride, self.padding,
            self.pool_kernel, self.pool_stride, self.pool_padding,
        )  # fmt: skip

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        pool = _POOLS[len(self.kernel)]
        for conv in self.convs:
            x = pool(F.relu(conv(x)), self.pool_kernel, self.pool_stride, self.pool_padding)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


class CompactTransformer(nn.Module):
    """The CCT body (Hassani et al., 2021) on inputs of any number of spatial axes: a convolutional tokenizer,
    the positional embedding, a transformer whose blocks normalize the stream after the attention residual, with
    stochastic depth rising linearly over the layers, sequence pooling (a softmax-weighted mean of the tokens)
    and a linear head. ``cct.CCT`` (images) and ``cct_3d.CCT`` (videos) differ only in how they read their
    geometry.

    ``positional_embedding`` is ``'learnable'`` (a parameter starting at ``0.2`` times a standard normal),
    ``'sine'`` (the fixed 1-D sinusoid over the flattened token sequence, not saved) or ``'none'``. Smaller
    inputs use the matching part of the token grid.
    """

    def __init__(
        self,
        *,
        geometry: cct.Geometry,
        axis_names: Sequence[str],
        input_name: str,
        n_input_channels: int,
        embedding_dim: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        positional_embedding: str,
        dropout_rate: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.size, self.grid = geometry.size, geometry.grid
        self.axis_names, self.input_name = tuple(axis_names), input_name
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
        self.attention_pool = Linear(embedding_dim, 1)
        self.fc = Linear(embedding_dim, num_classes)

    def forward(
        self, x: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        check_input(
            x.shape, name=self.input_name, channels_last=False, channels=self.channels,
            max_size=self.size, patch=(1,) * len(self.size), axis_names=self.axis_names,
        )  # fmt: skip
        cct.check_tokens(x.shape, self.tokenizer.grid(tuple(x.shape[2:])), self.input_name)
        x, grid = self.tokenizer(x)
        if self.positional_emb is not None:
            x = x + crop_grid(self.positional_emb, self.grid, grid)
        x = self.dropout(x)
        x = self.transformer(x, features=features)
        weights = self.attention_pool(x).softmax(dim=1)  # (b, n, 1)
        x = (weights * x).sum(dim=1)
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.fc(x), features)


@records_config
class CCT(CompactTransformer):
    """Compact Convolutional Transformer ("Escaping the Big Data Paradigm with Compact Transformers", Hassani
    et al., 2021): a Conv2d tokenizer, a transformer with stochastic depth, and sequence pooling.

    Takes ``img`` of shape ``(b, n_input_channels, h, w)`` with ``h, w`` at most ``img_size`` (an int or
    ``(h, w)``); smaller images use the top-left part of the token grid. ``positional_embedding`` is
    ``'learnable'``, ``'sine'`` or ``'none'`` (see :class:`CompactTransformer`). Convolutions start from
    Kaiming-normal weights; the Linear layers keep the framework's default initialization.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        embedding_dim: int = 768,
        n_input_channels: int = 3,
        n_conv_layers: int = 1,
        kernel_size: int = 7,
        stride: int = 2,
        padding: int = 3,
        pooling_kernel_size: int = 3,
        pooling_stride: int = 2,
        pooling_padding: int = 1,
        dropout_rate: float = 0.0,
        attention_dropout: float = 0.1,
        stochastic_depth_rate: float = 0.1,
        *,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        positional_embedding: str = "sine",
    ) -> None:
        geometry = cct.image_geometry(
            img_size=img_size, embedding_dim=embedding_dim, n_input_channels=n_input_channels,
            n_conv_layers=n_conv_layers, kernel_size=kernel_size, stride=stride, padding=padding,
            pooling_kernel_size=pooling_kernel_size, pooling_stride=pooling_stride, pooling_padding=pooling_padding,
            num_layers=num_layers, num_heads=num_heads, positional_embedding=positional_embedding,
            stochastic_depth_rate=stochastic_depth_rate,
        )  # fmt: skip
        super().__init__(
            geometry=geometry, axis_names=IMAGE_AXES, input_name="img", n_input_channels=n_input_channels,
            embedding_dim=embedding_dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio,
            num_classes=num_classes, positional_embedding=positional_embedding, dropout_rate=dropout_rate,
            attention_dropout=attention_dropout,
        )  # fmt: skip


cct_2, cct_4, cct_6, cct_7, cct_8, cct_14, cct_16 = cct.preset_builders(CCT, __name__)
