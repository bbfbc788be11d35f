"""Labelled features returned by every model: labels, values, selection, and torch.compile."""

from __future__ import annotations

import pytest
import torch

from vit_parity.core import spec
from vit_torch import ViT
from vit_torch.vivit import ViT as ViViT

CASES = [pytest.param(a, c, id=f"{a.name}-{c.name}") for a in spec.REGISTRY.values() for c in a.cases]


def _blocks(labels: list[str]) -> list[str]:
    return [k for k in labels if "/attn" not in k and k != "pre_logits"]


@pytest.mark.parametrize(("arch", "case"), CASES)
@torch.no_grad()
def test_features_change_nothing_and_name_every_block(arch: spec.ArchSpec, case: spec.Case) -> None:
    torch.manual_seed(0)
    model = case.build("torch", arch.load_class("torch")).eval()
    inputs = list(spec.map_arrays(torch.from_numpy, case.sample("torch", 0)))
    plain = model(*inputs)
    out, features = model(*inputs, return_features=True)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    blocks = _blocks(list(features))
    assert blocks and list(features)[-1] == "pre_logits"
    assert all(k.rsplit("/", 1)[-1].startswith("block") for k in blocks)
    if arch.name.startswith("navit_nested"):
        with pytest.raises(ValueError, match="attention maps are not recorded on nested tensors"):
            model(*inputs, return_attn=True)
        return
    out, attn = model(*inputs, return_attn=True)  # fused kernel vs explicit softmax: same numbers
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    assert {k.split("/attn")[0] for k in attn} == set(blocks)
    for a in attn.values():
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), rtol=1e-5, atol=1e-5)


def _vit() -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=3, heads=2, mlp_dim=64, dim_head=16).eval()


@torch.no_grad()
def test_selection_by_label_and_index() -> None:
    model, img = _vit(), torch.randn(2, 3, 32, 32)
    _, every = model(img, return_features=True)
    assert list(every) == ["block00", "block01", "block02", "pre_logits"]
    _, picked = model(img, return_features=[0, -1, "pre_logits"])
    assert list(picked) == ["block00", "block02", "pre_logits"]
    for k, v in picked.items():
        torch.testing.assert_close(v, every[k], rtol=0, atol=0)
    _, with_attn = model(img, return_features=[-1], return_attn=True)
    assert list(with_attn) == ["block02/attn", "block02"] and with_attn["block02/attn"].shape == (2, 2, 17, 17)
    # the class token's features are what the head reads
    torch.testing.assert_close(every["pre_logits"], model.transformer.norm(every["block02"])[:, 0])
    with pytest.raises(KeyError, match="no feature 'block09'"):
        model(img, return_features=["block09"])
    with pytest.raises(IndexError, match="block index 3 out of range: the model ran 3 blocks"):
        model(img, return_features=[3])
    with pytest.raises(TypeError, match="return_features must be True, False or a list"):
        model(img, return_features="block00")


def test_features_under_torch_compile_in_one_graph() -> None:
    for model, x in [
        (_vit(), torch.randn(2, 3, 32, 32)),
        (ViViT(image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, num_classes=3, dim=16,
               spatial_depth=1, temporal_depth=1, heads=2, mlp_dim=32, dim_head=8,
               variant="factorized_self_attention").eval(), torch.randn(1, 3, 4, 16, 16)),
    ]:  # fmt: skip
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        with torch.no_grad():
            want_out, want = model(x, return_features=True, return_attn=True)
            got_out, got = compiled(x, return_features=True, return_attn=True)
        torch.testing.assert_close(got_out, want_out)
        assert list(got) == list(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k])
