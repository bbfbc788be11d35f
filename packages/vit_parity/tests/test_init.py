"""The shared initializer: its rules, its independence of other tensors, and bit-identical weights in both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vit_parity.core import init as core
from vit_parity.core import spec
from vit_parity.core.init import InitError, init_tensors

TRUNC_STD = 0.8796256610342398  # std of a standard normal cut at +-2


# --- the core, numpy only ---------------------------------------------------------------------------

KINDS = {
    "embed": "conv",
    "up": "conv_transpose",
    "norm": "layernorm",
    "gn": "groupnorm",
    "rms": "rmsnorm",
    "bn": "batchnorm",
    "tok": "embedding",
    "fc": "linear",
    "cls_token": "param",
}
SHAPES = {
    "embed.weight": (64, 16, 7, 7),
    "embed.bias": (64,),
    "up.weight": (32, 8, 3, 3),
    "norm.weight": (64,),
    "norm.bias": (64,),
    "gn.weight": (8,),
    "gn.bias": (8,),
    "rms.weight": (8,),
    "bn.weight": (8,),
    "bn.bias": (8,),
    "bn.running_mean": (8,),
    "bn.running_var": (8,),
    "bn.num_batches_tracked": (),
    "tok.weight": (1000, 256),
    "fc.weight": (512, 512),
    "fc.bias": (512,),
    "cls_token": (1, 1, 64),
}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def test_rules_by_kind() -> None:
    t = init_tensors(SHAPES, KINDS, seed=0)
    assert t.keys() == SHAPES.keys()
    assert all(t[k].shape == SHAPES[k] for k in t)
    w = t["fc.weight"]
    assert w.dtype == np.float32
    limit = math.sqrt(6 / sum(w.shape))  # Xavier uniform: fan-in + fan-out
    assert _rel(w.std(), limit / math.sqrt(3)) < 0.03 and abs(w.mean()) < 1e-3
    assert np.abs(w).max() <= limit
    assert _rel(t["embed.weight"].std(), math.sqrt(2 / (16 * 49))) < 0.03
    assert _rel(t["up.weight"].std(), math.sqrt(2 / (32 * 9))) < 0.05
    assert _rel(t["tok.weight"].std(), 0.02) < 0.03 and np.abs(t["tok.weight"]).max() > 0.04  # not truncated
    assert np.abs(t["cls_token"]).max() <= 0.04 and t["cls_token"].std() > 0
    for key in ("embed.bias", "fc.bias", "norm.bias", "gn.bias", "bn.bias", "bn.running_mean"):
        np.testing.assert_array_equal(t[key], 0)
    for key in ("norm.weight", "gn.weight", "rms.weight", "bn.weight", "bn.running_var"):
        np.testing.assert_array_equal(t[key], 1)
    assert t["bn.num_batches_tracked"].dtype == np.int64 and t["bn.num_batches_tracked"] == 0


def test_same_seed_same_values_other_seed_other_values() -> None:
    a, b, c = (init_tensors(SHAPES, KINDS, seed=s) for s in (7, 7, 8))
    for k in SHAPES:
        np.testing.assert_array_equal(a[k], b[k])
    for k in ("embed.weight", "up.weight", "tok.weight", "fc.weight", "cls_token"):
        assert not np.array_equal(a[k], c[k]), k


def test_a_value_does_not_depend_on_other_tensors_or_their_order() -> None:
    full = init_tensors(SHAPES, KINDS, seed=3)
    only = init_tensors({"fc.weight": (512, 512)}, {"fc": "linear"}, seed=3)
    np.testing.assert_array_equal(only["fc.weight"], full["fc.weight"])
    backwards = init_tensors(dict(reversed(SHAPES.items())), dict(reversed(KINDS.items())), seed=3)
    for k in SHAPES:
        np.testing.assert_array_equal(backwards[k], full[k])
    # same shape, other key: other values
    two = init_tensors({"a.weight": (8, 8), "b.weight": (8, 8)}, {"a": "linear", "b": "linear"}, seed=3)
    assert not np.array_equal(two["a.weight"], two["b.weight"])


def test_dtype_is_configurable() -> None:
    t = init_tensors({"fc.weight": (4, 4)}, {"fc": "linear"}, seed=0, dtype=np.float64)
    assert t["fc.weight"].dtype == np.float64
    f32 = init_tensors({"fc.weight": (4, 4)}, {"fc": "linear"}, seed=0)
    np.testing.assert_array_equal(t["fc.weight"].astype(np.float32), f32["fc.weight"])


def test_unknown_kind_raises_naming_it() -> None:
    with pytest.raises(InitError, match="mystery"):
        init_tensors({"x.weight": (2, 2)}, {"x": "mystery"})


def test_a_tensor_no_kind_covers_raises_unless_an_override_does() -> None:
    shapes = {"fc.weight": (2, 2), "fc.extra": (3,)}
    with pytest.raises(InitError, match=r"fc\.extra"):
        init_tensors(shapes, {"fc": "linear"})
    t = init_tensors(shapes, {"fc": "linear"}, overrides={"fc.extra": ("constant", 2.0)})
    np.testing.assert_array_equal(t["fc.extra"], 2.0)


@pytest.mark.parametrize(
    ("rule", "check"),
    [
        (("zeros",), lambda x: np.all(x == 0)),
        ("ones", lambda x: np.all(x == 1)),
        (("constant", 1e-5), lambda x: np.all(x == np.float32(1e-5))),
        (("normal", 0.5), lambda x: _rel(x.std(), 0.5) < 0.05 and np.abs(x).max() > 1.0),
        (("trunc_normal", 0.5), lambda x: _rel(x.std(), 0.5 * TRUNC_STD) < 0.05 and np.abs(x).max() <= 1.0),
        (("identity",), lambda x: np.array_equal(x, np.broadcast_to(np.eye(64, dtype=np.float32), x.shape))),
    ],
    ids=["zeros", "ones", "constant", "normal", "trunc_normal", "identity"],
)
def test_override_rules(rule: object, check: object) -> None:
    shapes = {f"blocks.{i}.mix": (4, 64, 64) for i in range(3)} | {"fc.weight": (4, 4)}
    kinds = {f"blocks.{i}.mix": "param" for i in range(3)} | {"fc": "linear"}
    t = init_tensors(shapes, kinds, seed=0, overrides={"blocks.*.mix": rule})
    for i in range(3):
        assert check(t[f"blocks.{i}.mix"]), (rule, i)
    np.testing.assert_array_equal(t["fc.weight"], init_tensors(shapes, kinds, seed=0)["fc.weight"])


def test_the_last_matching_override_wins() -> None:
    shapes = {"a.gamma": (3,), "b.gamma": (3,)}
    kinds = {"a.gamma": "param", "b.gamma": "param"}
    t = init_tensors(shapes, kinds, overrides={"*.gamma": ("constant", 1.0), "b.*": ("constant", 2.0)})
    np.testing.assert_array_equal(t["a.gamma"], 1.0)
    np.testing.assert_array_equal(t["b.gamma"], 2.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"*.gama": ("zeros",)}, "match no tensor"),
        ({"*.gamma": ("zero",)}, "unknown rule"),
        ({"*.gamma": ("constant",)}, "takes 1 argument"),
        ({"*.gamma": ("normal", -1.0)}, "positive std"),
        ({"*.gamma": ("normal", "big")}, "finite number"),
        ({"*.gamma": 3.0}, "a rule is a tuple"),
        ({"*.gamma": ("identity",)}, "square"),
    ],
)
def test_bad_overrides_raise(overrides: dict, message: str) -> None:
    with pytest.raises(InitError, match=message):
        init_tensors({"a.gamma": (3,)}, {"a.gamma": "param"}, overrides=overrides)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seeds_raise(seed: object) -> None:
    with pytest.raises(InitError, match="seed"):
        init_tensors({"a": (2,)}, {"a": "param"}, seed=seed)  # type: ignore[arg-type]


class _Rules:
    def __init__(self, rules: dict | None) -> None:
        if rules is not None:
            self.init_rules = rules


def test_collect_scopes_submodule_rules_and_lets_outer_rules_win() -> None:
    modules = [
        ("", _Rules({"blocks.0.ls.gamma": ("constant", 3.0)})),
        ("blocks", _Rules(None)),
        ("blocks.0.ls", _Rules({"gamma": ("constant", 1.0)})),
        ("blocks.1.ls", _Rules({"gamma": ("constant", 1.0)})),
    ]
    rules = core.collect(modules, {"blocks.1.ls.gamma": ("constant", 4.0)})
    shapes = {f"blocks.{i}.ls.gamma": (2,) for i in range(3)}
    t = init_tensors(shapes, dict.fromkeys(shapes, "param"), overrides=rules)
    np.testing.assert_array_equal(t["blocks.0.ls.gamma"], 3.0)  # the model's rule over the layer's
    np.testing.assert_array_equal(t["blocks.1.ls.gamma"], 4.0)  # the caller's over all
    assert np.abs(t["blocks.2.ls.gamma"]).max() <= 0.04 and t["blocks.2.ls.gamma"].std() > 0  # default
    assert core.scoped("a[1]", {"w": "zeros"}) == {"a[[]1[]].w": "zeros"}
    with pytest.raises(InitError, match="mapping"):
        core.collect([("x", _Rules(("zeros",)))])  # type: ignore[arg-type]


def test_buffers_and_keep_are_left_out() -> None:
    shapes = {"table": (4, 4), "fc.weight": (2, 2), "fc.bias": (2,)}
    kinds = {"table": "buffer", "fc": "linear"}
    assert init_tensors(shapes, kinds).keys() == {"fc.weight", "fc.bias"}
    t = init_tensors(shapes, kinds, overrides={"fc.weight": "keep", "table": ("identity",)})
    assert t.keys() == {"table", "fc.bias"}
    np.testing.assert_array_equal(t["table"], np.eye(4))


# --- both backends ------------------------------------------------------------------------------------


def _mirrored_toys() -> tuple[object, object]:
    """A torch and a flax module of every kind, with the same paths."""
    import jax.numpy as jnp
    import torch
    from flax import nnx

    class TorchToy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.bn = torch.nn.BatchNorm2d(8)
            self.gn = torch.nn.GroupNorm(2, 8)
            self.rms = torch.nn.RMSNorm(8)
            self.tok = torch.nn.Embedding(10, 8)
            self.fc = torch.nn.Linear(8, 4)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
            self.register_buffer("table", torch.arange(4.0))

    class FlaxToy(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv = nnx.Conv(3, 8, (3, 3), padding="VALID", rngs=rngs)
            self.up = nnx.ConvTranspose(8, 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.gn = nnx.GroupNorm(8, num_groups=2, rngs=rngs)
            self.rms = nnx.RMSNorm(8, rngs=rngs)
            self.tok = nnx.Embed(10, 8, rngs=rngs)
            self.fc = nnx.Linear(8, 4, rngs=rngs)
            self.cls_token = nnx.Param(jnp.zeros((1, 1, 8)))
            self.table = nnx.Variable(jnp.arange(4.0))

    return TorchToy(), FlaxToy(nnx.Rngs(0))


def test_every_kind_is_bit_identical_in_both_backends() -> None:
    from vit_flax.checkpoint import module_kinds as flax_kinds
    from vit_flax.checkpoint import state_numpy as flax_state
    from vit_flax.init import init_weights as flax_init
    from vit_parity.core.convert import convert
    from vit_torch.checkpoint import module_kinds as torch_kinds
    from vit_torch.checkpoint import state_numpy as torch_state
    from vit_torch.init import init_weights as torch_init

    torch_toy, flax_toy = _mirrored_toys()
    kinds = torch_kinds(torch_toy)
    assert kinds == flax_kinds(flax_toy)
    assert set(kinds.values()) == {*core.KIND_RULES} - {"layernorm"}  # layernorm: the registry models
    torch_tensors = torch_state(torch_init(torch_toy, seed=1))
    flax_tensors = convert(flax_state(flax_init(flax_toy, seed=1)), kinds, source="flax", target="torch")
    assert torch_tensors.keys() == flax_tensors.keys()
    for key, value in torch_tensors.items():
        np.testing.assert_array_equal(flax_tensors[key], value, err_msg=key)
    np.testing.assert_array_equal(torch_tensors["table"], np.arange(4.0))


ARCHS = sorted(spec.REGISTRY)


def _build_pair(arch: str, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from flax import nnx

    from vit_flax.checkpoint import to_checkpoint as flax_checkpoint
    from vit_flax.init import init_weights as flax_init
    from vit_torch.checkpoint import to_checkpoint as torch_checkpoint
    from vit_torch.init import init_weights as torch_init

    entry = spec.get(arch)
    case = entry.case()  # sub-models (a wrapper's teacher and student) built from their own configs
    torch_model = torch_init(case.build("torch", entry.load_class("torch")), seed=seed)
    flax_model = flax_init(case.build("flax", entry.load_class("flax"), rngs=nnx.Rngs(0)), seed=seed)
    return torch_checkpoint(torch_model).tensors, flax_checkpoint(flax_model).to_layout("torch").tensors


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_gives_bit_identical_weights_in_both_backends(arch: str) -> None:
    torch_tensors, flax_tensors = _build_pair(arch, seed=5)
    assert torch_tensors.keys() == flax_tensors.keys()
    for key, value in torch_tensors.items():
        assert value.dtype == flax_tensors[key].dtype, key
        np.testing.assert_array_equal(flax_tensors[key], value, err_msg=key)
    other, _ = _build_pair(arch, seed=6)
    drawn = [k for k, v in torch_tensors.items() if v.size > 1 and np.unique(v).size > 1]
    assert drawn, "some tensors are random"
    for key in drawn:
        assert not np.array_equal(other[key], torch_tensors[key]), key
