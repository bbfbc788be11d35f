"""The reference check of the adaptive token sampling ViT, beyond test_reference.py's generic check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from test_reference import ATOL, RTOL, SEED, build_reference, imported

from vit_parity.core.spec import REGISTRY
from vit_parity.tools import reference


@contextlib.contextmanager
def reference_draws(draws: list[torch.Tensor]) -> Iterator[list[tuple[int, ...]]]:
    """vit-pytorch's ATS-ViT takes its Gumbel noise from ``draws`` (uniform numbers, one array per layer that samples,
    in order), cut to the width it asks for (its padded width, at most ours), through the same transform as ours.
    Yields the shapes it asked for."""
    import vit_pytorch.ats_vit as ats

    queue, asked = list(draws), []

    def sample_gumbel(shape: Any, device: Any, dtype: Any, eps: float = 1e-6) -> torch.Tensor:
        asked.append(tuple(shape))
        u = queue.pop(0)[..., : shape[-1]].to(device=device, dtype=dtype)
        return -torch.log(-torch.log(u + eps) + eps)

    original = ats.sample_gumbel
    ats.sample_gumbel = sample_gumbel
    try:
        yield asked
    finally:
        ats.sample_gumbel = original


def _ats_draw(model: torch.nn.Module, img: torch.Tensor, seed: int) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    return [None if s is None else torch.rand(s, generator=gen) for s in model.noise_shapes(img.shape)]


@pytest.mark.parametrize("case", REGISTRY["ats_vit"].cases, ids=lambda c: c.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ats_vit_gives_the_reference_logits_on_the_same_draw(case: Any, seed: int) -> None:
    """The reference's weights, imported, give its logits and its sampled patch ids when both models sample from the
    same uniform draw (ours as ``noise=``, the reference's through its ``sample_gumbel``)."""
    config = reference.reference_config("ats_vit", case.config)
    ref_model = build_reference("ats_vit", config)
    ours = imported("ats_vit", ref_model, config)
    img = torch.from_numpy(case.sample("torch", SEED + seed)[0])
    noise = _ats_draw(ours, img, seed)
    with torch.no_grad():
        with reference_draws([u for u in noise if u is not None]) as asked:
            want, want_ids = ref_model(img, return_sampled_token_ids=True)
        got, got_ids = ours(img, True, noise=noise)
    sampled = [s for s in ours.noise_shapes(img.shape) if s is not None]
    assert [s[:2] for s in asked] == [s[:2] for s in sampled], "the reference sampled in other layers"
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=RTOL, atol=ATOL)
    width = want_ids.shape[1]  # the reference pads to the batch's largest count, ours to the budget
    assert torch.equal(got_ids[:, :width], want_ids) and bool((got_ids[:, width:] == -1).all())


def test_ats_vit_reference_draws_in_eval_mode() -> None:
    """The reference draws Gumbel noise in eval mode too: two eval-mode calls disagree. Ours draws nothing in eval
    mode (it keeps each layer's highest-scoring tokens): the same call gives the same logits."""
    case = REGISTRY["ats_vit"].case("sample-twice")
    config = reference.reference_config("ats_vit", case.config)
    ref_model = build_reference("ats_vit", config)
    ours = imported("ats_vit", ref_model, config)
    img = torch.from_numpy(case.sample("torch", SEED)[0])
    with torch.no_grad():
        ref_calls = []
        for seed in range(4):
            torch.manual_seed(seed)
            ref_calls.append(ref_model(img, return_sampled_token_ids=True)[1])
        assert any(not torch.equal(ref_calls[0], ids) for ids in ref_calls[1:])
        state = torch.random.get_rng_state()
        assert torch.equal(ours(img), ours(img))
        assert torch.equal(torch.random.get_rng_state(), state)


def test_ats_vit_samples_each_image_as_the_reference_samples_it_alone() -> None:
    """Where one image's kept tokens fit the next layer's budget and another's do not, the reference samples both
    (it pads the batch to its largest count and samples when that count exceeds the budget); ours keeps every token
    of the image that fits, which is what the reference does with that image alone."""
    case = REGISTRY["ats_vit"].case("sample-twice")  # 16 patches
    # a third layer reads what the second kept (the second's class token attended before its sampling)
    config = {**reference.reference_config("ats_vit", case.config), "depth": 3, "max_tokens_per_depth": (8, 4, 4)}
    ref_model = build_reference("ats_vit", config)
    ours = imported("ats_vit", ref_model, config)
    img = torch.from_numpy(case.sample("torch", SEED)[0])
    # layer 0: image 0's draws pick patches 3 and 9 only, image 1's eight distinct patches; layer 1: every draw of
    # image 0 picks its first token (a Gumbel number of about 16 against about -2.6)
    first = torch.full((2, 8, 16), 1e-7)
    for r in range(8):
        first[0, r, (3, 9)[r % 2]] = first[1, r, 2 * r] = 1 - 1e-7
    second = torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(5))
    second[0] = 1e-7
    second[0, :, 0] = 1 - 1e-7
    noise = [first, second, None]
    with torch.no_grad():
        got, got_ids = ours(img, True, noise=noise)
        with reference_draws([first, second]):
            batch, batch_ids = ref_model(img, return_sampled_token_ids=True)
        with reference_draws([first[:1]]):
            alone, alone_ids = ref_model(img[:1], return_sampled_token_ids=True)
    assert got_ids[0].tolist() == [3, 9, -1, -1] and alone_ids.tolist() == [[3, 9]]
    assert batch_ids[0].tolist()[:2] == [3, -1]  # the reference's batch dropped patch 9 of image 0
    np.testing.assert_allclose(got[:1].numpy(), alone.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[1:].numpy(), batch[1:].numpy(), rtol=RTOL, atol=ATOL)
    assert not np.allclose(got[:1].numpy(), batch[:1].numpy(), rtol=1e-3, atol=1e-3)


def test_ats_vit_one_wide_head_keeps_a_projection_in_the_reference() -> None:
    """The reference's ATS-ViT always projects its attention's output; with one head as wide as the model this
    library's attention has none, so the import refuses."""
    case = REGISTRY["ats_vit"].cases[0]
    config = {**reference.reference_config("ats_vit", case.config), "heads": 1, "dim_head": case.config["dim"]}
    state = build_reference("ats_vit", config).state_dict()
    assert "transformer.layers.0.0.to_out.0.weight" in state
    with pytest.raises(reference.ReferenceImportError, match="always projects"):
        reference.our_config("ats_vit", config)
