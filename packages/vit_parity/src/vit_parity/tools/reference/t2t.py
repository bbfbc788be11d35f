"""Reference tables: t2t."""

from __future__ import annotations

from vit_parity.tools.reference.common import SQUARE_ONLY, attention, depth, feedforward, layers, only_when
from vit_parity.tools.reference.importer import Config, Rule, Table

_T2T_MAX_SPLITS = 8


def _t2t_token_stage() -> tuple:
    """T2T's ``to_patch_embedding`` Sequential: four entries per soft split (reshape, unfold, rearrange, a one-block
    transformer but after the last split), then the Linear; ours names the transformers and ``proj``."""
    rules: list = []
    for t in range(_T2T_MAX_SPLITS):

        def splits(c: Config, t: int = t) -> bool:
            return t < len(c["t2t_layers"]) - 1

        layer, block = f"to_patch_embedding.{4 * t + 3}.layers.0", f"to_patch_embedding.transformers.{t}.blocks.0"
        rules += only_when(
            splits,
            *attention(f"{layer}.0", block, out="to_out.0", out_bias=True, when=lambda c: False),
            *feedforward(f"{layer}.1.net", block, out=4),
            Rule(f"to_patch_embedding.{4 * t + 3}.norm", f"to_patch_embedding.transformers.{t}.norm", "layernorm"),
        )
        rules += only_when(
            lambda c, t=t: len(c["t2t_layers"]) == t + 1,
            Rule(f"to_patch_embedding.{4 * t + 4}", "to_patch_embedding.proj", "linear"),
        )
    return tuple(rules)


TABLES: dict[str, Table] = {
    "t2t": Table(
        reference="vit_pytorch.t2t:T2TViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *_t2t_token_stage(),
            *layers("transformer", "transformer"),
            Rule("transformer.norm", "transformer.norm", "layernorm"),
            Rule("mlp_head", "mlp_head", "linear"),
        ),
        counts=depth,
        differences=(SQUARE_ONLY,),
    ),
}
