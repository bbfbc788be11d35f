"""CCT 3D: "Escaping the Big Data Paradigm with Compact Transformers" (Hassani et al., 2021) on videos."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vit_flax.cct import CompactTransformer
from vit_flax.vit_3d import VIDEO_AXES
from vit_parity.core.config import records_config
from vit_parity.core.facts import cct

__all__ = ["CCT", "cct_2", "cct_4", "cct_6", "cct_7", "cct_8", "cct_14", "cct_16"]


@records_config
class CCT(CompactTransformer):
    """Compact Convolutional Transformer (Hassani et al., 2021) for videos: a Conv3d tokenizer, a
    transformer with stochastic depth, and sequence pooling (attention-weighted mean of the tokens); the body
    of ``cct.CCT`` (:class:`vit_flax.cct.CompactTransformer`) on three spatial axes.

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
        super().__init__(
            geometry=geometry, axis_names=VIDEO_AXES, input_name="video", n_input_channels=n_input_channels,
            embedding_dim=embedding_dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio,
            num_classes=num_classes, positional_embedding=positional_embedding, dropout_rate=dropout_rate,
            attention_dropout=attention_dropout, dtype=dtype, rngs=rngs,
        )  # fmt: skip


cct_2, cct_4, cct_6, cct_7, cct_8, cct_14, cct_16 = cct.preset_builders(CCT, __name__)
