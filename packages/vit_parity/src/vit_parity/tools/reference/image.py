"""Reference tables: vit, simple_vit."""

from __future__ import annotations

from vit_parity.tools.reference.common import (
    MEAN_POOL_VIT,
    NO_HEAD,
    ONE_WIDE_HEAD,
    VIT_RULES,
    depth,
    layers,
    patch_embedding,
)
from vit_parity.tools.reference.importer import Rule, Table

TABLES: dict[str, Table] = {
    "vit": Table(
        reference="vit_pytorch.vit:ViT",
        rules=VIT_RULES,
        counts=depth,
        differences=(MEAN_POOL_VIT, NO_HEAD),
    ),
    "simple_vit": Table(
        reference="vit_pytorch.simple_vit:SimpleViT",
        rules=(
            *patch_embedding(),
            *layers("transformer", "transformer", simple=True),
            Rule("transformer.norm", "transformer.norm", "layernorm"),
            Rule("linear_head", "linear_head", "linear"),
        ),
        counts=depth,
        differences=(ONE_WIDE_HEAD,),
    ),
}
