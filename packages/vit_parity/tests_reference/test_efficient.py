"""The reference check of the pluggable-transformer ViT and its student, beyond test_reference.py's generic check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_reference import ATOL, RTOL, SEED, full_size, reference_class, reference_wrapper, torch_inputs

from vit_parity.core.spec import REGISTRY, Case
from vit_parity.tools import reference
from vit_parity.tools.parity import perturb_constants
from vit_parity.tools.reference import ReferenceImportError
from vit_torch.checkpoint import load_state, module_kinds, state_numpy


def reference_efficient(case: Case, seed: int = SEED) -> tuple[torch.nn.Module, dict[str, Any]]:
    """vit-pytorch's efficient ViT of an ``efficient`` registry case around its vit.Transformer (the case's
    registry transformer, same arguments), seeded, in eval mode, its constant tensors perturbed; and the reference
    config the import reads (the transformer as this library's registry record)."""
    from vit_pytorch.vit import Transformer

    arch, sub = case.models["transformer"]
    config = {**reference.reference_config("efficient", case.config), "transformer": {"__model__": arch, "config": sub}}
    torch.manual_seed(seed)
    model = reference_class("efficient")(**{**config, "transformer": Transformer(**sub)}).eval()
    return perturb_constants(model, seed + 1), config


def test_efficient_gives_the_reference_logits_around_its_transformer() -> None:
    """vit-pytorch's efficient ViT around its vit.Transformer: the weights imported as "efficient" (the transformer's
    keys under transformer.*, built from the registry record in the checkpoint) give its logits on an image of the
    model's size; on the case's smaller image the reference adds the first entries of its flattened position table,
    this ViT the top-left part of its position grid."""
    from vit_parity.core import spec

    case = REGISTRY["efficient"].cases[0]
    ref_model, config = reference_efficient(case)
    ckpt = reference.import_state("efficient", state_numpy(ref_model), config)
    assert ckpt.config["transformer"] == config["transformer"]
    torch.manual_seed(SEED + 2)
    ours = REGISTRY["efficient"].load_class("torch")(**spec.build_models(ckpt.config, "torch"))
    assert ckpt.kinds == module_kinds(ours), "the kinds the rules name are not the model's"
    ours = load_state(ours, ckpt).eval()

    def both(inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            return ref_model(*torch_inputs(inputs)).numpy(), ours(*torch_inputs(inputs)).numpy()

    h, w = case.config["image_size"]
    want, got = both(full_size(case, {"h": h, "w": w}))
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    want, got = both(case.sample("torch", SEED))
    assert not np.allclose(got, want, rtol=RTOL, atol=ATOL)
    # another transformer (or a tuple patch) has no import, and the refusal says why
    with pytest.raises(ReferenceImportError, match=r"vit_pytorch\.vit\.Transformer only"):
        reference.our_config("efficient", {**config, "transformer": {"__model__": "vit", "config": {}}})
    with pytest.raises(ReferenceImportError, match="square patch_size"):
        reference.our_config("efficient", {**config, "patch_size": (4, 2)})


def test_distill_efficient_fails_in_the_reference() -> None:
    """A reference bug: vit-pytorch's DistillableEfficientViT fails on every call, as its DistillableT2TViT does (the
    shared forward pass repeats a 2-D class token, and the efficient ViT's is 3-D), alone or in its DistillWrapper,
    so it has no weights to import; ours works (its own tests, and parity)."""
    from einops import EinopsError
    from vit_pytorch.distill import DistillableEfficientViT
    from vit_pytorch.vit import Transformer

    case = REGISTRY["distill_efficient"].cases[0]
    _, sub = case.models["transformer"]
    student = DistillableEfficientViT(**case.config, transformer=Transformer(**sub)).eval()
    img = torch.from_numpy(case.sample("torch", SEED)[0])
    with pytest.raises(EinopsError, match="expected 2 dims"):
        student(img)
    with pytest.raises(EinopsError, match="expected 2 dims"):
        reference_wrapper(student, case.config["num_classes"])(img, torch.zeros(img.shape[0], dtype=torch.long))
    # the plain efficient ViT of the same arguments runs
    assert reference_class("efficient")(**case.config, transformer=Transformer(**sub)).eval()(img).shape == (2, 10)
