"""Reference tables: cait."""

from __future__ import annotations

from vit_parity.tools.reference.common import SQUARE_ONLY, cait_stack, patch_embedding
from vit_parity.tools.reference.importer import Rule, Table

TABLES: dict[str, Table] = {
    "cait": Table(
        reference="vit_pytorch.cait:CaiT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *patch_embedding(),
            *cait_stack("patch_transformer", "patch_transformer", "i"),
            *cait_stack("cls_transformer", "cls_transformer", "j"),
            Rule("mlp_head.0", "norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=lambda c: {"i": c["depth"], "j": c["cls_depth"]},
        fixed={"channels": 3},  # the reference's CaiT takes RGB images
        differences=(SQUARE_ONLY,),
        # the reference drops layers in eval mode too (it never reads self.training): check it without
        check_with={"layer_dropout": 0.0},
    ),
}
