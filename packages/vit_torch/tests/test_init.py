"""vit_torch.init: the shared initializer's rules on torch modules."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from vit_parity.core import spec
from vit_parity.core.init import InitError, init_tensors
from vit_torch.checkpoint import module_kinds, state_numpy
from vit_torch.init import init_weights

TRUNC_STD = 0.8796256610342398  # std of a standard normal cut at +-2


class Toy(nn.Module):
    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 64, 7)
        self.up = nn.ConvTranspose2d(32, 8, 3)
        self.norm = nn.LayerNorm(64)
        self.bn = nn.BatchNorm1d(64)
        self.fc = nn.Linear(512, 512)
        self.tok = nn.Embedding(100, 64)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 64))
        self.register_buffer("table", torch.arange(6.0), persistent=False)
        self.register_buffer("mask", torch.arange(4.0))  # persistent: kind 'buffer', kept
        if extra:
            self.fc2 = nn.Linear(64, 64)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def test_statistics_by_kind() -> None:
    model = Toy()
    model.bn.num_batches_tracked.fill_(5)
    model.bn.running_var.fill_(3.0)
    assert init_weights(model, seed=0) is model
    w = model.fc.weight.detach().numpy()
    limit = math.sqrt(6 / sum(w.shape))  # Xavier uniform: fan-in + fan-out
    assert _rel(w.std(), limit / math.sqrt(3)) < 0.03 and abs(w.mean()) < 1e-3
    assert np.abs(w).max() <= limit
    assert _rel(model.conv.weight.std().item(), math.sqrt(2 / (16 * 7 * 7))) < 0.03
    assert _rel(model.up.weight.std().item(), math.sqrt(2 / (32 * 3 * 3))) < 0.05  # fan-in: in channels x kernel
    assert _rel(model.tok.weight.std().item(), 0.02) < 0.05
    assert model.cls_token.abs().max().item() <= 0.04 and model.cls_token.std().item() > 0
    for t in (model.fc.bias, model.conv.bias, model.up.bias, model.norm.bias, model.bn.bias, model.bn.running_mean):
        assert torch.equal(t, torch.zeros_like(t))
    for t in (model.norm.weight, model.bn.weight, model.bn.running_var):
        assert torch.equal(t, torch.ones_like(t))
    assert model.bn.num_batches_tracked.item() == 0


def test_values_are_the_cores_draws() -> None:
    model = init_weights(Toy(), seed=4)
    state = state_numpy(model)
    want = init_tensors({k: v.shape for k, v in state.items()}, module_kinds(model), seed=4)
    assert set(state) - set(want) == {"mask"}
    for key, value in want.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_seeds() -> None:
    a, b, c = (state_numpy(init_weights(Toy(), seed=s)) for s in (1, 1, 2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("conv.weight", "fc.weight", "tok.weight", "cls_token"):
        assert not np.array_equal(a[key], c[key])


def test_adding_a_layer_leaves_the_other_tensors_alone() -> None:
    small, big = state_numpy(init_weights(Toy(), seed=3)), state_numpy(init_weights(Toy(extra=True), seed=3))
    assert set(big) - set(small) == {"fc2.weight", "fc2.bias"}
    for key in small:
        np.testing.assert_array_equal(big[key], small[key], err_msg=key)


def test_adding_a_block_leaves_the_other_tensors_alone() -> None:
    config = dict(image_size=32, patch_size=8, num_classes=5, dim=32, heads=2, mlp_dim=64, dim_head=16)
    cls = spec.get("vit").load_class("torch")
    one, two = (state_numpy(init_weights(cls(**config, depth=d), seed=0)) for d in (1, 2))
    assert len(two) > len(one)
    for key in one:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)


def test_buffers_are_left_alone() -> None:
    model = Toy()
    init_weights(model, seed=0)
    assert torch.equal(model.table, torch.arange(6.0))
    assert torch.equal(model.mask, torch.arange(4.0))
    simple = spec.get("simple_vit")
    model = simple.load_class("torch")(**simple.case().config)
    persistent = set(model.state_dict())
    tables = {k: v.clone() for k, v in model.named_buffers() if k not in persistent}
    assert tables, "SimpleViT keeps its sin-cos table as a non-persistent buffer"
    init_weights(model, seed=0)
    buffers = dict(model.named_buffers())
    for key, value in tables.items():
        assert torch.equal(buffers[key], value), key


def test_dtype_device_and_grad_are_kept() -> None:
    model = Toy().to(torch.float64)
    init_weights(model, seed=0)
    assert model.fc.weight.dtype == torch.float64 and model.fc.weight.requires_grad
    assert model.fc.weight.grad is None and model.fc.weight.is_leaf
    f32 = state_numpy(init_weights(Toy(), seed=0))
    np.testing.assert_array_equal(model.fc.weight.detach().numpy(), f32["fc.weight"].astype(np.float64))
    half = init_weights(nn.Linear(8, 8).to(torch.bfloat16), seed=0)
    assert half.weight.dtype == torch.bfloat16


class Scaled(nn.Module):
    """A layer scale whose start comes from its own ``init_rules``."""

    init_rules: ClassVar[dict] = {"gamma": ("constant", 1e-5)}

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(8))
        self.fc = nn.Linear(8, 8)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Scaled(), Scaled()
        self.mix = nn.Parameter(torch.zeros(4, 4))

    @property
    def init_rules(self) -> dict:
        return {"mix": ("identity",), "b.gamma": ("ones",)}


def test_overrides_and_init_rules() -> None:
    model = init_weights(Outer(), seed=0)
    assert torch.equal(model.a.gamma, torch.full((8,), 1e-5))  # the layer's rule
    assert torch.equal(model.b.gamma, torch.ones(8))  # the model's rule wins over the layer's
    assert torch.equal(model.mix, torch.eye(4))
    model = init_weights(Outer(), seed=0, overrides={"*.gamma": ("zeros",), "*.fc.bias": ("normal", 1.0)})
    assert torch.equal(model.a.gamma, torch.zeros(8)) and torch.equal(model.b.gamma, torch.zeros(8))
    assert model.a.fc.bias.abs().max().item() > 0
    model = Outer()
    before = model.a.fc.weight.detach().clone()
    init_weights(model, overrides={"a.fc.weight": "keep"})
    assert torch.equal(model.a.fc.weight, before)


def test_an_override_matching_nothing_raises() -> None:
    with pytest.raises(InitError, match="match no tensor"):
        init_weights(Toy(), overrides={"fc.gamma": ("zeros",)})


def test_unknown_tensor_raises() -> None:
    class Odd(nn.Linear):
        def __init__(self) -> None:
            super().__init__(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

    with pytest.raises(InitError, match="scale"):
        init_weights(Odd())
    assert torch.equal(init_weights(Odd(), overrides={"scale": "zeros"}).scale, torch.zeros(4))


def test_the_module_does_not_pull_jax() -> None:
    code = "import sys, vit_torch.init; assert 'jax' not in sys.modules and 'flax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
