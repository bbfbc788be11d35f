"""The spec beyond classifiers: cases whose output is a dict, a tuple or a loss, and models that wrap a
registry model (built from its own config), through the generated checks and parity."""

from __future__ import annotations

from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from vit_parity.core import spec
from vit_parity.core.config import records_config
from vit_parity.tools.parity import run_case
from vit_torch.checkpoint import state_numpy, to_checkpoint

ENCODER = dict(image_size=16, patch_size=8, num_classes=6, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)


@records_config
class TorchWrapper(nn.Module):
    """A registry model wrapped with an extra head; returns a dict with a scalar loss, or a tuple."""

    def __init__(self, encoder: nn.Module, num_classes: int = 3, as_tuple: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(6, num_classes)
        self.as_tuple = as_tuple

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor] | tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.encoder(img))
        loss = logits.square().mean()
        return (logits, loss) if self.as_tuple else {"logits": logits, "loss": loss}


@records_config
class FlaxWrapper(nnx.Module):
    def __init__(self, encoder: nnx.Module, num_classes: int = 3, as_tuple: bool = False, *, rngs: nnx.Rngs) -> None:
        self.encoder = encoder
        self.head = nnx.Linear(6, num_classes, rngs=rngs)
        self.as_tuple = as_tuple

    def __call__(self, img: jnp.ndarray) -> dict[str, jnp.ndarray] | tuple[jnp.ndarray, jnp.ndarray]:
        logits = self.head(self.encoder(img))
        loss = jnp.mean(logits**2)
        return (logits, loss) if self.as_tuple else {"logits": logits, "loss": loss}


WRAPPER = spec.ArchSpec(
    name="test_wrapper",
    torch=f"{__name__}:TorchWrapper",
    flax=f"{__name__}:FlaxWrapper",
    paper="none",
    cases=(
        spec.Case(
            "dict", dict(num_classes=3), (spec.image(c=3, h=16, w=16),), {"logits": ("b", 3), "loss": ()},
            models={"encoder": ("vit", ENCODER)},
        ),
        spec.Case(
            "tuple", dict(num_classes=4, as_tuple=True), (spec.image(b=3, c=3, h=16, w=16),), (("b", 4), ()),
            models={"encoder": ("vit", ENCODER)},
        ),
    ),
)  # fmt: skip


@pytest.fixture
def registered() -> Iterator[spec.ArchSpec]:
    spec.register(WRAPPER)
    try:
        yield WRAPPER
    finally:
        del spec.REGISTRY[WRAPPER.name]


def test_output_shapes_follow_the_structure() -> None:
    dict_case, tuple_case = WRAPPER.cases
    assert dict_case.output_shape() == {"logits": (2, 3), "loss": ()}
    assert tuple_case.output_shape() == ((3, 4), ())
    assert spec.output_leaves({"a": 1, "b": (2, 3)}) == [("output.a", 1), ("output.b[0]", 2), ("output.b[1]", 3)]
    assert spec.shapes_of((np.zeros((2, 3)), np.float32(1.0))) == ((2, 3), ())


@pytest.mark.parametrize("case", WRAPPER.cases, ids=lambda c: c.name)
def test_wrapper_cases_build_run_and_agree_across_backends(registered: spec.ArchSpec, case: spec.Case) -> None:
    torch.manual_seed(0)
    model = case.build("torch", registered.load_class("torch"))
    assert isinstance(model.encoder, spec.get("vit").load_class("torch"))
    assert model.encoder.config["dim"] == 16
    out = model(*map(torch.from_numpy, case.sample("torch")))
    assert spec.shapes_of(out) == case.output_shape()
    sum(t for _, t in spec.output_leaves(out) if t.ndim == 0).backward()
    assert all(p.grad is not None for p in model.parameters())
    diffs = run_case(registered, case)
    assert [d.name for d in diffs] == ([f"output.{k}" for k in ("logits", "loss")] if case.name == "dict" else
                                       ["output[0]", "output[1]"])  # fmt: skip
    assert all(d.ok for d in diffs), diffs


def test_wrapping_keeps_the_encoders_parameter_names(registered: spec.ArchSpec) -> None:
    torch.manual_seed(0)
    case = WRAPPER.cases[0]
    wrapper = case.build("torch", registered.load_class("torch"))
    alone = to_checkpoint(wrapper.encoder)
    wrapped = state_numpy(wrapper)
    assert alone.arch == "vit"
    for key, value in alone.tensors.items():
        np.testing.assert_array_equal(wrapped[f"encoder.{key}"], value)


def test_a_wrapper_checkpoint_records_its_encoder_and_loads_in_both_backends(
    registered: spec.ArchSpec, tmp_path: object
) -> None:
    import vit_flax
    import vit_torch

    torch.manual_seed(0)
    case = WRAPPER.cases[0]
    wrapper = case.build("torch", registered.load_class("torch")).eval()
    assert wrapper.config["encoder"] == {"__model__": "vit", "config": wrapper.encoder.config}
    vit_torch.save(wrapper, tmp_path / "wrapper")
    img = case.sample("torch")[0]
    want = wrapper(torch.from_numpy(img))["logits"].detach().numpy()
    again = vit_torch.load(tmp_path / "wrapper")
    np.testing.assert_array_equal(again(torch.from_numpy(img))["logits"].detach().numpy(), want)
    flax_model = vit_flax.load(tmp_path / "wrapper")
    got = flax_model(jnp.asarray(case.sample("flax")[0]))["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
