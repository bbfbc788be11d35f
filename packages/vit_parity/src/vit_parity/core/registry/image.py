"""Spec entries of the image classifiers."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128, dim_head=16)

register(
    ArchSpec(
        name="vit",
        torch="vit_torch.vit:ViT",
        flax="vit_flax.vit:ViT",
        paper="An Image is Worth 16x16 Words (Dosovitskiy et al., 2020)",
        cases=(
            Case("cls", dict(_SMALL, image_size=32, patch_size=8, dropout=0.1, emb_dropout=0.1), (image(),), ("b", 10)),
            Case("mean", dict(_SMALL, image_size=32, patch_size=8, pool="mean"), (image(),), ("b", 10)),
            Case("rect", dict(_SMALL, image_size=(32, 24), patch_size=(8, 4)), (image(h=32, w=24),), ("b", 10)),
            Case("smaller-input", dict(_SMALL, image_size=32, patch_size=8), (image(h=16, w=24),), ("b", 10)),
            Case(
                "one-head",
                dict(_SMALL, image_size=32, patch_size=8, heads=1, dim_head=64, channels=1),
                (image(c=1),),
                ("b", 10),
            ),
        ),
    )
)

register(
    ArchSpec(
        name="simple_vit",
        torch="vit_torch.simple_vit:SimpleViT",
        flax="vit_flax.simple_vit:SimpleViT",
        paper="Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022)",
        cases=(
            Case("base", dict(_SMALL, image_size=32, patch_size=8), (image(),), ("b", 10)),
            Case("rect", dict(_SMALL, image_size=(32, 24), patch_size=(8, 4)), (image(h=32, w=24),), ("b", 10)),
            Case("smaller-input", dict(_SMALL, image_size=32, patch_size=8), (image(h=24, w=16),), ("b", 10)),
        ),
    )
)
