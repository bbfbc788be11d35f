"""NaViT: "Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution" (Dehghani et al., 2023).

Mirrors ``vit_torch.na_vit`` (same constructor, parameters and logits) on packed batches of static
shape: the framework-free packer (``vit_parity.core.packing``) cuts images into patches and lays them out
in fixed ``(num_seqs, max_seq_len)`` arrays with segment ids, patch coordinates and image ids, so a
stream of batches of different images compiles once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.layers import Attention, PatchEmbed, Transformer, default_rngs, layer_norm, with_features
from vit_parity.core import packing
from vit_parity.core.config import records_config
from vit_parity.core.features import Features
from vit_parity.core.validate import as_tuple, check_divisible

__all__ = ["NaViT"]

TokenDropout = float | Callable[..., Any] | None
_POS_NAMES = {"frames": "pos_embed_frame", "height": "pos_embed_height", "width": "pos_embed_width"}


class NaViTBase(nnx.Module):
    """NaViT on packed batches, for any number of axes (see :class:`NaViT`)."""

    def __init__(
        self,
        *,
        max_size: tuple[int, ...],
        patch_size: tuple[int, ...],
        axis_names: tuple[str, ...],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        channels: int,
        dim_head: int,
        dropout: float,
        emb_dropout: float,
        token_dropout_prob: TokenDropout,
        dtype: jnp.dtype | None,
        rngs: nnx.Rngs | None,
    ) -> None:
        rngs = default_rngs(rngs)
        check_divisible(max_size, patch_size, "image size", "patch size")
        self.max_size, self.patch_size, self.axis_names = max_size, patch_size, axis_names
        self.channels = channels
        self.token_dropout = packing.token_dropout_fn(token_dropout_prob)
        self.grid = tuple(s // p for s, p in zip(max_size, patch_size))

        self.to_patch_embedding = PatchEmbed(patch_size, channels, dim, dtype=dtype, rngs=rngs)
        for axis, g in zip(axis_names, self.grid):
            setattr(self, _POS_NAMES[axis], nnx.Param(jax.random.normal(rngs.params(), (g, dim))))
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs)
        self.transformer = Transformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, out_bias=False, qk_norm=True, dtype=dtype, rngs=rngs
        )
        self.attn_pool_queries = nnx.Param(jax.random.normal(rngs.params(), (dim,)))
        self.attn_pool_norm = layer_norm(dim, 1e-5, rngs, dtype)
        self.attn_pool = Attention(dim, heads, dim_head, out_bias=False, qk_norm=True, dtype=dtype, rngs=rngs)
        self.head_norm = layer_norm(dim, 1e-5, rngs, dtype)
        self.mlp_head = nnx.Linear(dim, num_classes, use_bias=False, dtype=dtype, rngs=rngs)
        self.token_rngs = rngs["dropout"].fork()
        self.deterministic = False  # model.train() / model.eval() switch token dropout

    def pack(
        self,
        images: Sequence[Any],
        *,
        group_max_seq_len: int = 2048,
        max_images: int | None = None,
        num_seqs: int | None = None,
        keep: Sequence[Any] | None = None,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> packing.PackedBatch:
        """Pack channels-last ``images`` for this model (checks channels, sides and patch divisibility).

        Fix ``max_images`` and ``num_seqs`` to keep the shapes, and so the compiled function, the same
        from batch to batch. ``keep`` drops tokens before packing (token dropout at packing time).
        """
        return packing.pack_images(
            images, patch_size=self.patch_size, group_max_seq_len=group_max_seq_len, max_images=max_images,
            num_seqs=num_seqs, channels_last=True, channels=self.channels, max_size=self.max_size,
            axis_names=self.axis_names, keep=keep, groups=groups,
        )  # fmt: skip

    def __call__(
        self,
        patches: jax.Array,
        segment_ids: jax.Array,
        coords: jax.Array,
        image_ids: jax.Array,
        *,
        keep: jax.Array | None = None,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        features = Features.request(return_features, return_attn)
        self._check(patches, segment_ids, coords, image_ids, keep)
        s, m = patches.shape[0], image_ids.shape[1]
        segment, coords = jnp.asarray(segment_ids), jnp.asarray(coords)
        if keep is not None:
            segment = jnp.where(keep, segment, 0)
        elif not self.deterministic and self.token_dropout is not None:
            segment = self._drop_tokens(segment, coords, m)
        x = self.to_patch_embedding.embed(jnp.asarray(patches))
        for a, axis in enumerate(self.axis_names):
            x = x + getattr(self, _POS_NAMES[axis])[...][coords[..., a]].astype(x.dtype)
        x = self.dropout(x)
        # a token attends to the tokens of its own image (padding to padding: no empty rows)
        x = self.transformer(x, segment[:, None, :, None] == segment[:, None, None, :], features=features)
        pool_mask = jnp.arange(1, m + 1)[None, :, None] == segment[:, None, :]
        pool_mask = pool_mask | ~pool_mask.any(-1, keepdims=True)  # empty slots: finite, then zeroed
        queries = jnp.broadcast_to(self.attn_pool_queries[...], (s, m, x.shape[-1])).astype(x.dtype)
        pooled = self.attn_pool(self.attn_pool_norm(queries), pool_mask[:, None], context=x) + queries
        if features is not None:
            features.add("pre_logits", pooled)
        logits = self.mlp_head(self.head_norm(pooled))
        return with_features(jnp.where((jnp.asarray(image_ids) >= 0)[..., None], logits, 0), features)

    def _drop_tokens(self, segment: jax.Array, coords: jax.Array, m: int) -> jax.Array:
        """Token dropout inside the compiled function: each image keeps ``num_keep`` random tokens."""
        onehot = segment[..., None] == jnp.arange(1, m + 1)  # (s, n, m)
        counts = onehot.sum(axis=1)
        grid = jnp.max(jnp.where(onehot[..., None], coords[:, :, None, :] + 1, 0), axis=1)  # (s, m, axes)
        sides = grid * jnp.asarray(self.patch_size)
        prob = self.token_dropout(*(sides[..., a] for a in range(len(self.axis_names))))
        kept_n = packing.num_keep(counts, prob, xp=jnp)
        score = jax.random.uniform(self.token_rngs(), segment.shape)
        same = segment[:, :, None] == segment[:, None, :]
        rank = jnp.sum(same & (score[:, None, :] > score[:, :, None]), axis=-1)
        limit = jnp.take_along_axis(kept_n, jnp.clip(segment - 1, 0, m - 1), axis=1)
        return jnp.where((segment > 0) & (rank < limit), segment, 0)

    def _check(self, patches: Any, segment_ids: Any, coords: Any, image_ids: Any, keep: Any) -> None:
        patch_dim = self.channels * math.prod(self.patch_size)
        shape = tuple(patches.shape)
        if len(shape) != 3 or shape[-1] != patch_dim:
            raise ValueError(
                f"patches must be (num_seqs, max_seq_len, {patch_dim}) for channels={self.channels} and patch_size "
                f"{self.patch_size}, got shape {shape}; NaViT.pack(images) builds the inputs"
            )
        expect = {
            "segment_ids": (tuple(segment_ids.shape), shape[:2]),
            "coords": (tuple(coords.shape), (*shape[:2], len(self.axis_names))),
        }
        if keep is not None:
            expect["keep"] = (tuple(keep.shape), shape[:2])
        for name, (got, want) in expect.items():
            if got != want:
                raise ValueError(f"{name} must have shape {want} to match patches {shape}, got {got}")
        if len(image_ids.shape) != 2 or image_ids.shape[0] != shape[0]:
            raise ValueError(f"image_ids must be (num_seqs={shape[0]}, max_images), got shape {tuple(image_ids.shape)}")


@records_config
class NaViT(NaViTBase):
    """NaViT (Dehghani et al., 2023) on packed batches of static shape.

    ``model(patches, segment_ids, coords, image_ids)`` takes what ``model.pack(images)`` (or
    :func:`vit_parity.core.packing.pack_images`) builds from channels-last images ``(h, w, channels)``
    whose sides are at most ``image_size`` and divisible by ``patch_size``, and returns per-slot
    logits ``(num_seqs, max_images, num_classes)`` (zeros in empty slots); ``batch.unpack(logits)``
    gives ``(number of images, num_classes)`` in input order.

    ``token_dropout_prob`` (a number, or a function of the height and width arrays) drops that
    fraction of each image's tokens in training, inside the compiled function; ``keep``
    ``(num_seqs, max_seq_len)`` chooses the kept tokens explicitly. To fit more images in a sequence,
    drop tokens at packing time instead: ``model.pack(images, keep=packing.keep_masks(...))``.
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
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        token_dropout_prob: TokenDropout = None,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        super().__init__(
            max_size=as_tuple(image_size, 2, "image_size"), patch_size=as_tuple(patch_size, 2, "patch_size"),
            axis_names=("height", "width"), num_classes=num_classes, dim=dim, depth=depth, heads=heads,
            mlp_dim=mlp_dim, channels=channels, dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
            token_dropout_prob=token_dropout_prob, dtype=dtype, rngs=rngs,
        )  # fmt: skip
