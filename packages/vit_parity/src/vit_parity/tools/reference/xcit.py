"""Reference tables: xcit."""

from __future__ import annotations

from vit_parity.tools.reference.common import (
    SQUARE_ONLY,
    as_token,
    cait_stack,
    feedforward,
    patch_embedding,
)
from vit_parity.tools.reference.importer import Rule, Table


def _xcit_rules() -> tuple:
    """XCiT: XCA layers (0: layer-scaled cross-covariance attention, 1: local patch interaction, 2: feed-forward),
    the final norm, then CaiT-like class-attention layers without head mixing."""
    layer, block = "xcit_transformer.layers.{i}", "patch_transformer.blocks.{i}"
    xca, lpi = f"{layer}.0.fn", f"{layer}.1.fn.net"
    bn_leaves = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return (
        Rule("cls_token", "cls_token", fn=as_token),
        Rule("pos_embedding", "pos_embedding"),
        *patch_embedding(),
        Rule(f"{xca}.norm", f"{block}.norm1", "layernorm"),
        Rule(f"{xca}.to_qkv", f"{block}.attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{xca}.temperature", f"{block}.attn.temperature"),
        Rule(f"{xca}.to_out.0", f"{block}.attn.to_out", "linear"),
        Rule(f"{layer}.0.scale", f"{block}.ls1.gamma"),
        Rule(f"{lpi}.0", f"{block}.norm_lpi", "layernorm"),
        Rule(f"{lpi}.2", f"{block}.lpi.conv1", "conv"),
        Rule(f"{lpi}.3", f"{block}.lpi.bn", "batchnorm", leaves=bn_leaves),
        Rule(f"{lpi}.5", f"{block}.lpi.conv2", "conv"),
        Rule(f"{layer}.1.scale", f"{block}.ls_lpi.gamma"),
        *feedforward(f"{layer}.2.fn.net", block, out=4),
        Rule(f"{layer}.2.scale", f"{block}.ls2.gamma"),
        Rule("final_norm", "patch_transformer.norm", "layernorm"),
        *cait_stack("cls_transformer", "cls_transformer", "j", mix=False),
        Rule("mlp_head.0", "norm", "layernorm"),
        Rule("mlp_head.1", "mlp_head", "linear"),
    )


TABLES: dict[str, Table] = {
    "xcit": Table(
        reference="vit_pytorch.xcit:XCiT",
        rules=_xcit_rules(),
        counts=lambda c: {"i": c["depth"], "j": c["cls_depth"]},
        fixed={"channels": 3},  # the reference's XCiT takes RGB images
        differences=(SQUARE_ONLY,),
        # the reference drops layers in eval mode too (it never reads self.training): check it without
        check_with={"layer_dropout": 0.0},
    ),
}
