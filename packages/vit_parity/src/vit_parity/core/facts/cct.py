"""CCT (Hassani et al., 2021) on images and on videos: its argument checks, the tokenizer's arithmetic, the
default paddings, the stochastic-depth rates and the presets, once for both backends.

The tokenizer is ``n_conv_layers`` times a convolution (no bias), a ReLU and a max pool over the input's spatial
axes (Conv2d and MaxPool2d on images, Conv3d and MaxPool3d on videos), every one with torch's explicit symmetric
padding and floor rounding. A backend builds its image model from :func:`image_geometry`, its video model from
:func:`geometry`, and the presets of both from :func:`preset` (the same table and defaults in 2D and 3D).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from vit_parity.core.validate import as_tuple, check_choice

__all__ = [
    "INNER_CHANNELS",
    "POSITIONAL_EMBEDDINGS",
    "PRESETS",
    "Geometry",
    "Preset",
    "TokenizerGeometry",
    "check_tokens",
    "conv_out",
    "default_padding",
    "geometry",
    "image_geometry",
    "preset",
    "preset_builders",
    "stochastic_depth_rates",
    "token_grid",
]

POSITIONAL_EMBEDDINGS = ("learnable", "sine", "none")
INNER_CHANNELS = 64  # the width of every tokenizer convolution but the last
Sides = tuple[int, ...]  # one value per spatial axis: (h, w) or (t, h, w)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window (floor mode) along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def default_padding(kernel_size: int) -> int:
    """``frame_padding`` for ``frame_kernel_size`` and ``frame_pooling_padding`` for ``frame_pooling_kernel_size``
    when not given: half the kernel, rounded down."""
    return kernel_size // 2


def stochastic_depth_rates(num_layers: int, stochastic_depth_rate: float) -> tuple[float, ...]:
    """The drop-path rate of each layer: linear from 0 (first layer) to ``stochastic_depth_rate`` (last); 0 for
    a single layer."""
    if num_layers < 2:
        return (0.0,) * num_layers
    return tuple(stochastic_depth_rate * i / (num_layers - 1) for i in range(num_layers))


def token_grid(
    size: Sequence[int],
    n_conv_layers: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    pool_kernel: Sequence[int],
    pool_stride: Sequence[int],
    pool_padding: Sequence[int],
) -> tuple[int, ...]:
    """The token grid the tokenizer leaves of an input of spatial ``size`` (e.g. ``(t, h, w)``); a side below 1
    means no tokens."""
    out = tuple(size)
    for _ in range(n_conv_layers):
        out = tuple(conv_out(*a) for a in zip(out, kernel, stride, padding))
        out = tuple(conv_out(*a) for a in zip(out, pool_kernel, pool_stride, pool_padding))
    return out


def check_tokens(shape: Sequence[int], grid: Sequence[int], name: str = "video") -> None:
    """Raise unless ``grid``, the token grid of the input ``name`` (``"img"``, ``"video"``) of ``shape``, has at
    least one token."""
    if min(grid) < 1:
        raise ValueError(f"{name} of shape {tuple(shape)} is too small: the tokenizer leaves no tokens")


@dataclass(frozen=True)
class TokenizerGeometry:
    """The tokenizer's layers: ``channels`` from the input's to ``embedding_dim`` (one convolution per step) and
    the kernel, stride and padding of its convolutions and of its pools, one value per spatial axis (``(h, w)``
    or ``(t, h, w)``)."""

    channels: tuple[int, ...]
    kernel: Sides
    stride: Sides
    padding: Sides
    pool_kernel: Sides
    pool_stride: Sides
    pool_padding: Sides

    @property
    def n_conv_layers(self) -> int:
        return len(self.channels) - 1

    def grid(self, size: Sequence[int]) -> tuple[int, ...]:
        """The token grid of an input of spatial ``size`` (``(h, w)`` or ``(t, h, w)``)."""
        return token_grid(
            size, self.n_conv_layers, self.kernel, self.stride, self.padding,
            self.pool_kernel, self.pool_stride, self.pool_padding,
        )  # fmt: skip


@dataclass(frozen=True)
class Geometry:
    """A CCT's validated layout: the largest input ``size`` (``(h, w)``, or ``(num_frames, h, w)`` for videos),
    its tokenizer, the token ``grid`` of that input and the stochastic-depth ``rates`` of the layers."""

    size: tuple[int, ...]
    tokenizer: TokenizerGeometry
    grid: tuple[int, ...]
    rates: tuple[float, ...]


def geometry(
    *,
    img_size: int | Sequence[int],
    num_frames: int,
    embedding_dim: int,
    n_input_channels: int,
    n_conv_layers: int,
    frame_stride: int,
    frame_kernel_size: int,
    frame_padding: int | None,
    frame_pooling_kernel_size: int,
    frame_pooling_stride: int,
    frame_pooling_padding: int | None,
    kernel_size: int,
    stride: int,
    padding: int,
    pooling_kernel_size: int,
    pooling_stride: int,
    pooling_padding: int,
    num_layers: int,
    num_heads: int,
    positional_embedding: str,
    stochastic_depth_rate: float,
) -> Geometry:
    """Check the video CCT's constructor arguments (named as the constructor names them) and lay the model out.

    ``frame_padding`` and ``frame_pooling_padding`` of ``None`` default to half their kernel. Raises naming
    the argument at fault, or when the tokenizer leaves no tokens of the largest input.
    """
    _check_transformer(embedding_dim, num_heads, positional_embedding)
    if frame_padding is None:
        frame_padding = default_padding(frame_kernel_size)
    if frame_pooling_padding is None:
        frame_pooling_padding = default_padding(frame_pooling_kernel_size)
    size = (as_tuple(num_frames, 1, "num_frames")[0], *as_tuple(img_size, 2, "img_size"))
    tokenizer = TokenizerGeometry(
        _channels(n_input_channels, n_conv_layers, embedding_dim),
        (frame_kernel_size, kernel_size, kernel_size),
        (frame_stride, stride, stride),
        (frame_padding, padding, padding),
        (frame_pooling_kernel_size, pooling_kernel_size, pooling_kernel_size),
        (frame_pooling_stride, pooling_stride, pooling_stride),
        (frame_pooling_padding, pooling_padding, pooling_padding),
    )
    return _layout(size, "num_frames x img_size", tokenizer, num_layers, stochastic_depth_rate)


def image_geometry(
    *,
    img_size: int | Sequence[int],
    embedding_dim: int,
    n_input_channels: int,
    n_conv_layers: int,
    kernel_size: int,
    stride: int,
    padding: int,
    pooling_kernel_size: int,
    pooling_stride: int,
    pooling_padding: int,
    num_layers: int,
    num_heads: int,
    positional_embedding: str,
    stochastic_depth_rate: float,
) -> Geometry:
    """Check the image CCT's constructor arguments (named as the constructor names them) and lay the model out:
    square kernels, strides and paddings over ``(h, w)``.

    Raises naming the argument at fault, or when the tokenizer leaves no tokens of the largest image.
    """
    _check_transformer(embedding_dim, num_heads, positional_embedding)
    size = as_tuple(img_size, 2, "img_size")
    tokenizer = TokenizerGeometry(
        _channels(n_input_channels, n_conv_layers, embedding_dim),
        (kernel_size,) * 2,
        (stride,) * 2,
        (padding,) * 2,
        (pooling_kernel_size,) * 2,
        (pooling_stride,) * 2,
        (pooling_padding,) * 2,
    )
    return _layout(size, "img_size", tokenizer, num_layers, stochastic_depth_rate)


def _check_transformer(embedding_dim: int, num_heads: int, positional_embedding: str) -> None:
    check_choice(positional_embedding, POSITIONAL_EMBEDDINGS, "positional_embedding")
    if embedding_dim % num_heads:
        raise ValueError(f"embedding_dim {embedding_dim} must be divisible by num_heads {num_heads}")


def _channels(n_input_channels: int, n_conv_layers: int, embedding_dim: int) -> tuple[int, ...]:
    """The tokenizer's widths: the input's, :data:`INNER_CHANNELS` between convolutions, then ``embedding_dim``."""
    return (n_input_channels, *[INNER_CHANNELS] * (n_conv_layers - 1), embedding_dim)


def _layout(
    size: tuple[int, ...], size_name: str, tokenizer: TokenizerGeometry, num_layers: int, stochastic_depth_rate: float
) -> Geometry:
    """The :class:`Geometry` of an input of ``size`` (named ``size_name`` in the error when it leaves no tokens)."""
    grid = tokenizer.grid(size)
    if min(grid) < 1:
        raise ValueError(f"the tokenizer leaves no tokens for {size_name} {size} (grid {grid})")
    return Geometry(size, tokenizer, grid, stochastic_depth_rates(num_layers, stochastic_depth_rate))


class Preset(NamedTuple):
    """The transformer of a named CCT."""

    num_layers: int
    num_heads: int
    mlp_ratio: float
    embedding_dim: int


PRESETS: dict[str, Preset] = {
    "cct_2": Preset(2, 2, 1, 128),
    "cct_4": Preset(4, 2, 1, 128),
    "cct_6": Preset(6, 4, 2, 256),
    "cct_7": Preset(7, 4, 2, 256),
    "cct_8": Preset(8, 4, 2, 256),
    "cct_14": Preset(14, 6, 3, 384),
    "cct_16": Preset(16, 6, 3, 384),
}


def preset(
    name: str, *, kernel_size: int = 3, stride: int | None = None, padding: int | None = None, **kwargs: Any
) -> dict[str, Any]:
    """The CCT constructor arguments of preset ``name`` (a key of :data:`PRESETS`), for images and videos alike.

    ``kernel_size`` is 3 unless given; ``stride`` defaults to ``max(1, kernel_size // 2 - 1)`` and ``padding``
    to ``max(1, kernel_size // 2)``. Other keyword arguments are passed through; the preset's own four may not
    be given.
    """
    try:
        table = PRESETS[name]._asdict()
    except KeyError:
        raise KeyError(f"unknown CCT preset {name!r}; known: {list(PRESETS)}") from None
    clash = sorted(set(kwargs) & set(table))
    if clash:
        raise TypeError(f"{name} sets {clash} itself; build the CCT class to choose them")
    stride = max(1, kernel_size // 2 - 1) if stride is None else stride
    padding = max(1, kernel_size // 2) if padding is None else padding
    return {**table, "kernel_size": kernel_size, "stride": stride, "padding": padding, **kwargs}


def preset_builders(model: Callable[..., Any], module: str) -> tuple[Callable[..., Any], ...]:
    """One function per preset, in the order of :data:`PRESETS` (``cct_2, cct_4, ..., cct_16``), each building
    ``model`` (a backend's ``CCT`` class) with that preset's arguments; ``module`` is the module that exports them.
    """

    def builder(name: str) -> Callable[..., Any]:
        def build(**kwargs: Any) -> Any:
            return model(**preset(name, **kwargs))

        build.__name__ = build.__qualname__ = name
        build.__module__ = module
        build.__doc__ = (
            f"{name.upper().replace('_', '-')}: ``{model.__name__}`` with the ``{name}`` row of "
            f":data:`vit_parity.core.facts.cct.PRESETS` (layers, heads, mlp ratio, width); kernel, stride, padding "
            f"and the other keyword arguments as :func:`vit_parity.core.facts.cct.preset` takes them."
        )
        return build

    return tuple(builder(name) for name in PRESETS)
