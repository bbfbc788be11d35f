"""Spec entry of ATS-ViT (adaptive token sampling)."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=32, mlp_dim=64)

register(
    ArchSpec(
        name="ats_vit",
        torch="vit_torch.ats_vit:ViT",
        flax="vit_flax.ats_vit:ViT",
        paper="ATS: Adaptive Token Sampling For Efficient Vision Transformers (Fayyaz et al., 2021)",
        cases=(
            # 16 patches; layer 0 keeps at most 8, layer 1 samples again among them (with padding). No dropout: it is
            # ViT's, and each dropout draw adds 10-20 s to the compilation of flax's training pass here
            Case(
                "sample-twice",
                dict(
                    _SMALL,
                    image_size=16,
                    patch_size=4,
                    depth=2,
                    max_tokens_per_depth=(8, 4),
                    heads=4,
                    dim_head=8,
                ),
                (image(h=16, w=16),),
                ("b", 10),
            ),
            # a 12 x 12 grey image in a (16, 12) model: 9 patches, within layer 0's budget (no sampling there), then
            # layer 1 keeps at most 5
            Case(
                "budget-above-patches-rect-smaller-input",
                dict(
                    _SMALL,
                    image_size=(16, 12),
                    patch_size=4,
                    channels=1,
                    depth=2,
                    max_tokens_per_depth=(12, 5),
                    heads=2,
                    dim_head=16,
                ),
                (image(c=1, h=12, w=12),),
                ("b", 10),
            ),
        ),
    )
)
