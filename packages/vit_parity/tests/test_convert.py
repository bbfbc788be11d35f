"""Conversion rules by module kind, checked against independent numpy index arithmetic and on small
torch/flax twins holding the modules the ViTs do not use (buffers, norms without parameters,
transposed convolutions)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import vit_flax.checkpoint as flax_ckpt
import vit_torch.checkpoint as torch_ckpt
from vit_parity.core import checkpoint as io
from vit_parity.core.convert import ConversionError, check_state, convert


def rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


def test_linear_kernel_is_the_transpose() -> None:
    w = rand(5, 3)
    out = convert({"fc.weight": w, "fc.bias": rand(5)}, {"fc": "linear"}, source="torch", target="flax")
    assert set(out) == {"fc.kernel", "fc.bias"}
    for o in range(5):
        for i in range(3):
            assert out["fc.kernel"][i, o] == w[o, i]


@pytest.mark.parametrize("kernel", [(3,), (3, 3), (2, 2, 2), (2, 4, 4)])
def test_conv_moves_out_and_in_channels_last(kernel: tuple[int, ...]) -> None:
    # cubic kernels included: a rule picked by rank would treat (O, I, k, k, k) like any 5-D tensor
    w = rand(4, 3, *kernel)
    out = convert({"c.weight": w}, {"c": "conv"}, source="torch", target="flax")["c.kernel"]
    assert out.shape == (*kernel, 3, 4)
    for idx in np.ndindex(w.shape):
        o, i, *k = idx
        assert out[(*k, i, o)] == w[idx]


def test_cubic_conv_kernel_is_not_a_plain_transpose() -> None:
    w = rand(2, 2, 2, 2, 2)  # every axis the same size: only the rule knows which axis is which
    out = convert({"c.weight": w}, {"c": "conv"}, source="torch", target="flax")["c.kernel"]
    assert not np.array_equal(out, w.T)
    assert not np.array_equal(out, w)
    np.testing.assert_array_equal(out, np.transpose(w, (2, 3, 4, 1, 0)))


def test_norms_embeddings_and_params_rename_only() -> None:
    tensors = {
        "ln.weight": rand(4), "ln.bias": rand(4), "emb.weight": rand(10, 4), "pos": rand(1, 5, 4),
        "bn.weight": rand(3), "bn.bias": rand(3), "bn.running_mean": rand(3), "bn.running_var": rand(3),
        "bn.num_batches_tracked": np.array(7),
    }  # fmt: skip
    kinds = {"ln": "layernorm", "emb": "embedding", "pos": "param", "bn": "batchnorm"}
    out = convert(tensors, kinds, source="torch", target="flax")
    assert sorted(out) == ["bn.bias", "bn.mean", "bn.scale", "bn.var", "emb.embedding", "ln.bias", "ln.scale", "pos"]
    np.testing.assert_array_equal(out["bn.var"], tensors["bn.running_var"])
    back = convert(out, kinds, source="flax", target="torch")
    assert set(back) == set(tensors)
    assert back["bn.num_batches_tracked"] == 0  # flax keeps no counter


def test_round_trip_is_bit_exact() -> None:
    tensors = {"a.weight": rand(6, 4), "a.bias": rand(6), "c.weight": rand(8, 3, 2, 4, 4), "n.weight": rand(6)}
    kinds = {"a": "linear", "c": "conv", "n": "rmsnorm"}
    back = convert(convert(tensors, kinds, source="torch", target="flax"), kinds, source="flax", target="torch")
    assert back.keys() == tensors.keys()
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype
        np.testing.assert_array_equal(back[k], tensors[k])


def test_missing_bias_is_allowed_but_missing_weight_is_not() -> None:
    out = convert({"a.weight": rand(2, 2)}, {"a": "linear"}, source="torch", target="flax")
    assert list(out) == ["a.kernel"]
    with pytest.raises(ConversionError, match=r"missing keys \['a.weight'\]"):
        convert({"a.bias": rand(2)}, {"a": "linear"}, source="torch", target="flax")


def test_unexpected_and_unknown_keys_are_listed() -> None:
    with pytest.raises(ConversionError, match=r"unexpected keys \['stray', 'z.weight'\]"):
        convert({"a.weight": rand(2, 2), "stray": rand(1), "z.weight": rand(1)}, {"a": "linear"},
                source="torch", target="flax")  # fmt: skip
    with pytest.raises(ConversionError, match=r"unknown module kinds \['lstm'\]"):
        convert({}, {"x": "lstm"}, source="torch", target="flax")
    with pytest.raises(ValueError, match="target must be one of"):
        convert({}, {}, source="torch", target="tf")


def test_check_state_lists_every_problem() -> None:
    with pytest.raises(ConversionError) as err:
        check_state({"a": rand(2, 3), "b": rand(4), "x": rand(1)}, {"a": (3, 2), "b": (4,), "c": (1,)})
    text = str(err.value)
    assert "missing keys: ['c']" in text and "unexpected keys: ['x']" in text
    assert "a: (2, 3) vs model (3, 2)" in text
    check_state({"a": rand(2)}, {"a": (2,)})  # matching state passes


@pytest.mark.parametrize("kernel", [(3,), (4, 4), (2, 2, 2)])
def test_conv_transpose_flips_the_kernel_and_keeps_in_before_out(kernel: tuple[int, ...]) -> None:
    # torch ConvTranspose weight (I, O, *k); flax ConvTranspose kernel (*k, I, O), applied unflipped
    w = rand(3, 4, *kernel)
    out = convert({"up.weight": w, "up.bias": rand(4)}, {"up": "conv_transpose"}, source="torch", target="flax")
    assert out["up.kernel"].shape == (*kernel, 3, 4)
    for idx in np.ndindex(w.shape):
        i, o, *k = idx
        assert out["up.kernel"][(*(n - 1 - j for n, j in zip(kernel, k)), i, o)] == w[idx]
    back = convert(out, {"up": "conv_transpose"}, source="flax", target="torch")
    np.testing.assert_array_equal(back["up.weight"], w)
    assert back["up.weight"].flags.c_contiguous


def test_conv_transpose_is_not_the_conv_rule() -> None:
    w = rand(2, 2, 2, 2)  # every axis the same size: a rule picked by rank would not know the difference
    as_conv = convert({"c.weight": w}, {"c": "conv"}, source="torch", target="flax")["c.kernel"]
    as_transpose = convert({"c.weight": w}, {"c": "conv_transpose"}, source="torch", target="flax")["c.kernel"]
    assert not np.array_equal(as_conv, as_transpose)


def test_buffers_travel_unchanged() -> None:
    tensors = {"scale": rand(4), "blk.count": np.array(3, np.int64)}
    kinds = {"scale": "buffer", "blk.count": "buffer"}
    out = convert(tensors, kinds, source="torch", target="flax")
    assert out.keys() == tensors.keys() and out["blk.count"].dtype == np.int64
    back = convert(out, kinds, source="flax", target="torch")
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])


def test_norms_without_affine_parameters_convert() -> None:
    # BatchNorm(affine=False) keeps only its running statistics; GroupNorm/LayerNorm may keep a weight only
    tensors = {"bn.running_mean": rand(3), "bn.running_var": rand(3), "bn.num_batches_tracked": np.array(2),
               "ln.weight": rand(5)}  # fmt: skip
    kinds = {"bn": "batchnorm", "ln": "layernorm"}
    out = convert(tensors, kinds, source="torch", target="flax")
    assert sorted(out) == ["bn.mean", "bn.var", "ln.scale"]
    back = convert(out, kinds, source="flax", target="torch")
    assert sorted(back) == sorted(tensors)
    # a BatchNorm holding only affine parameters (no running statistics) gets no counter either
    only_affine = convert({"bn.scale": rand(3), "bn.bias": rand(3)}, {"bn": "batchnorm"}, source="flax", target="torch")
    assert sorted(only_affine) == ["bn.bias", "bn.weight"]


def test_a_listed_module_without_any_tensor_is_missing() -> None:
    with pytest.raises(ConversionError, match=r"missing keys \['ln.weight'\]"):
        convert({}, {"ln": "layernorm"}, source="torch", target="flax")
    with pytest.raises(ConversionError, match=r"missing keys \['bn.scale'\]"):
        convert({}, {"bn": "batchnorm"}, source="flax", target="torch")


class TorchTwin(nn.Module):
    def __init__(self, dims: int, kernel: int, output_padding: int) -> None:
        super().__init__()
        conv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        self.up = conv(3, 4, kernel, stride=2, padding=1, output_padding=output_padding)
        self.norm = nn.LayerNorm(4, elementwise_affine=False)
        self.register_buffer("scale", torch.randn(4))
        self.register_buffer("shift", torch.arange(4.0), persistent=False)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, *s) -> (b, *s', 2)
        return self.head(self.norm(self.up(x).movedim(1, -1)) * self.scale + self.shift)


class Buffer(nnx.Variable):
    pass


class FlaxTwin(nnx.Module):
    def __init__(self, dims: int, kernel: int, output_padding: int, buffer: type[nnx.Variable], rngs: nnx.Rngs) -> None:
        pad = [(kernel - 2, kernel - 2 + output_padding)] * dims  # torch padding 1: k - 1 - 1 on each side
        self.up = nnx.ConvTranspose(3, 4, (kernel,) * dims, (2,) * dims, padding=pad, rngs=rngs)
        self.norm = nnx.LayerNorm(4, use_scale=False, use_bias=False, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.scale = buffer(jax.random.normal(rngs.params(), (4,)))
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # (b, *s, c) -> (b, *s', 2)
        return self.head(self.norm(self.up(x)) * self.scale[...] + jnp.arange(4.0))


TWINS = [  # (dims, kernel, output_padding, flax buffer type)
    (2, 3, 1, nnx.BatchStat), (2, 4, 0, Buffer), (1, 3, 0, nnx.BatchStat), (3, 4, 0, Buffer), (3, 3, 1, Buffer),
]  # fmt: skip


def twins(dims: int, kernel: int, output_padding: int, buffer: type[nnx.Variable]) -> tuple[TorchTwin, FlaxTwin]:
    torch.manual_seed(dims + kernel)
    return TorchTwin(dims, kernel, output_padding), FlaxTwin(dims, kernel, output_padding, buffer, nnx.Rngs(kernel))


def outputs(t: TorchTwin, f: FlaxTwin, dims: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(dims).standard_normal((2, 3, *[5, 6, 4][:dims])).astype(np.float32)
    with torch.no_grad():
        a = t(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("float32"):
        b = np.asarray(f(jnp.asarray(np.moveaxis(x, 1, -1))))
    assert a.shape == b.shape
    return a, b


def through_disk(tmp_path: Path, kinds: dict[str, str], tensors: dict[str, np.ndarray], src: str, dst: str) -> dict:
    io.save(io.Checkpoint("twin", {}, src, kinds, tensors), tmp_path / src)
    io.convert_checkpoint(tmp_path / src, tmp_path / dst, to=dst)
    return io.load(tmp_path / dst).tensors


@pytest.mark.parametrize(("dims", "kernel", "output_padding", "buffer"), TWINS)
def test_twins_list_the_same_modules_and_give_the_same_numbers_both_ways(
    tmp_path: Path, dims: int, kernel: int, output_padding: int, buffer: type[nnx.Variable]
) -> None:
    t, f = twins(dims, kernel, output_padding, buffer)
    kinds = torch_ckpt.module_kinds(t)
    assert kinds == flax_ckpt.module_kinds(f) == {"head": "linear", "scale": "buffer", "up": "conv_transpose"}
    # torch -> flax
    flax_ckpt.load_tensors(f, through_disk(tmp_path / "a", kinds, torch_ckpt.state_numpy(t), "torch", "flax"))
    a, b = outputs(t, f, dims)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # flax -> torch, from a freshly initialized flax twin
    t, f = TorchTwin(dims, kernel, output_padding), FlaxTwin(dims, kernel, output_padding, buffer, nnx.Rngs(7))
    torch_ckpt.load_tensors(t, through_disk(tmp_path / "b", kinds, flax_ckpt.state_numpy(f), "flax", "torch"))
    a, b = outputs(t, f, dims)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(t.shift, torch.arange(4.0))  # the non-persistent buffer is the module's own


def test_twin_round_trip_is_bit_exact() -> None:
    t, _ = twins(2, 4, 0, Buffer)
    state, kinds = torch_ckpt.state_numpy(t), torch_ckpt.module_kinds(t)
    back = convert(convert(state, kinds, source="torch", target="flax"), kinds, source="flax", target="torch")
    assert back.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])


def test_the_conv_rule_would_give_other_numbers() -> None:
    # square (I = O) so that every layout fits: only the numbers tell the rules apart
    torch.manual_seed(0)
    t = nn.ConvTranspose2d(3, 3, 3, stride=2, padding=1, output_padding=1)
    f = nnx.ConvTranspose(3, 3, (3, 3), (2, 2), padding=[(1, 2)] * 2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    with torch.no_grad():
        want = np.moveaxis(t(torch.from_numpy(x)).numpy(), 1, -1)
    state = torch_ckpt.state_numpy(t)
    assert torch_ckpt.module_kinds(t) == flax_ckpt.module_kinds(f) == {"": "conv_transpose"}
    for kind, same in (("conv_transpose", True), ("conv", False)):
        flax_ckpt.load_tensors(f, convert(state, {"": kind}, source="torch", target="flax"))
        with jax.default_matmul_precision("float32"):
            got = np.asarray(f(jnp.asarray(np.moveaxis(x, 1, -1))))
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5) == same, kind
