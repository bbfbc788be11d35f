"""NaViT for videos and volumes on jagged nested tensors ("Patch n' Pack", Dehghani et al., 2023).

Every video (or CT volume) keeps its own frame count and resolution; it becomes one ragged sequence
of frame-and-space patches with factorized positions over frames, height and width.
"""

from __future__ import annotations

from vit_parity.core.config import records_config
from vit_parity.core.validate import as_tuple
from vit_torch.na_vit import TokenDropout
from vit_torch.na_vit_nested_tensor import NestedNaViTBase

__all__ = ["NaViT"]


@records_config
class NaViT(NestedNaViTBase):
    """NaViT (Dehghani et al., 2023) for videos and volumes, on jagged nested tensors.

    ``forward(volumes)`` takes a list of ``(channels, frames, h, w)`` tensors with up to ``max_frames``
    frames (a multiple of ``frame_patch_size``) and sides up to ``image_size`` (multiples of
    ``patch_size``); returns ``(len(volumes), num_classes)``. ``token_dropout_prob`` may be a
    function of ``(frames, height, width)``.
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
    ) -> None:
        size = (max_frames, *as_tuple(image_size, 2, "image_size"))
        patch = (frame_patch_size, *as_tuple(patch_size, 2, "patch_size"))
        super().__init__(
            max_size=size, patch_size=patch, axis_names=("frames", "height", "width"), num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, channels=channels, dim_head=dim_head,
            dropout=dropout, emb_dropout=emb_dropout, token_dropout_prob=token_dropout_prob,
        )  # fmt: skip
