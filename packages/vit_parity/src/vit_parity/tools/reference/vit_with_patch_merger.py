"""Reference tables: vit_with_patch_merger."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vit_parity.tools.reference.common import depth, layers, patch_embedding
from vit_parity.tools.reference.importer import Config, Difference, Rule, Table


def _patch_positions(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """The reference's ``(1, patches + 1, dim)`` positions without the last row: it has no class token and adds
    only the first ``patches`` rows, as this model's ``(1, patches, dim)``."""
    return arrays[0][:, :-1]


def _never_merges(config: Config) -> bool:
    """The reference merges after layer ``patch_merge_layer`` (``depth // 2`` by default), counted from 1; at 0 or
    beyond ``depth`` it never merges (its merger's weights are unused)."""
    layer = config["patch_merge_layer"]
    layer = config["depth"] // 2 if layer is None else layer
    return not 1 <= layer <= config["depth"]


TABLES: dict[str, Table] = {
    "vit_with_patch_merger": Table(
        reference="vit_pytorch.vit_with_patch_merger:ViT",
        rules=(
            *patch_embedding(),
            Rule("pos_embedding", "pos_embedding", fn=_patch_positions),
            *layers("transformer", "transformer"),
            Rule("transformer.patch_merger.norm", "transformer.patch_merger.norm", "layernorm"),
            Rule("transformer.patch_merger.queries", "transformer.patch_merger.queries"),
            Rule("transformer.norm", "transformer.norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=depth,
        differences=(
            Difference(
                "the reference never merges the tokens when its merge layer (patch_merge_layer, or depth // 2 by "
                "default, counted from 1) is outside 1..depth (e.g. depth=1 with the default); this model merges "
                "after the only block when depth=1 and refuses any other layer outside 1..depth",
                _never_merges,
            ),
        ),
    ),
}
