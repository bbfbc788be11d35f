"""CCT: "Escaping the Big Data Paradigm with Compact Transformers" (Hassani et al., 2021).

:class:`CompactTransformer` is the body on inputs of any number of spatial axes (a convolutional tokenizer, the
positional embedding, a post-norm transformer with stochastic depth, sequence pooling and the head);
:class:`CCT` reads it on images and ``cct_3d.CCT`` on videos.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Transformer, crop_grid, default_rngs, with_features
from vit_flax.vit import IMAGE_AXES
from vit_parity.core.config import records_config
from vit_parity.core.facts import cct
from vit_parity.core.features import Features
from vit_parity.core.posemb import sinusoidal_table
from vit_parity.core.validate import check_input

__all__ = ["CCT", "cct_2", "cct_4", "cct_6", "cct_7", "cct_8", "cct_14", "cct_16"]

Array = jax.Array


class Tokenizer(nnx.Module):
    """Convolution (no bias), ReLU and max pool over every spatial axis, ``n_conv_layers`` times: ``(b,
    *spatial, c)`` to tokens ``(b, n, dim)`` (Conv2d and MaxPool2d on images, Conv3d and MaxPool3d on videos).

    Laid out by a :class:`vit_parity.core.facts.cct.TokenizerGeometry`. Convolutions and pools take torch's
    explicit padding (pools pad with -inf, as torch does). Returns the tokens in row-major grid order and their
    grid.
    """

    def __init__(self, geometry: cct.TokenizerGeometry, *, dtype: jnp.dtype | None = None, rngs: nnx.Rngs) -> None:
        g = geometry
        kaiming = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")  # torch's kaiming_normal_
        self.convs = nnx.List(
            [
                nnx.Conv(
                    c_in,
                    c_out,
                    g.kernel,
                    g.stride,
                    padding=[(p, p) for p in g.padding],
                    use_bias=False,
                    kernel_init=kaiming,
                    dtype=dtype,
                    rngs=rngs,
                )
                for c_in, c_out in itertools.pairwise(g.channels)
            ]
        )
        self.kernel, self.stride, self.padding = g.kernel, g.stride, g.padding
        self.pool_kernel, self.pool_stride, self.pool_padding = g.pool_kernel, g.pool_stride, g.pool_padding

    def grid(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an input of spatial ``size`` (``(h, w)`` or ``(t, h, w)``)."""
        return cct.token_grid(
            size, len(self.convs), self.kernel, self.stride, self.padding,
            self.pool_kernel, self.pool_stride, self.pool_padding,
        )  # fmt: skip

    def __call__(self, x: Array) -> tuple[Array, tuple[int, ...]]:
        for conv in self.convs:
            x = nnx.max_pool(
                jax.nn.relu(conv(x)), self.pool_kernel, self.pool_stride, [(p, p) for p in self.pool_padding]
            )
        return x.reshape(x.shape[0], -1, x.shape[-1]), tuple(x.shape[1:-1])


class CompactTransformer(nnx.Module):
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
        dtype: jnp.dtype | None,
        rngs: nnx.Rngs | None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.size, self.grid = geometry.size, geometry.grid
        self.axis_names, self.input_name = tuple(axis_names), input_name
        self.channels = n_input_channels
        self.tokenizer = Tokenizer(geometry.tokenizer, dtype=dtype, rngs=rngs)
        n = math.prod(self.grid)
        self.positional_embedding = positional_embedding
        self.positional_emb = (
            nnx.Param(jax.random.normal(rngs.params(), (1, n, embedding_dim)) * 0.2)
            if positional_embedding == "learnable"
            else None
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        heads, dim_head = num_heads, embedding_dim // num_heads
        self.transformer = Transformer(
            embedding_dim, num_layers, heads, dim_head, int(embedding_dim * mlp_ratio), dropout_rate,
            drop_path=geometry.rates, attn_dropout=attention_dropout, post_norm=True, dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self.attention_pool = nnx.Linear(embedding_dim, 1, dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(embedding_dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        features = Features.request(return_features, return_attn)
        check_input(
            x.shape, name=self.input_name, channels_last=True, channels=self.channels,
            max_size=self.size, patch=(1,) * len(self.size), axis_names=self.axis_names,
        )  # fmt: skip
        cct.check_tokens(x.shape, self.tokenizer.grid(tuple(x.shape[1:-1])), self.input_name)
        x, grid = self.tokenizer(x)
        if self.positional_embedding == "learnable":
            x = x + crop_grid(self.positional_emb[...], self.grid, grid).astype(x.dtype)
        elif self.positional_embedding == "sine":
            table = jnp.asarray(sinusoidal_table(math.prod(self.grid), x.shape[-1]))[None]
            x = x + crop_grid(table, self.grid, grid).astype(x.dtype)
        x = self.dropout(x)
        x = self.transformer(x, features=features)
        weights = jax.nn.softmax(self.attention_pool(x), axis=1)  # (b, n, 1)
        x = (weights * x).sum(axis=1)
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.fc(x), features)


@records_config
class CCT(CompactTransformer):
    """Compact Convolutional Transformer ("Escaping the Big Data Paradigm with Compact Transformers", Hassani
    et al., 2021): a Conv2d tokenizer, a transformer with stochastic depth, and sequence pooling.

    Takes ``img`` of shape ``(b, h, w, n_input_channels)`` with ``h, w`` at most ``img_size`` (an int or
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
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
            attention_dropout=attention_dropout, dtype=dtype, rngs=rngs,
        )  # fmt: skip


cct_2, cct_4, cct_6, cct_7, cct_8, cct_14, cct_16 = cct.preset_builders(CCT, __name__)
