"""Reference tables: distill."""

from __future__ import annotations

from vit_parity.tools.reference.common import MEAN_POOL_VIT, NO_HEAD, VIT_RULES, as_token, depth, under
from vit_parity.tools.reference.importer import Rule, Table

TABLES: dict[str, Table] = {
    "distill": Table(
        # the reference's student holds no distillation token or head (its DistillWrapper does): the import reads
        # the wrapper's state dict (a plain DistillableViT's imports as "vit") and leaves the teacher out
        reference="vit_pytorch.distill:DistillableViT",
        rules=(
            *under("student.", VIT_RULES),
            Rule("distillation_token", "distillation_token", fn=as_token),
            Rule("distill_mlp.1", "distill_head", "linear"),
        ),
        counts=depth,
        differences=(MEAN_POOL_VIT, NO_HEAD),
        dropped=("teacher.",),
    ),
}
