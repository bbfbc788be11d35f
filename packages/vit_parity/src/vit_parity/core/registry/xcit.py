"""Spec entry of XCiT (cross-covariance attention, local patch interaction with BatchNorm, class attention, layer
dropout)."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=32, heads=4, mlp_dim=64, dim_head=8)
_KERNEL_5_DROP = dict(local_patch_kernel_size=5, layer_dropout=0.5)

register(
    ArchSpec(
        name="xcit",
        torch="vit_torch.xcit:XCiT",
        flax="vit_flax.xcit:XCiT",
        paper="XCiT: Cross-Covariance Image Transformers (El-Nouby et al., 2021)",
        cases=(
            Case(
                "two-class-blocks",
                dict(_SMALL, image_size=16, patch_size=4, depth=1, cls_depth=2, dropout=0.1, emb_dropout=0.1),
                (image(h=16, w=16),),
                ("b", 10),
            ),
            # layer dropout draws in training, but with one block per stack it always keeps it (at least one of
            # each stack runs): the generic tests ask every parameter for a gradient; test_xcit* drop blocks
            Case(
                "kernel-5-layer-dropout-rect-smaller-input",
                dict(_SMALL, image_size=16, patch_size=4, depth=1, cls_depth=1, heads=3, **_KERNEL_5_DROP),
                (image(h=8, w=12),),
                ("b", 10),
            ),
        ),
    )
)
