"""Learnable memory: "Fine-tuning Image Transformers using Learnable Memory" (Sandler et al., 2022).

:class:`ViT` is a ViT whose blocks can read extra key/value tokens; :class:`Adapter` fine-tunes a frozen one for a
new task with a task class token, memory tokens for every block and a head of its own. Several adapters share one
base (the same module object): the base's parameters are frozen (:data:`TRAINABLE`, and no gradient reaches them)
and an adapter changes none of its outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import (
    Attention,
    Block,
    Head,
    PatchEmbed,
    Transformer,
    crop_grid,
    default_rngs,
    run_block,
    with_features,
)
from vit_parity.core.config import records_config
from vit_parity.core.facts import learnable_memory_vit as facts
from vit_parity.core.features import Features, block_label
from vit_parity.core.validate import check_choice, check_input, image_geometry

__all__ = ["TRAINABLE", "Adapter", "ViT"]

Array = jax.Array
IMAGE_AXES = ("height", "width")

TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("vit")))
"""The parameters of an :class:`Adapter` that training may change: all but its ViT's. Give it as the optimizer's
``wrt`` (``nnx.Optimizer(adapter, optax.adamw(1e-3), wrt=TRAINABLE)``) and differentiate with respect to it
(``nnx.grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE))``), so that not even weight decay moves the ViT."""


class MemoryAttention(Attention):
    """:class:`~vit_flax.layers.Attention` whose ``context`` is memory (learnable memory, Sandler et al., 2022):
    ``attn(x, mask, context=m)`` lets the queries of ``x`` attend to the keys and values of ``[x, m]``, ``x``'s own
    followed by the memory tokens ``m`` ``(b, n_m, dim)``, read as given (the block normalizes only ``x``). Without
    ``context`` it is self-attention."""

    def __call__(
        self, x: Array, mask: Array | None = None, *, context: Array | None = None, return_attn: bool = False
    ) -> Array | tuple[Array, Array]:
        if context is not None:
            context = jnp.concatenate((x, context.astype(x.dtype)), axis=1)
        return super().__call__(x, mask, context=context, return_attn=return_attn)


class MemoryBlock(Block):
    """A :class:`~vit_flax.layers.Block` whose attention is a :class:`MemoryAttention` (Sandler et al., 2022):
    ``block(x, mask, context=m)`` appends the memory tokens ``m`` to the keys and values."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        *,
        eps: float = 1e-5,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        attn = MemoryAttention(dim, heads, dim_head, dropout, eps=eps, dtype=dtype, rngs=rngs)
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, eps=eps, attn=attn, dtype=dtype, rngs=rngs, **options)


