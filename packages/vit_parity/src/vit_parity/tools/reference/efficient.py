"""Reference tables: efficient_transformer, efficient.

vit-pytorch's ``efficient.ViT`` has no transformer of its own: it wraps the one it is given. The import maps it around
the reference's ``vit.Transformer`` (its plain pre-norm transformer, the same computation as this library's
``efficient.Transformer``), given in the config as this library's registry record ``{"__model__":
"efficient_transformer", "config": {dim, depth, heads, dim_head, mlp_dim}}``; a reference ``vit.Transformer`` alone
imports as ``efficient_transformer``. The reference's ``DistillableEfficientViT`` fails on every call (its shared
forward pass repeats a 2-D class token, and this ViT's is 3-D), so ``distill_efficient`` has no table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from vit_parity.core.config import MODEL_KEY
from vit_parity.core.facts.signatures import signature
from vit_parity.tools.reference.common import depth, layers, patch_embedding
from vit_parity.tools.reference.importer import Config, Difference, Rule, Table

_TRANSFORMER = "efficient_transformer"


def _strip(prefix: str, path: str | None) -> str | None:
    return None if path is None else path.removeprefix(prefix)


def _alone(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """The rules of a ``transformer.`` submodule as those of the transformer saved alone (its keys at the top)."""
    return tuple(
        replace(r, src=tuple(_strip("transformer.", s) for s in r.sources), dst=_strip("transformer.", r.dst))
        for r in rules
    )


# the reference's vit.Transformer alone: layers.{i} (attention, feed-forward) and the final norm
TRANSFORMER_RULES = _alone(
    (*layers("transformer", "transformer"), Rule("transformer.norm", "transformer.norm", "layernorm"))
)


def _is_library_transformer(value: Any) -> bool:
    """Whether ``value`` is this library's transformer as a registry record, with every required argument."""
    if not isinstance(value, Mapping) or value.get(MODEL_KEY) != _TRANSFORMER:
        return False
    inner = value.get("config")
    return isinstance(inner, Mapping) and all(name in inner for name in signature(_TRANSFORMER).required)


def _inner(config: Config) -> dict[str, Any]:
    """The transformer's arguments (defaults filled in) of an efficient ViT's ``config``."""
    return {**signature(_TRANSFORMER).defaults, **config["transformer"]["config"]}


def _nested(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """The transformer's rules under the ViT's ``transformer.``, their conditions reading the transformer's own
    arguments."""

    def inner_when(rule: Rule) -> Any:
        own = rule.when
        return None if own is None else (lambda c: own(_inner(c)))

    return tuple(
        replace(
            r, src=tuple(f"transformer.{s}" for s in r.sources), dst=None if r.dst is None else f"transformer.{r.dst}",
            when=inner_when(r),
        )
        for r in rules
    )  # fmt: skip


def _inner_depth(config: Config) -> dict[str, int]:
    return {"i": _inner(config)["depth"]}


NOT_LIBRARY_TRANSFORMER = Difference(
    "the reference's efficient ViT wraps any transformer; this import maps it around vit_pytorch.vit.Transformer "
    f'only, given as {{"{MODEL_KEY}": "{_TRANSFORMER}", "config": {{"dim": ..., "depth": ..., "heads": ..., '
    '"dim_head": ..., "mlp_dim": ...}}',
    lambda c: not _is_library_transformer(c["transformer"]),
)

SQUARE_PATCH_ONLY = Difference(
    "vit-pytorch's efficient ViT takes a square patch_size (an int); this one also takes (ph, pw)",
    lambda c: not isinstance(c["patch_size"], int),
)

TABLES: dict[str, Table] = {
    _TRANSFORMER: Table(
        reference="vit_pytorch.vit:Transformer",
        rules=TRANSFORMER_RULES,
        counts=depth,
    ),
    "efficient": Table(
        reference="vit_pytorch.efficient:ViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *patch_embedding(),
            *_nested(TRANSFORMER_RULES),
            Rule("mlp_head.0", "mlp_head.norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head.fc", "linear"),
        ),
        counts=_inner_depth,
        differences=(NOT_LIBRARY_TRANSFORMER, SQUARE_PATCH_ONLY),
    ),
}
