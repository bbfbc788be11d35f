"""The reference check of the ViT for small datasets, beyond test_reference.py's generic check."""

from __future__ import annotations

import pytest
from test_reference import reference_class

from vit_parity.tools import reference
from vit_parity.tools.reference import ReferenceImportError


def test_small_dataset_vit_rect_patch_fails_in_the_reference_and_is_refused() -> None:
    """vit-pytorch's small-dataset ViT hands its patch_size to its SPT unchanged, which sizes patches by one int: a
    (ph, pw) patch_size fails to build there, and the import refuses such a config."""
    config = dict(image_size=16, patch_size=(4, 2), num_classes=10, dim=32, depth=1, heads=4, mlp_dim=64, dim_head=8)
    with pytest.raises(TypeError, match="can't multiply sequence"):
        reference_class("vit_for_small_dataset")(**config)
    with pytest.raises(ReferenceImportError, match="one int patch_size"):
        reference.our_config("vit_for_small_dataset", reference.reference_config("vit_for_small_dataset", config))
