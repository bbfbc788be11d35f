"""Reference tables: vit_3d, simple_vit_3d, vivit."""

from __future__ import annotations

from vit_parity.tools.reference.common import (
    ONE_WIDE_HEAD,
    attention,
    depth,
    feedforward,
    flatten_grid,
    layers,
    only_when,
    patch_embedding,
    project_out,
)
from vit_parity.tools.reference.importer import Config, Difference, Rule, Table


def _encoder(config: Config) -> bool:
    return config["variant"] == "factorized_encoder"


def _self_attention(config: Config) -> bool:
    return config["variant"] == "factorized_self_attention"


def _factorized_layers() -> tuple:
    """The reference's ``FactorizedTransformer``: layer ``{s}`` holds a spatial attention (0), a temporal one (1)
    and the feed-forward (2), each with its own norm; ours are one ``FactorizedBlock``."""
    layer, block = "factorized_transformer.layers.{s}", "factorized_transformer.blocks.{s}"
    return (
        *attention(f"{layer}.0", block, out="to_out.0", out_bias=True, when=project_out),
        Rule(f"{layer}.1.norm", f"{block}.temporal_norm", "layernorm"),
        Rule(f"{layer}.1.to_qkv", f"{block}.temporal_attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{layer}.1.to_out.0", f"{block}.temporal_attn.to_out", "linear", when=project_out),
        *feedforward(f"{layer}.2.net", block, out=4),
        Rule("factorized_transformer.norm", "factorized_transformer.norm", "layernorm"),
    )


TABLES: dict[str, Table] = {
    "vit_3d": Table(
        reference="vit_pytorch.vit_3d:ViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *patch_embedding(),
            *layers("transformer", "transformer"),
            # the reference's transformer has no final norm and its head starts with one: the same on the class
            # token (pool='cls'), which the norm sees alone in both
            Rule("mlp_head.0", "transformer.norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=depth,
        differences=(
            Difference(
                "with pool='mean' the reference normalizes the mean of the tokens (the LayerNorm opens its head); "
                "this ViT averages normalized tokens",
                lambda c: c["pool"] == "mean",
            ),
        ),
    ),
    "simple_vit_3d": Table(
        reference="vit_pytorch.simple_vit_3d:SimpleViT",
        rules=(
            *patch_embedding(),
            *layers("transformer", "transformer", simple=True),
            Rule("transformer.norm", "transformer.norm", "layernorm"),
            Rule("linear_head", "linear_head", "linear"),
        ),
        counts=depth,
        differences=(ONE_WIDE_HEAD,),
    ),
    "vivit": Table(
        reference="vit_pytorch.vivit:ViViT",
        rules=(
            Rule("pos_embedding", "pos_embedding", fn=flatten_grid),
            Rule("spatial_cls_token", "spatial_cls_token", when=lambda c: c["pool"] == "cls"),
            *patch_embedding(),
            Rule("mlp_head", "mlp_head", "linear"),
            # factorized encoder: a spatial, then a temporal transformer
            *only_when(
                _encoder,
                Rule("temporal_cls_token", "temporal_cls_token", when=lambda c: c["pool"] == "cls"),
                *layers("spatial_transformer", "spatial_transformer", "s"),
                Rule("spatial_transformer.norm", "spatial_transformer.norm", "layernorm"),
                *layers("temporal_transformer", "temporal_transformer", "t"),
                Rule("temporal_transformer.norm", "temporal_transformer.norm", "layernorm"),
            ),
            # factorized self-attention: each layer attends over space (0), then time (1), then its MLP (2)
            *only_when(_self_attention, *_factorized_layers()),
        ),
        counts=lambda c: {"s": c["spatial_depth"], "t": c["temporal_depth"]},
        ignored=("use_flash_attn",),  # the fused kernel or the explicit softmax: the same weights
        # its fused path keeps attention dropout on in eval mode: the reference check runs the explicit softmax
        check_with={"use_flash_attn": False},
    ),
}
