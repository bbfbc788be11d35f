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
from vit_parity.tools.parity import build_pair, run_case, run_case_with_teeth
from vit_torch.checkpoint import module_kinds as torch_kinds
from vit_torch.checkpoint import state_numpy as torch_state

CASES = [pytest.param(a, c, id=f"{a.name}-{c.name}") for a in spec.REGISTRY.values() for c in a.cases]


def _set_eps(model: torch.nn.Module, eps: float = 1e-6) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps


def _tanh_gelu(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, vit_torch.layers.FeedForward):
            module.act = "gelu_tanh"


TAMPERS = {"eps-1e-6": _set_eps, "tanh-gelu": _tanh_gelu}


@pytest.mark.parametrize(("arch", "case"), CASES)
def test_logits_and_every_block_agree(arch: spec.ArchSpec, case: spec.Case) -> None:
    """The check passes, and has teeth: on each architecture's first case, the torch model with a wrong LayerNorm
    eps, or the tanh GELU, fails it against the same flax outputs."""
    first = case is arch.case()
    diffs, tampered = run_case_with_teeth(arch, case, TAMPERS if first else None)
    assert len(diffs) >= 2, "at least the logits and one block are compared"
    bad = [d for d in diffs if not d.ok]
    assert not bad, bad
    for name, tampered_diffs in tampered.items():
        assert not all(d.ok for d in tampered_diffs), f"the check misses a torch model altered by {name}"


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


# --- train-mode BatchNorm ------------------------------------------------------------------------------------------


def _set_batchnorm(model: nnx.Module, **attributes: float) -> None:
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            for name, value in attributes.items():
                setattr(node, name, value)


def test_a_model_with_batchnorm_is_also_compared_in_train_mode() -> None:
    diffs = run_case(spec.get("xcit"), spec.get("xcit").case())
    names = [d.name for d in diffs]
    assert "bn-train/logits" in names and "bn-train/block00" in names and "bn-eval-updated/logits" in names
    stats = [n for n in names if n.startswith("bn-train/") and n.endswith((".running_mean", ".running_var"))]
    assert stats == ["bn-train/patch_transformer.blocks.0.lpi.bn.running_mean",
                     "bn-train/patch_transformer.blocks.0.lpi.bn.running_var"]  # fmt: skip
    assert all(d.ok for d in diffs), [d for d in diffs if not d.ok]
    assert not any(d.name.startswith("bn-") for d in run_case(spec.get("vit"), spec.get("vit").case()))


@pytest.mark.parametrize(
    ("tamper", "fails"),
    [
        (partial(_set_batchnorm, momentum=0.8), "running_mean"),  # flax holds 1 - torch's momentum: 0.9
        (partial(_set_batchnorm, epsilon=1e-4), "bn-train/block00"),
    ],
    ids=["momentum", "eps"],
)
def test_a_wrong_batchnorm_momentum_or_eps_fails_the_train_mode_check(tamper: object, fails: str) -> None:
    diffs = run_case(spec.get("xcit"), spec.get("xcit").case(), tamper=tamper)
    assert any(fails in d.name for d in diffs if not d.ok), [d for d in diffs if not d.ok]


def test_flax_own_batchnorm_update_fails_the_train_mode_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """nnx.BatchNorm updates the running variance with the biased batch variance, torch with the unbiased one."""
    from vit_flax.convolution import BatchNorm

    monkeypatch.setattr(BatchNorm, "__call__", nnx.BatchNorm.__call__)
    diffs = run_case(spec.get("xcit"), spec.get("xcit").case())
    bad = [d.name for d in diffs if not d.ok]
    assert "bn-train/patch_transformer.blocks.0.lpi.bn.running_var" in bad
    assert not any(n.startswith("bn-train/") and "running_var" not in n for n in bad), bad  # same normalization


def test_the_train_mode_check_puts_both_models_back() -> None:
    from vit_parity.core.spec import map_arrays
    from vit_parity.tools.parity import batchnorm_train_step

    arch, case = spec.get("xcit"), spec.get("xcit").case()
    torch_model, flax_model = build_pair(arch, case)
    t_before, f_before = torch_state(torch_model), flax_state(flax_model)
    t_in = map_arrays(torch.from_numpy, case.sample("torch", 0))
    f_in = map_arrays(np.asarray, case.sample("flax", 0))
    assert all(d.ok for d in batchnorm_train_step(case, torch_model, flax_model, t_in, f_in))
    assert not torch_model.training and all(not m.training for m in torch_model.modules())
    assert all(n.use_running_average for _, n in nnx.iter_graph(flax_model) if isinstance(n, nnx.BatchNorm))
    for before, after in ((t_before, torch_state(torch_model)), (f_before, flax_state(flax_model))):
        assert before.keys() == after.keys()
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_running_statistics_cross_backends_and_come_back(tmp_path: Path) -> None:
    from vit_torch.xcit import XCiT

    torch.manual_seed(0)
    cfg = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, cls_depth=1, heads=2, mlp_dim=32,
               dim_head=8)  # fmt: skip
    torch_model = XCiT(**cfg).train()
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch_model(img)  # one training step of BatchNorm: statistics away from zeros and ones
    torch_model.eval()
    bn = torch_model.patch_transformer.blocks[0].lpi.bn
    assert int(bn.num_batches_tracked) == 1 and not torch.all(bn.running_var == 1)
    vit_torch.save(torch_model, tmp_path / "from_torch")
    flax_model = vit_flax.load(tmp_path / "from_torch")
    np.testing.assert_array_equal(flax_model.patch_transformer.blocks[0].lpi.bn.var[...], bn.running_var.numpy())
    with torch.no_grad():
        want = torch_model(img).numpy()
    np.testing.assert_allclose(flax_model(img.numpy().transpose(0, 2, 3, 1)), want, rtol=1e-5, atol=1e-5)
    vit_flax.save(flax_model, tmp_path / "from_flax")
    back = vit_torch.load(tmp_path / "from_flax")
    for k, v in torch_model.state_dict().items():
        if k.endswith("num_batches_tracked"):  # torch-only bookkeeping (read only when momentum is None): recreated
            assert int(back.state_dict()[k]) == 0, k
        else:
            assert torch.equal(back.state_dict()[k], v), k
