"""Spec entries of distillation through attention (DeiT): the three students and the wrapper.

The students' default call is the plain model's (the class logits): the distillation token and head are unused
there, so those cases mark them frozen; their distillation pass is what the wrapper cases run (and the students'
own tests compare across backends). The wrapper's cases build a registry ViT teacher and a student from their own
configs, take images and integer labels, give a scalar loss and leave the teacher without gradients: soft
distillation with the wrapper's LayerNorm on a ViT student with dropout, and hard distillation of a T2T-ViT
student. The efficient-attention student's transformer is built from the registry (this library's, as the
``efficient`` entry's).
"""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, HookRef, Input, image, register

PAPER = "Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)"

_VIT = dict(image_size=16, patch_size=8, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
_T2T = dict(
    image_size=16, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16, t2t_layers=((2, 2), (2, 2))
)
_TEACHER = dict(image_size=16, patch_size=8, num_classes=10, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)
# unused by a student's default call
_DISTILL_ONLY = ("distillation_token", "distill_head")

_IMG = image(h=16, w=16)
_WRAPPER_INPUTS = (_IMG, Input("labels", "b", {"b": _IMG.sizes["b"]}))
_LABELS = HookRef.to("vit_parity.tools.fixtures:ImagesAndLabels", num_classes=10)

register(
    ArchSpec(
        name="distill",
        torch="vit_torch.distill:DistillableViT",
        flax="vit_flax.distill:DistillableViT",
        paper=PAPER,
        cases=(
            Case("cls", dict(_VIT, dropout=0.1, emb_dropout=0.1), (_IMG,), ("b", 10), frozen=_DISTILL_ONLY),
            Case("mean", dict(_VIT, pool="mean"), (_IMG,), ("b", 10), frozen=_DISTILL_ONLY),
        ),
    )
)

register(
    ArchSpec(
        name="distill_t2t",
        torch="vit_torch.distill:DistillableT2TViT",
        flax="vit_flax.distill:DistillableT2TViT",
        paper=PAPER,
        cases=(Case("even-splits", _T2T, (_IMG,), ("b", 10), frozen=_DISTILL_ONLY),),
    )
)

register(
    ArchSpec(
        name="distill_efficient",
        torch="vit_torch.distill:DistillableEfficientViT",
        flax="vit_flax.distill:DistillableEfficientViT",
        paper=PAPER,
        cases=(
            Case(
                "cls",
                dict(image_size=16, patch_size=8, num_classes=10, dim=32),
                (_IMG,),
                ("b", 10),
                models={
                    "transformer": ("efficient_transformer", dict(dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64))
                },
                frozen=_DISTILL_ONLY,
            ),
        ),
    )
)

register(
    ArchSpec(
        name="distill_wrapper",
        torch="vit_torch.distill:DistillWrapper",
        flax="vit_flax.distill:DistillWrapper",
        paper=PAPER,
        cases=(
            Case(
                "soft-layernorm",
                dict(temperature=3.0, alpha=0.5, mlp_layernorm=True),
                _WRAPPER_INPUTS,
                (),
                hook=_LABELS,
                models={"teacher": ("vit", _TEACHER), "student": ("distill", dict(_VIT, dropout=0.1))},
                frozen=("teacher",),
            ),
            Case(
                "hard-t2t",
                dict(hard=True, alpha=0.7),
                _WRAPPER_INPUTS,
                (),
                hook=_LABELS,
                models={"teacher": ("vit", _TEACHER), "student": ("distill_t2t", _T2T)},
                frozen=("teacher",),
            ),
        ),
    )
)
