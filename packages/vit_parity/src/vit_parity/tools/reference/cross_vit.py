"""Reference tables: cross_vit."""

from __future__ import annotations

from dataclasses import replace

from vit_parity.tools.reference.common import feedforward, patch_embedding, split_q_kv
from vit_parity.tools.reference.importer import Config, Difference, Rule, Table


def _widths_differ(config: Config) -> bool:
    return config["sm_dim"] != config["lg_dim"]


def _cross_vit_counts(config: Config) -> dict[str, int]:
    names = {"d": "depth", "c": "cross_attn_depth", "sm": "sm_enc_depth", "lg": "lg_enc_depth"}
    return {field: config[name] for field, name in names.items()}


def _cross_vit_one_wide_head(config: Config) -> bool:
    widths = [
        (config["sm_enc_heads"], config["sm_enc_dim_head"], config["sm_dim"]),
        (config["lg_enc_heads"], config["lg_enc_dim_head"], config["lg_dim"]),
        *((config["cross_attn_heads"], config["cross_attn_dim_head"], c) for c in (config["sm_dim"], config["lg_dim"])),
    ]
    return any(heads == 1 and dim_head == dim for heads, dim_head, dim in widths)


def _cross_vit_rules() -> tuple:
    """CrossViT: two image embedders, ``depth`` multi-scale blocks (a transformer per branch (0, 1), then rounds of
    cross-attention (2): the small branch's class token reads the large branch (0) and the other way round (1)),
    and a head per branch."""
    rules: list = []
    for branch in ("sm", "lg"):
        rules += [
            Rule(f"{branch}_image_embedder.cls_token", f"{branch}_image_embedder.cls_token"),
            Rule(f"{branch}_image_embedder.pos_embedding", f"{branch}_image_embedder.pos_embedding"),
            *(replace(r, src=f"{branch}_image_embedder.{r.src}", dst=f"{branch}_image_embedder.{r.dst}")
              for r in patch_embedding()),
            Rule(f"{branch}_mlp_head.0", f"{branch}_mlp_head.norm", "layernorm"),
            Rule(f"{branch}_mlp_head.1", f"{branch}_mlp_head.fc", "linear"),
        ]  # fmt: skip
    for index, branch in enumerate(("sm", "lg")):
        layer = f"multi_scale_encoder.layers.{{d}}.{index}.layers.{{{branch}}}"
        block = f"multi_scale_encoder.layers.{{d}}.{branch}_transformer.blocks.{{{branch}}}"
        rules += [
            Rule(f"{layer}.0.norm", f"{block}.norm1", "layernorm"),
            split_q_kv(f"{layer}.0", f"{block}.attn.to_qkv"),
            Rule(f"{layer}.0.to_out.0", f"{block}.attn.to_out", "linear"),
            *feedforward(f"{layer}.1.net", block, out=4),
            Rule(
                f"multi_scale_encoder.layers.{{d}}.{index}.norm",
                f"multi_scale_encoder.layers.{{d}}.{branch}_transformer.norm",
                "layernorm",
            ),
        ]
        src = f"multi_scale_encoder.layers.{{d}}.2.layers.{{c}}.{index}"
        dst = f"multi_scale_encoder.layers.{{d}}.{branch}_attend_{'lg' if branch == 'sm' else 'sm'}.{{c}}"
        rules += [
            Rule(f"{src}.project_in", f"{dst}.project_in", "linear", when=_widths_differ),
            Rule(f"{src}.fn.norm", f"{dst}.norm", "layernorm"),
            split_q_kv(f"{src}.fn", f"{dst}.attn.to_qkv"),
            Rule(f"{src}.fn.to_out.0", f"{dst}.attn.to_out", "linear"),
            Rule(f"{src}.project_out", f"{dst}.project_out", "linear", when=_widths_differ),
        ]
    return tuple(rules)


TABLES: dict[str, Table] = {
    "cross_vit": Table(
        reference="vit_pytorch.cross_vit:CrossViT",
        rules=_cross_vit_rules(),
        counts=_cross_vit_counts,
        differences=(
            Difference(
                "vit-pytorch's CrossViT takes a square image_size and patch sizes (ints); this one also takes (h, w)",
                lambda c: not all(isinstance(c[k], int) for k in ("image_size", "sm_patch_size", "lg_patch_size")),
            ),
            Difference(
                "with one head as wide as its stream (heads=1, dim_head=dim) this library's attention has no "
                "output projection; the reference's CrossViT keeps one",
                _cross_vit_one_wide_head,
            ),
        ),
    ),
}
