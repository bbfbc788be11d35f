"""Every architecture in the spec: shapes, gradients, train/eval behaviour, registry coverage."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import vit_torch
from vit_parity.core import spec

CASES = [pytest.param(a, c, id=f"{a.name}-{c.name}") for a in spec.REGISTRY.values() for c in a.cases]


def build(arch: spec.ArchSpec, case: spec.Case, seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = case.build("torch", arch.load_class("torch"))
    inputs = list(spec.map_arrays(torch.from_numpy, case.sample("torch", seed)))
    return model, inputs


@pytest.mark.parametrize(("arch", "case"), CASES)
def test_output_shape_and_gradients(arch: spec.ArchSpec, case: spec.Case) -> None:
    model, inputs = build(arch, case)
    model.train()
    out = case.logits("torch", inputs, model(*inputs))
    assert spec.shapes_of(out) == case.output_shape()
    leaves = [t for _, t in spec.output_leaves(out)]
    assert all(torch.isfinite(t).all() for t in leaves)
    sum(t.square().mean() for t in leaves).backward()
    check_gradients(case, {name: p.grad for name, p in model.named_parameters()})


def check_gradients(case: spec.Case, grads: dict[str, torch.Tensor | None]) -> None:
    """The case's frozen parameters (``Case.frozen``) got no or a zero gradient, every other one a finite nonzero
    gradient."""
    for name, g in grads.items():
        if case.is_frozen(name):
            assert g is None or not g.any(), f"{name} is frozen in case {case.name!r} but got a gradient"
        else:
            assert g is not None, f"{name} got no gradient"
            assert torch.isfinite(g).all(), name
            assert g.any(), f"{name} got a zero gradient"


def test_the_gradient_check_has_teeth() -> None:
    case = spec.Case("frozen-teacher", {}, (), (), frozen=("teacher",))
    check_gradients(case, {"teacher.w": None, "teacher.b": torch.zeros(2), "student.w": torch.ones(2)})
    assert case.is_frozen("teacher") and not case.is_frozen("teachers.w")
    with pytest.raises(AssertionError, match=r"teacher\.w is frozen"):
        check_gradients(case, {"teacher.w": torch.ones(2)})
    with pytest.raises(AssertionError, match=r"student\.w got no gradient"):
        check_gradients(case, {"student.w": None})
    with pytest.raises(AssertionError, match=r"student\.w got a zero gradient"):
        check_gradients(case, {"student.w": torch.zeros(2)})


@pytest.mark.parametrize(("arch", "case"), CASES)
def test_eval_is_deterministic_and_train_uses_dropout(arch: spec.ArchSpec, case: spec.Case) -> None:
    model, inputs = build(arch, case)
    model.eval()

    def leaves() -> list[torch.Tensor]:
        return [t for _, t in spec.output_leaves(model(*inputs))]

    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(leaves(), leaves()))
    has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    if has_dropout:
        model.train()
        torch.manual_seed(1)
        a = leaves()
        torch.manual_seed(2)
        assert not all(torch.allclose(x, y) for x, y in zip(a, leaves()))


def _exported_models() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(vit_torch.__path__):
        module = importlib.import_module(f"vit_torch.{info.name}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_exported_model_has_a_spec_entry() -> None:
    models = _exported_models()
    assert {m.__name__ for m in models} >= {"ViT", "SimpleViT"}
    for cls in models:
        spec.arch_of(cls, "torch")  # raises when the entry is missing


def test_every_spec_entry_exists_in_torch() -> None:
    for arch in spec.REGISTRY.values():
        assert issubclass(arch.load_class("torch"), nn.Module), arch.name


@pytest.mark.parametrize("arch", sorted(spec.REGISTRY))
def test_every_dense_layer_is_the_librarys(arch: str) -> None:
    """Every dense layer of every registry model is ``layers.Linear`` (its products go through ``vit_torch.gemm``),
    not a plain ``nn.Linear``."""
    entry = spec.get(arch)
    with torch.device("meta"):  # structure only
        model = entry.case().build("torch", entry.load_class("torch"))
    dense = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    plain = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    assert dense and not plain, f"plain nn.Linear in {arch}: {plain}"
    assert all(isinstance(m, vit_torch.layers.Linear) for m in model.modules() if isinstance(m, nn.Linear))
