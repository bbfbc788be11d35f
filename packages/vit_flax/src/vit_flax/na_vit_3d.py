"""NaViT for videos and volumes ("Patch n' Pack", Dehghani et al., 2023) on packed batches of static shape.

Mirrors ``vit_torch.na_vit_nested_tensor_3d``: every video (or CT volume) keeps its own frame count
and resolution, and becomes frame-and-space patches packed with the others by ``vit_parity.core.packing``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vit_flax.na_vit import NaViTBase, TokenDropout
from vit_parity.core.config import records_config
from vit_parity.core.validate import as_tuple

__all__ = ["NaViT"]


@records_config
class NaViT(NaViTBase):
    """NaViT (Dehghani et al., 2023) for videos and volumes, on packed batches of static shape.

    ``model.pack(volumes)`` takes channels-last ``(frames, h, w, channels)`` arrays with up to
    ``max_frames`` frames (a multiple of ``frame_patch_size``) and sides up to ``image_size``
    (multiples of ``patch_size``); ``model(*batch.arrays)`` returns per-slot logits, and
    ``batch.unpack(logits)`` ``(number of volumes, num_classes)``. ``token_dropout_prob`` may be a
    function of the ``(frames, height, width)`` arrays.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        max_frames: int,
        patch_size: int | tuple[int, int],
        frame_patch_size: int,
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
        size = (max_frames, *as_tuple(image_size, 2, "image_size"))
        patch = (frame_patch_size, *as_tuple(patch_size, 2, "patch_size"))
        super().__init__(
            max_size=size, patch_size=patch, axis_names=("frames", "height", "width"), num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, channels=channels, dim_head=dim_head,
            dropout=dropout, emb_dropout=emb_dropout, token_dropout_prob=token_dropout_prob, dtype=dtype, rngs=rngs,
        )  # fmt: skip
