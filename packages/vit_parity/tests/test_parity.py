"""Both backends give the same numbers on converted weights; the check has teeth; checkpoints cross over."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

import vit_flax
import vit_flax.layers
import vit_torch
from vit_flax.checkpoint import module_kinds as flax_kinds
from vit_flax.checkpoint import state_numpy as flax_state
from vit_parity.core import spec
from vit_parity.core.convert import convert
from vit_parity.tools.parity import build_pair, run_case
from vit_torch.checkpoint import module_kinds as torch_kinds
from vit_torch.checkpoint import state_numpy as torch_state

CASES = [pytest.param(a, c, id=f"{a.name}-{c.name}") for a in spec.REGISTRY.values() for c in a.cases]


@pytest.mark.parametrize(("arch", "case"), CASES)
def test_logits_and_every_block_agree(arch: spec.ArchSpec, case: spec.Case) -> None:
    diffs = run_case(arch, case)
    assert len(diffs) >= 2, "at least the logits and one block are compared"
    bad = [d for d in diffs if not d.ok]
    assert not bad, bad


@pytest.mark.parametrize("arch", sorted(spec.REGISTRY))
def test_module_trees_mirror_each_other(arch: str) -> None:
    torch_model, flax_model = build_pair(spec.get(arch), spec.get(arch).case())
    assert torch_kinds(torch_model) == flax_kinds(flax_model)


@pytest.mark.parametrize("arch", sorted(spec.REGISTRY))
def test_torch_flax_torch_round_trip_is_bit_exact(arch: str) -> None:
    torch_model, _ = build_pair(spec.get(arch), spec.get(arch).case())
    kinds, state = torch_kinds(torch_model), torch_state(torch_model)
    back = convert(convert(state, kinds, source="torch", target="flax"), kinds, source="flax", target="torch")
    assert back.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])


def _set_eps(model: nnx.Module, eps: float) -> None:
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.LayerNorm):
            node.epsilon = eps


def _tanh_gelu(model: nnx.Module) -> None:
    for _, node in nnx.iter_graph(model):
        if isinstance(node, vit_flax.layers.FeedForward):
            node.act = "gelu_tanh"


@pytest.mark.parametrize("arch", sorted(spec.REGISTRY))
@pytest.mark.parametrize("tamper", [partial(_set_eps, eps=1e-6), _tanh_gelu], ids=["eps-1e-6", "tanh-gelu"])
def test_a_wrong_eps_or_gelu_fails_the_check(arch: str, tamper: object) -> None:
    diffs = run_case(spec.get(arch), spec.get(arch).case(), tamper=tamper)
    assert not all(d.ok for d in diffs)


def test_checkpoints_cross_backends(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)
    torch_model = vit_torch.ViT(**cfg).eval()
    vit_torch.save(torch_model, tmp_path / "from_torch")
    flax_model = vit_flax.load(tmp_path / "from_torch")
    img = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(flax_model(img.transpose(0, 2, 3, 1)), want, rtol=1e-5, atol=1e-5)

    vit_flax.save(flax_model, tmp_path / "from_flax")
    back = vit_torch.load(tmp_path / "from_flax")
    for k, v in torch_model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert flax_state(flax_model).keys() == set(convert(torch_state(torch_model), torch_kinds(torch_model),
                                                         source="torch", target="flax"))  # fmt: skip