@records_config
class ViT(nnx.Module):
    """The Vision Transformer of learnable memory (Sandler et al., 2022): a class token, learned positions, a
    pre-norm transformer without a final norm, and a head that normalizes the pooled token and classifies it
    (``mlp_head``: LayerNorm, Linear).

    ``model(img)`` is the plain ViT: ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size``
    and divisible by ``patch_size`` (smaller images use the top-left part of the position grid).
    :meth:`memory_forward` is what an :class:`Adapter` runs: a task class token and per-block memory tokens.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        check_choice(pool, ("cls", "mean"), "pool")
        self.pool, self.channels, self.dim, self.depth = pool, channels, dim, depth
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim, dtype=dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (1, math.prod(self.grid) + 1, dim)))
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = Transformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, final_norm=False, block=MemoryBlock, dtype=dtype, rngs=rngs
        )  # fmt: skip
        self.mlp_head = Head(dim, num_classes, dtype=dtype, rngs=rngs)

    def tokens(self, img: Array) -> Array:
        """Check ``img``, embed its patches, add the positions and prepend the class token: ``(b, 1 + n, dim)``,
        after the embedding dropout."""
        check_input(
            img.shape, name="img", channels_last=True, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        pos = self.pos_embedding[...]
        x = x + crop_grid(pos[:, 1:], self.grid, grid).astype(x.dtype)
        cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (x.shape[0], 1, x.shape[-1]))
        return self.dropout(jnp.concatenate((cls.astype(x.dtype), x), axis=1))

    def encode(
        self,
        x: Array,
        features: Features | None = None,
        *,
        memories: Array | None = None,
        mask: Array | None = None,
    ) -> Array:
        """The blocks on a token sequence ``(b, n, dim)``, recording them in ``features``; with ``memories``
        ``(depth, m, dim)`` block ``i`` also reads ``memories[i]`` as keys and values (after its own tokens).
        ``mask`` (boolean, True where a query may attend) covers those keys too."""
        if memories is None:
            return self.transformer(x, mask, features=features)
        for i, block in enumerate(self.transformer.blocks):
            layer = partial(block, context=jnp.broadcast_to(memories[i], (x.shape[0], *memories.shape[1:])))
            x = run_block(layer, x, mask, features, block_label(i))
        return x

    def memory_forward(
        self, img: Array, class_token: Array, memories: Array, features: Features | None = None
    ) -> Array:
        """The output ``(b, dim)`` of a task class token ``class_token`` ``(dim,)`` put before this ViT's tokens,
        when every block ``i`` also reads the memory tokens ``memories[i]`` (``memories``: ``(depth, m, dim)``).

        The task token attends to everything (itself, the ViT's tokens, the memories); the ViT's tokens attend only
        to each other (:func:`vit_parity.core.facts.learnable_memory_vit.memory_mask`), so they compute exactly what
        they compute in ``model(img)``. Records the blocks (task token first) in ``features``."""
        facts.check_memories(class_token.shape, memories.shape, depth=self.depth, dim=self.dim)
        x = self.tokens(img)
        task = jnp.broadcast_to(class_token.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        mask = jnp.asarray(facts.memory_mask(x.shape[1], memories.shape[1]), dtype=bool)
        x = self.encode(jnp.concatenate((task, x), axis=1), features, memories=memories.astype(x.dtype), mask=mask)
        return x[:, 0]

    def pool_tokens(self, x: Array) -> Array:
        """What the head reads: the class token (``pool='cls'``) or the mean of every token."""
        return x[:, 0] if self.pool == "cls" else x.mean(axis=1)

    def __call__(
        self, img: Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        features = Features.request(return_features, return_attn)
        x = self.pool_tokens(self.encode(self.tokens(img), features))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)


def frozen_view(module: nnx.Module) -> nnx.Module:
    """``module`` with every parameter behind ``jax.lax.stop_gradient``: the same computation, no gradient into its
    parameters. Its other state (the dropout streams) is ``module``'s own, so draws advance as they would."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, params), rest)


@records_config
class Adapter(nnx.Module):
    """A task adapter of a frozen learnable-memory :class:`ViT` (Sandler et al., 2022).

    It owns a task class token ``memory_cls_token`` ``(dim,)``, ``num_memories_per_layer`` memory tokens for every
    block (``memories_per_layer``: ``(depth, num_memories_per_layer, dim)``) and a head ``mlp_head`` (LayerNorm,
    Linear to ``num_classes``). ``adapter(img)`` (channels-last) runs the ViT with them
    (:meth:`ViT.memory_forward`) and classifies the task token's output.

    The ViT (``vit``, the very module given: adapters built on one ViT share its arrays) is frozen: the adapter
    reads its parameters through ``jax.lax.stop_gradient`` (no gradient reaches them) and an optimizer must leave
    them alone: build it with ``wrt=TRAINABLE`` (see :data:`TRAINABLE`). It follows the adapter's train or eval mode
    (its dropout runs when the adapter trains). Its tokens never see the task token or the memories, so ``vit(img)``
    and every other adapter on it give what they give alone. A checkpoint holds the ViT under ``vit.``.
    """

    def __init__(
        self,
        *,
        vit: ViT,
        num_memories_per_layer: int = 10,
        num_classes: int = 2,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        if not isinstance(vit, ViT):
            raise ValueError(f"vit must be a vit_flax.learnable_memory_vit.ViT, got {type(vit).__name__}")
        m = facts.check_num_memories(num_memories_per_layer)
        self.vit = vit
        self.memory_cls_token = nnx.Param(jax.random.normal(rngs.params(), (vit.dim,)))
        self.memories_per_layer = nnx.Param(jax.random.normal(rngs.params(), (vit.depth, m, vit.dim)))
        self.mlp_head = Head(vit.dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, img: Array, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        facts.check_base(self.vit.dim, self.vit.depth, self.memories_per_layer.shape)
        features = Features.request(return_features, return_attn)
        vit = frozen_view(self.vit)
        x = vit.memory_forward(img, self.memory_cls_token[...], self.memories_per_layer[...], features)
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
