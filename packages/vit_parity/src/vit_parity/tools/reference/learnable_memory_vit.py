"""Reference tables: learnable_memory_vit, learnable_memory_vit_adapter.

The reference's ViT of learnable memory has separate ``to_q`` and ``to_kv`` projections (merged into our
``to_qkv``), no final norm in its transformer and a head ``Sequential(LayerNorm, Linear)`` (our ``mlp_head.norm``,
``mlp_head.fc``). Its ``Adapter`` holds the ViT under ``vit.`` (ours too) and saves its attention mask as a buffer
(``attn_mask``), which this library computes per call: the import drops it.

The adapter's config names its ViT as a recorded model, ``{"__model__": "learnable_memory_vit", "config": {...}}``,
the reference ViT's arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from vit_parity.core.config import MODEL_KEY
from vit_parity.core.facts.signatures import signature
from vit_parity.tools.reference.common import depth, feedforward, patch_embedding, project_out, split_q_kv
from vit_parity.tools.reference.importer import Config, Difference, ReferenceImportError, Rule, Table

_LAYER, _BLOCK = "transformer.layers.{i}", "transformer.blocks.{i}"

VIT_RULES = (
    Rule("cls_token", "cls_token"),
    Rule("pos_embedding", "pos_embedding"),
    *patch_embedding(),
    Rule(f"{_LAYER}.0.norm", f"{_BLOCK}.norm1", "layernorm"),
    split_q_kv(f"{_LAYER}.0", f"{_BLOCK}.attn.to_qkv"),
    Rule(f"{_LAYER}.0.to_out.0", f"{_BLOCK}.attn.to_out", "linear"),
    *feedforward(f"{_LAYER}.1.net", _BLOCK, out=4),
    Rule("mlp_head.0", "mlp_head.norm", "layernorm"),
    Rule("mlp_head.1", "mlp_head.fc", "linear"),
)

IGNORED_POOL = Difference(
    "the reference's ViT of learnable memory takes pool but always classifies its class token; with pool='mean' "
    "this one classifies the mean of every token",
    lambda c: c["pool"] == "mean",
)

ONE_WIDE_HEAD = Difference(
    "with one head as wide as the model (heads=1, dim_head=dim) this library's attention has no output "
    "projection; the reference's learnable-memory attention always has one",
    lambda c: not project_out(c),
)


def base_config(config: Config) -> dict[str, Any]:
    """The adapter's ViT arguments (``config["vit"]``, a recorded model), our defaults filled in."""
    vit = config["vit"]
    if not isinstance(vit, Mapping) or vit.get(MODEL_KEY) != "learnable_memory_vit":
        raise ReferenceImportError(
            'vit must be recorded as {"__model__": "learnable_memory_vit", "config": {...}} (the reference ViT\'s '
            f"arguments), got {vit!r}"
        )
    return {**signature("learnable_memory_vit").defaults, **vit["config"]}


def in_base(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """``rules`` of the ViT, read and written under ``vit.`` (the adapter keeps its ViT's keys there)."""
    return tuple(replace(r, src=tuple(f"vit.{s}" for s in r.sources), dst=f"vit.{r.dst}") for r in rules)


def _base_depth(config: Config) -> dict[str, int]:
    return depth(base_config(config))


TABLES: dict[str, Table] = {
    "learnable_memory_vit": Table(
        reference="vit_pytorch.learnable_memory_vit:ViT",
        rules=VIT_RULES,
        counts=depth,
        differences=(IGNORED_POOL, ONE_WIDE_HEAD),
    ),
    "learnable_memory_vit_adapter": Table(
        # the adapter reads its ViT's task token, never the ViT's pooled token: pool changes nothing here
        reference="vit_pytorch.learnable_memory_vit:Adapter",
        rules=(
            *in_base(VIT_RULES),
            Rule("memory_cls_token", "memory_cls_token"),
            Rule("memories_per_layer", "memories_per_layer"),
            Rule("mlp_head.0", "mlp_head.norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head.fc", "linear"),
            Rule("attn_mask", None),
        ),
        counts=_base_depth,
        differences=(Difference(ONE_WIDE_HEAD.why, lambda c: ONE_WIDE_HEAD.when(base_config(c))),),
    ),
}
