"""The reference check of the learnable-memory ViT's adapter, beyond test_reference.py's generic check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_reference import ATOL, RTOL, SEED, build_reference, full_size, logits

from vit_parity.core.spec import REGISTRY
from vit_parity.tools import reference
from vit_parity.tools.reference import ReferenceImportError
from vit_torch.checkpoint import load_state, module_kinds, state_numpy


def test_adapter_gives_the_reference_logits() -> None:
    """A reference Adapter on a reference ViT of learnable memory (the registry case's configs): its state dict
    (the ViT under ``vit.``, the memories, the task token and head, the saved attention mask) imports as
    "learnable_memory_vit_adapter"; ours gives the adapter's logits and, from the same import, the ViT's own logits,
    within 1e-5, and the mask it computes is the reference's buffer."""
    from vit_pytorch.learnable_memory_vit import Adapter

    from vit_parity.core.facts.learnable_memory_vit import memory_mask
    from vit_parity.core.spec import build_models

    case = REGISTRY["learnable_memory_vit_adapter"].cases[0]
    name, vit_config = case.models["vit"]
    vit_config = reference.reference_config(name, vit_config)
    ref_vit = build_reference(name, vit_config)
    torch.manual_seed(SEED + 3)
    ref = Adapter(vit=ref_vit, **case.config).eval()
    gen = torch.Generator().manual_seed(SEED + 4)
    with torch.no_grad():  # the adapter's head norm away from one and zero
        for key, tensor in ref.state_dict().items():
            if key.startswith("mlp_head.") and tensor.ndim == 1:
                tensor += 0.5 * torch.randn(tensor.shape, generator=gen)
    state = state_numpy(ref)
    config = {"vit": {"__model__": name, "config": vit_config}, **case.config}
    ckpt = reference.import_state("learnable_memory_vit_adapter", state, config)
    assert not any("attn_mask" in k for k in ckpt.tensors)
    ours = REGISTRY["learnable_memory_vit_adapter"].load_class("torch")(**build_models(ckpt.config, "torch"))
    assert ckpt.kinds == module_kinds(ours), "the kinds the rules name are not the model's"
    ours = load_state(ours, ckpt).eval()
    tokens = ref_vit.pos_embedding.shape[-2]
    np.testing.assert_array_equal(memory_mask(tokens, case.config["num_memories_per_layer"]), state["attn_mask"])
    inputs = case.sample("torch", SEED)
    want, got = logits("learnable_memory_vit_adapter", case, ref, inputs), logits(name, case, ours, inputs)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    want, got = logits(name, case, ref_vit, inputs), logits(name, case, ours.vit, inputs)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_learnable_memory_vit_ignores_pool_in_the_reference() -> None:
    """The reference's ViT of learnable memory takes pool='mean' but classifies its class token all the same; ours
    classifies the mean of every token, so the import refuses (naming why) and the same weights give other logits."""
    case = REGISTRY["learnable_memory_vit"].case("mean-rect-smaller-input")
    config = reference.reference_config("learnable_memory_vit", case.config)
    with pytest.raises(ReferenceImportError, match="always classifies its class token"):
        reference.our_config("learnable_memory_vit", config)
    ref_mean = build_reference("learnable_memory_vit", config)
    ref_cls = build_reference("learnable_memory_vit", {**config, "pool": "cls"})
    inputs = full_size(case, {"h": 16, "w": 16})  # the reference adds its whole position table
    want = logits("learnable_memory_vit", case, ref_cls, inputs)
    np.testing.assert_array_equal(logits("learnable_memory_vit", case, ref_mean, inputs), want)
    ckpt = reference.import_state("learnable_memory_vit", state_numpy(ref_mean), {**config, "pool": "cls"})
    ours = load_state(REGISTRY["learnable_memory_vit"].load_class("torch")(**case.config), ckpt).eval()
    assert not np.allclose(logits("learnable_memory_vit", case, ours, inputs), want, rtol=1e-3, atol=1e-3)


def test_learnable_memory_one_wide_head_keeps_a_projection_in_the_reference() -> None:
    """With heads=1 and dim_head=dim the reference's attention keeps its output projection; this library's has none,
    so the import of the ViT, and of an adapter on it, refuses."""
    config = {**REGISTRY["learnable_memory_vit"].cases[0].config, "heads": 1}
    config["dim_head"] = config["dim"]
    state = build_reference("learnable_memory_vit", config).state_dict()
    assert "transformer.layers.0.0.to_out.0.weight" in state
    with pytest.raises(ReferenceImportError, match="no output projection"):
        reference.our_config("learnable_memory_vit", config)
    adapter = {"vit": {"__model__": "learnable_memory_vit", "config": config}, "num_memories_per_layer": 2}
    with pytest.raises(ReferenceImportError, match="no output projection"):
        reference.our_config("learnable_memory_vit_adapter", adapter)
