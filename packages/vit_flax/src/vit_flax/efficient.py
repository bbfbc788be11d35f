"""Efficient attention: the ViT around a transformer of one's choice ("An Image is Worth 16x16 Words", Dosovitskiy
et al., 2020, with a pluggable transformer such as the Nystromformer of Xiong et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax import layers
from vit_flax.layers import Head, PatchEmbed, RecordsUserModules, crop_grid, default_rngs, with_features
from vit_flax.vit import IMAGE_AXES
from vit_parity.core.config import records_config
from vit_parity.core.facts import efficient as facts
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, image_geometry

__all__ = ["Transformer", "ViT"]

Array = jax.Array


@records_config
class Transformer(layers.Transformer):
    """This library's pre-norm transformer ("Attention Is All You Need", Vaswani et al., 2017): ``depth`` blocks of
    softmax attention and feed-forward, then a final LayerNorm, as a model of its own for :class:`ViT`'s
    ``transformer``.

    A :class:`vit_flax.layers.Transformer` that records its constructor arguments (those of vit-pytorch's
    ``vit.Transformer``), so that a :class:`ViT` around it saves and loads in either backend. ``__call__(x)`` maps
    ``(b, n, dim)`` tokens to ``(b, n, dim)``; with ``return_features``/``return_attn`` it returns ``(tokens,
    features)``: ``block00`` ... and ``pre_logits`` (its output, what a head reads). With a ``dtype`` the tokens run
    in it.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        super().__init__(dim, depth, heads, dim_head, mlp_dim, dropout, dtype=dtype, rngs=default_rngs(rngs))
        self.dim, self.dtype = dim, dtype

    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        *,
        features: Features | None = None,
        prefix: str = "",
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Array | tuple[Array, dict[str, Array]]:
        facts.check_tokens(x.shape, self.dim)
        if self.dtype is not None:  # the residual stream runs in the compute dtype
            x = x.astype(self.dtype)
        own = Features.request(return_features, return_attn)
        if own is None:  # a model's call, recording into its features (or none)
            return super().__call__(x, mask, features=features, prefix=prefix)
        if features is not None:
            raise ValueError("give features= (a model's collector) or return_features/return_attn, not both")
        x = super().__call__(x, mask, features=own, prefix=prefix)
        own.add("pre_logits", x)
        return with_features(x, own)


def transformer_width(transformer: nnx.Module) -> int | None:
    """The token width of one of this library's transformers, known without running it (None for another module)."""
    if isinstance(transformer, Transformer):
        return transformer.dim
    if isinstance(transformer, layers.Transformer) and isinstance(transformer.norm, (nnx.LayerNorm, nnx.RMSNorm)):
        return transformer.norm.num_features
    return None


@records_config
class ViT(RecordsUserModules, nnx.Module):
    """The Vision Transformer (Dosovitskiy et al., 2020) around a transformer of one's choice: patches, a class
    token, learned positions, ``transformer`` and a head (LayerNorm, Linear).

    ``transformer`` is any nnx module mapping ``(b, n, dim)`` tokens to ``(b, n, dim)``: :class:`Transformer` (this
    library's, which also records its blocks and saves with the model) or one's own. Its output width is checked on
    every call (at construction too for this library's transformers). The head normalizes the pooled token, since
    the transformer need not end with a norm. Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most
    ``image_size`` and divisible by ``patch_size``; smaller images use the top-left part of the position grid.

    The forward pass is built from :meth:`tokens`, :meth:`encode` and :meth:`pool_tokens` (as ``vit.ViT``'s), so
    that a subclass can insert a token between them (``distill.DistillableEfficientViT``).
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        transformer: nnx.Module,
        pool: str = "cls",
        channels: int = 3,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        size, patch = image_geometry(image_size, patch_size)
        facts.check_arguments(
            transformer=transformer, module_type=nnx.Module, module_name="flax.nnx.Module", dim=dim, pool=pool,
            width=transformer_width(transformer) if isinstance(transformer, nnx.Module) else None,
        )  # fmt: skip
        self.size, self.patch_size, self.grid = size, patch, tuple(s // p for s, p in zip(size, patch))
        self.dim, self.pool, self.channels = dim, pool, channels

        self.to_patch_embedding = PatchEmbed(patch, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.transformer = transformer
        self.mlp_head = Head(dim, num_classes, dtype=dtype, rngs=rngs)

    def tokens(self, img: Array, features: Features | None = None) -> Array:
        """Check ``img``, embed its patches, add the positions and prepend the class token: ``(b, 1 + n, dim)``.
        ``features`` is unused (the hooks take it alike)."""
        check_input(
            img.shape, name="img", channels_last=True, channels=self.channels, max_size=self.size,
            patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid).astype(x.dtype)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        return jnp.concatenate((cls.astype(x.dtype), x), axis=1)

    def encode(self, x: Array, features: Features | None = None) -> Array:
        """The transformer on a token sequence ``(b, n, dim)`` (recording its blocks when it is a library one); its
        output must have the same shape."""
        if isinstance(self.transformer, layers.Transformer):
            out = self.transformer(x, features=features)
        else:
            out = self.transformer(x)
        facts.check_output(x.shape, out.shape if isinstance(out, jax.Array) else None, self.dim)
        return out

    def pool_tokens(self, x: Array) -> Array:
        """What the head reads: the class token (``pool='cls'``) or the mean of every token."""
        return x[:, 0] if self.pool == "cls" else x.mean(axis=1)

    def __call__(
        self, img: Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        features = Features.request(return_features, return_attn)
        x = self.pool_tokens(self.encode(self.tokens(img, features), features))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
