"""Reference tables: cct, cct_3d."""

from __future__ import annotations

from vit_parity.tools.reference.importer import Difference, Rule, Table


def _cct_rules() -> tuple:
    block, ours = "classifier.blocks.{i}", "transformer.blocks.{i}"
    return (
        Rule("tokenizer.conv_layers.{c}.0", "tokenizer.convs.{c}", "conv", leaves=("weight",)),
        Rule("classifier.positional_emb", "positional_emb", when=lambda c: c["positional_embedding"] == "learnable"),
        # the reference saves its sinusoid; this library recomputes the same table and does not save it
        Rule("classifier.positional_emb", None, when=lambda c: c["positional_embedding"] == "sine"),
        Rule(f"{block}.pre_norm", f"{ours}.norm1", "layernorm"),
        Rule(f"{block}.self_attn.qkv", f"{ours}.attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{block}.self_attn.proj", f"{ours}.attn.to_out", "linear"),
        Rule(f"{block}.norm1", f"{ours}.norm2", "layernorm"),
        Rule(f"{block}.linear1", f"{ours}.ff.fc1", "linear"),
        Rule(f"{block}.linear2", f"{ours}.ff.fc2", "linear"),
        Rule("classifier.norm", "transformer.norm", "layernorm"),
        Rule("classifier.attention_pool", "attention_pool", "linear"),
        Rule("classifier.fc", "fc", "linear"),
    )


_CCT_ONE_HEAD = Difference(
    "with num_heads=1 this library's attention has no output projection (one head as wide as the model); the "
    "reference's CCT keeps one",
    lambda c: c["num_heads"] == 1,
)


TABLES: dict[str, Table] = {
    "cct": Table(
        reference="vit_pytorch.cct:CCT",
        rules=_cct_rules(),
        counts=lambda c: {"i": c["num_layers"], "c": c["n_conv_layers"]},
        differences=(_CCT_ONE_HEAD,),
    ),
    "cct_3d": Table(
        reference="vit_pytorch.cct_3d:CCT",
        rules=_cct_rules(),
        counts=lambda c: {"i": c["num_layers"], "c": c["n_conv_layers"]},
        # the reference's CCT passes these to its transformer itself (a second value is a TypeError there)
        fixed={"dropout_rate": 0.0, "attention_dropout": 0.1},
        differences=(_CCT_ONE_HEAD,),
    ),
}
