"""Spec entry of Tokens-to-Token ViT.

The token width grows ``kernel ** 2`` times per soft split and every width compiles its own programs, so the cases
are two, with few channels: two even (2, 2) splits, whose zero padding leaves border tokens of low variance (the
check of a wrong LayerNorm eps has teeth on them), with a token transformer between them and dropout; and the
default three splits (two token transformers, the second 441 wide) on a non-square image smaller than the model's
(cropped positions), with mean pooling and one head as wide as ``dim`` (no output projection).
"""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16)

register(
    ArchSpec(
        name="t2t",
        torch="vit_torch.t2t:T2TViT",
        flax="vit_flax.t2t:T2TViT",
        paper="Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet (Yuan et al., 2021)",
        cases=(
            Case(
                "even-splits-cls",
                dict(_SMALL, image_size=16, t2t_layers=((2, 2), (2, 2)), dropout=0.1, emb_dropout=0.1),
                (image(h=16, w=16),),
                ("b", 10),
            ),
            Case(
                "default-splits-mean-rect-smaller-input",
                dict(_SMALL, image_size=(32, 24), channels=1, heads=1, dim_head=32, pool="mean"),
                (image(c=1, h=24, w=16),),
                ("b", 10),
            ),
        ),
    )
)
