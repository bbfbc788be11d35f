"""The reference check of the patch merger ViT, beyond test_reference.py's generic check."""

from __future__ import annotations

import pytest
import torch
from test_reference import SEED, build_reference

from vit_parity.core.spec import REGISTRY
from vit_parity.tools import reference
from vit_parity.tools.reference import ReferenceImportError
from vit_torch.checkpoint import state_numpy


def test_patch_merger_default_layer_never_merges_at_depth_one_in_the_reference() -> None:
    """vit-pytorch's patch merger runs after layer ``patch_merge_layer`` (``depth // 2`` by default) counted from 1:
    with depth=1 and the default that is layer 0, so it never merges (its queries change nothing); this model merges
    after the only block, so the import refuses such a config, naming why."""
    case = REGISTRY["vit_with_patch_merger"].case("merge-mid-dropout")
    config = {**reference.reference_config("vit_with_patch_merger", case.config), "depth": 1}
    model = build_reference("vit_with_patch_merger", config)
    img = torch.from_numpy(case.sample("torch", SEED)[0])
    with torch.no_grad():
        before = model(img)
        model.transformer.patch_merger.queries.add_(1.0)
        assert torch.equal(model(img), before)  # the merger is unused
    with pytest.raises(ReferenceImportError, match="never merges"):
        reference.import_state("vit_with_patch_merger", state_numpy(model), config)
    with pytest.raises(ReferenceImportError, match="never merges"):
        reference.our_config("vit_with_patch_merger", {**config, "depth": 2, "patch_merge_layer": 0})
