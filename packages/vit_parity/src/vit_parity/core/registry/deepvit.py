"""Spec entry of DeepViT (re-attention)."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=32, depth=1, heads=4, mlp_dim=64, dim_head=8)

register(
    ArchSpec(
        name="deepvit",
        torch="vit_torch.deepvit:DeepViT",
        flax="vit_flax.deepvit:DeepViT",
        paper="DeepViT: Towards Deeper Vision Transformer (Zhou et al., 2021)",
        cases=(
            Case(
                "cls",
                dict(_SMALL, image_size=16, patch_size=4, dropout=0.1, emb_dropout=0.1),
                (image(h=16, w=16),),
                ("b", 10),
            ),
            # mean pooling normalizes the pooled token (pool, then norm); a smaller, non-square input, one channel
            Case(
                "mean-rect-smaller-input",
                dict(_SMALL, image_size=16, patch_size=4, pool="mean", heads=3, channels=1),
                (image(c=1, h=8, w=12),),
                ("b", 10),
            ),
        ),
    )
)
