"""Conversion rules by module kind, checked against independent numpy index arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from vit_parity.convert import ConversionError, check_state, convert


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
