"""Spec entry of the parallel ViT."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
# three branches; mean pooling normalizes the pooled token (pool, then norm); a non-square image, one channel, one
# head. Four channels: the patch embedding has no norm, so the block norms read tokens of about unit variance, and
# only over few channels does some token's variance fall low enough for a wrong LayerNorm eps to show above the
# parity tolerance (the first case is the one the tampered-eps test runs)
_THREE_MEAN_RECT = dict(
    _SMALL, dim=4, mlp_dim=16, heads=1, dim_head=8, image_size=(16, 12), patch_size=4, num_parallel_branches=3,
    pool="mean", channels=1,
)  # fmt: skip

register(
    ArchSpec(
        name="parallel_vit",
        torch="vit_torch.parallel_vit:ViT",
        flax="vit_flax.parallel_vit:ViT",
        paper="Three things everyone should know about Vision Transformers (Touvron et al., 2022)",
        cases=(
            Case("three-branches-mean-rect", _THREE_MEAN_RECT, (image(c=1, h=16, w=12),), ("b", 10)),
            Case(
                "two-branches-cls-dropout",
                dict(_SMALL, image_size=16, patch_size=4, dropout=0.1, emb_dropout=0.1),
                (image(h=16, w=16),),
                ("b", 10),
            ),
        ),
    )
)
