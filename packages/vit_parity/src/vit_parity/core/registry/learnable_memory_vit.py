"""Spec entries of learnable memory: the ViT and its task adapter.

The ViT's cases: class-token pooling with dropout; mean pooling (the head normalizes the mean of
every token) on a smaller, non-square, one-channel input. The adapter's case builds a registry ViT from its own
config (its keys stay ``vit.``) and leaves it without gradients: memories and a task token in both blocks.
"""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

PAPER = "Fine-tuning Image Transformers using Learnable Memory (Sandler et al., 2022)"

_SMALL = dict(image_size=16, num_classes=10, dim=32, heads=2, mlp_dim=64, dim_head=16)
_BASE = dict(image_size=16, patch_size=8, num_classes=10, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)

register(
    ArchSpec(
        name="learnable_memory_vit",
        torch="vit_torch.learnable_memory_vit:ViT",
        flax="vit_flax.learnable_memory_vit:ViT",
        paper=PAPER,
        cases=(
            Case(
                "cls-dropout",
                dict(_SMALL, patch_size=8, depth=1, dropout=0.1, emb_dropout=0.1),
                (image(h=16, w=16),),
                ("b", 10),
            ),
            Case(
                "mean-rect-smaller-input",
                dict(_SMALL, patch_size=4, depth=1, pool="mean", channels=1),
                (image(c=1, h=8, w=12),),
                ("b", 10),
            ),
        ),
    )
)

register(
    ArchSpec(
        name="learnable_memory_vit_adapter",
        torch="vit_torch.learnable_memory_vit:Adapter",
        flax="vit_flax.learnable_memory_vit:Adapter",
        paper=PAPER,
        cases=(
            Case(
                "memories",
                dict(num_memories_per_layer=3, num_classes=4),
                (image(h=16, w=16),),
                ("b", 4),
                models={"vit": ("learnable_memory_vit", dict(_BASE, dropout=0.1))},
                frozen=("vit",),
            ),
        ),
    )
)
