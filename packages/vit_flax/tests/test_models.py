"""Every architecture in the spec: shapes, gradients, train/eval behaviour, jit, registry coverage."""

from __future__ import annotations

import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vit_flax
from vit_parity.core import spec

CASES = [pytest.param(a, c, id=f"{a.name}-{c.name}") for a in spec.REGISTRY.values() for c in a.cases]


def build(arch: spec.ArchSpec, case: spec.Case, seed: int = 0) -> tuple[nnx.Module, list[jax.Array]]:
    model = case.build("flax", arch.load_class("flax"), rngs=nnx.Rngs(seed))
    inputs = list(spec.map_arrays(jnp.asarray, case.sample("flax", seed)))
    return model, inputs


@nnx.jit
def forward(model: nnx.Module, *inputs: jax.Array) -> jax.Array:
    return model(*inputs)


def _loss(out: object) -> jax.Array:
    return sum(jnp.mean(t**2) for _, t in spec.output_leaves(out))


@nnx.jit
def train_pass(model: nnx.Module, *inputs: jax.Array) -> tuple[object, nnx.State]:
    """The output of a call and the gradients of a loss of it: one compilation for both."""

    def loss(m: nnx.Module) -> tuple[jax.Array, object]:
        out = m(*inputs)
        return _loss(out), out

    (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return out, grads


@pytest.mark.parametrize(("arch", "case"), CASES)
def test_forward_backward_train_and_eval(arch: spec.ArchSpec, case: spec.Case) -> None:
    model, inputs = build(arch, case)
    model.train()
    raw, grads = train_pass(model, *inputs)
    out = case.logits("flax", inputs, raw)
    assert spec.shapes_of(out) == case.output_shape()
    assert all(bool(jnp.all(jnp.isfinite(t))) for _, t in spec.output_leaves(out))

    grads = _flat(nnx.state(grads, nnx.Param))
    assert grads.keys() == _flat(nnx.state(model, nnx.Param)).keys()
    check_gradients(case, grads)

    if any(isinstance(n, nnx.Dropout) and n.rate > 0 for _, n in nnx.iter_graph(model)):
        # the dropout rng stream advances between calls, so two train passes differ (the same compiled pass)
        a = spec.output_leaves(raw)
        b = spec.output_leaves(train_pass(model, *inputs)[0])
        assert not all(np.allclose(x, y) for (_, x), (_, y) in zip(a, b))
    model.eval()
    a, b = (spec.output_leaves(forward(model, *inputs)) for _ in range(2))
    for (_, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _flat(state: nnx.State) -> dict[str, jax.Array]:
    return {".".join(map(str, path)): v[...] for path, v in nnx.to_flat_state(state)}


def check_gradients(case: spec.Case, grads: dict[str, jax.Array]) -> None:
    """The case's frozen parameters (``Case.frozen``) got a zero gradient, every other one a finite nonzero
    gradient."""
    for name, g in grads.items():
        if case.is_frozen(name):
            assert not bool(jnp.any(g)), f"{name} is frozen in case {case.name!r} but got a gradient"
        else:
            assert bool(jnp.all(jnp.isfinite(g))), name
            assert bool(jnp.any(g)), f"{name} got a zero gradient"


def test_the_gradient_check_has_teeth() -> None:
    case = spec.Case("frozen-teacher", {}, (), (), frozen=("teacher",))
    check_gradients(case, {"teacher.w": jnp.zeros(2), "student.w": jnp.ones(2)})
    with pytest.raises(AssertionError, match=r"teacher\.w is frozen"):
        check_gradients(case, {"teacher.w": jnp.ones(2)})
    with pytest.raises(AssertionError, match=r"student\.w got a zero gradient"):
        check_gradients(case, {"student.w": jnp.zeros(2)})


def _exported_models() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(vit_flax.__path__):
        module = importlib.import_module(f"vit_flax.{info.name}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, nnx.Module) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_exported_model_has_a_spec_entry() -> None:
    models = _exported_models()
    assert {m.__name__ for m in models} >= {"ViT", "SimpleViT"}
    for cls in models:
        spec.arch_of(cls, "flax")


def test_every_spec_entry_exists_in_flax() -> None:
    for arch in spec.REGISTRY.values():
        assert issubclass(arch.load_class("flax"), nnx.Module), arch.name
