"""ViT for small datasets: "Vision Transformer for Small-Size Datasets" (Lee, Lee and Song, 2021).

Two changes to the ViT: shifted patch tokenization (:class:`SPT`, usable alone) and locality self-attention
(:class:`LSA`, the shared :class:`~vit_flax.attention_variants.LocalitySelfAttention`). Both are importable from
here under the seed's names; ``__all__`` lists the registry model only. Mirrors ``vit_torch.vit_for_small_dataset``
on channels-last images.
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.attention_variants import LocalityBlock, LocalitySelfAttention
from vit_flax.layers import default_rngs, grid_of, layer_norm, patchify
from vit_flax.vit import IMAGE_AXES, ClassTokenViT
from vit_parity.core.config import records_config
from vit_parity.core.facts import vit_for_small_dataset as facts
from vit_parity.core.validate import as_tuple, check_input, image_geometry

__all__ = ["ViT"]

LSA = LocalitySelfAttention


def shifted_copies(img: jax.Array) -> jax.Array:
    """``(b, h, w, c)`` to ``(b, h, w, 5 * c)``: the image, then its copies moved by one pixel right, left, down and
    up (:data:`~vit_parity.core.facts.vit_for_small_dataset.SHIFTS`), zeros where a copy uncovers the border."""
    h, w = img.shape[1:3]
    padded = jnp.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)))
    copies = [padded[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w] for dy, dx in facts.SHIFTS]
    return jnp.concatenate((img, *copies), axis=-1)


class SPT(nnx.Module):
    """Shifted patch tokenization (Lee, Lee and Song, 2021): the image and four shifted copies of it
    (:func:`shifted_copies`) are concatenated on the channels, cut into patches (each flattened as
    ``(ph, pw, 5 * channels)``), normalized (``norm``) and projected to ``dim`` (``proj``).

    ``__call__(img)`` takes ``(b, h, w, channels)`` with ``h, w`` divisible by ``patch_size`` and returns the tokens
    ``(b, h / ph * w / pw, dim)``.
    """

    def __init__(
        self,
        dim: int,
        patch_size: int | tuple[int, int],
        channels: int = 3,
        *,
        eps: float = 1e-5,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        self.channels = channels
        patch_dim = 5 * channels * math.prod(self.patch_size)
        self.norm = layer_norm(patch_dim, eps, rngs, dtype)
        self.proj = nnx.Linear(patch_dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, img: jax.Array) -> jax.Array:
        check_input(
            img.shape, name="img", channels_last=True, channels=self.channels,
            max_size=(sys.maxsize,) * 2, patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        return self.proj(self.norm(patchify(shifted_copies(img), self.patch_size)))


@records_config
class ViT(ClassTokenViT):
    """ViT for small datasets (Lee, Lee and Song, 2021): shifted patch tokenization (``to_patch_embedding``, an
    :class:`SPT`), a class token, learned positions, blocks of locality self-attention
    (:class:`~vit_flax.attention_variants.LocalityBlock`), and a head that normalizes the pooled token (``norm``)
    and classifies it.

    Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most ``image_size`` and divisible by
    ``patch_size``; smaller images use the top-left part of the position grid.
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
        size, patch = image_geometry(image_size, patch_size)
        facts.check_arguments(pool=pool)
        super().__init__(
            size=size, patch_size=patch, axis_names=IMAGE_AXES, input_name="img", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, pool=pool, channels=channels,
            dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout, norm_pooled=True,  # as the reference
            patch_embedding=lambda patch, channels, dim, **options: SPT(dim, patch, channels, **options),
            final_norm=False, block=LocalityBlock, dtype=dtype, rngs=rngs,
        )  # fmt: skip

    def embed_patches(self, img: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        return self.to_patch_embedding(img), grid_of(img.shape[1:3], self.patch_size)
