"""Reference tables: deepvit."""

from __future__ import annotations

from vit_parity.tools.reference.common import SQUARE_ONLY, depth, layers, patch_embedding
from vit_parity.tools.reference.importer import Rule, Table


def _deepvit_layers() -> tuple:
    """DeepViT's layers: ViT's, with the re-attention's head mixing and head norm inside the attention."""
    layer, attn = "transformer.layers.{i}", "transformer.blocks.{i}.attn"
    return (
        *layers("transformer", "transformer"),
        Rule(f"{layer}.0.reattn_weights", f"{attn}.mix_heads_post_attn"),
        Rule(f"{layer}.0.reattn_norm.1", f"{attn}.head_norm", "layernorm"),
    )


TABLES: dict[str, Table] = {
    "deepvit": Table(
        reference="vit_pytorch.deepvit:DeepViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *patch_embedding(),
            *_deepvit_layers(),
            Rule("mlp_head.0", "norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=depth,
        differences=(SQUARE_ONLY,),
    ),
}
