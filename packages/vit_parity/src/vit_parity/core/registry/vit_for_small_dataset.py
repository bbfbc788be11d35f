"""Spec entry of the ViT for small datasets (shifted patch tokenization, locality self-attention)."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=32, depth=1, heads=4, mlp_dim=64, dim_head=8)

register(
    ArchSpec(
        name="vit_for_small_dataset",
        torch="vit_torch.vit_for_small_dataset:ViT",
        flax="vit_flax.vit_for_small_dataset:ViT",
        paper="Vision Transformer for Small-Size Datasets (Lee, Lee and Song, 2021)",
        cases=(
            # mean pooling normalizes the pooled token (pool, then norm); a rectangular image, one channel, another
            # head width. First, as the case the tampered-eps check runs: no norm of this model reads a small-variance
            # input (there is no norm after the patch projection), and in this case a LayerNorm eps of 1e-6 still
            # moves block00 past the tolerance (in the cls case it stays within)
            Case(
                "mean-rect-one-channel",
                dict(_SMALL, image_size=(8, 12), patch_size=4, pool="mean", heads=2, dim_head=12, channels=1),
                (image(c=1, h=8, w=12),),
                ("b", 10),
            ),
            Case(
                "cls-dropout",
                dict(_SMALL, image_size=16, patch_size=4, dropout=0.1, emb_dropout=0.1),
                (image(h=16, w=16),),
                ("b", 10),
            ),
        ),
    )
)
