"""Reference tables: parallel_vit."""

from __future__ import annotations

from vit_parity.tools.reference.common import attention, feedforward, project_out
from vit_parity.tools.reference.importer import Config, Rule, Table


def _counts(config: Config) -> dict[str, int]:
    return {"i": config["depth"], "j": config["num_parallel_branches"]}


# the reference's layer i holds its attention branches (0) and feed-forward branches (1), each a `Parallel` of
# `fns`; branch j of both is our block i's `branches.j` (a Block whose norm1 / attn and norm2 / ff are that branch)
_LAYER, _BRANCH = "transformer.layers.{i}", "transformer.blocks.{i}.branches.{j}"

TABLES: dict[str, Table] = {
    "parallel_vit": Table(
        reference="vit_pytorch.parallel_vit:ViT",
        rules=(
            Rule("to_patch_embedding.1", "to_patch_embedding.proj", "linear"),
            Rule("pos_embedding", "pos_embedding"),
            Rule("cls_token", "cls_token"),
            *attention(f"{_LAYER}.0.fns.{{j}}", _BRANCH, out="to_out.0", out_bias=True, when=project_out),
            *feedforward(f"{_LAYER}.1.fns.{{j}}.net", _BRANCH, out=4),
            Rule("mlp_head.0", "norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=_counts,
    ),
}
