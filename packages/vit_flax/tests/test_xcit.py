"""XCiT: cross-covariance attention, local patch interaction, BatchNorm, depthwise convolution, class attention and
layer dropout against computations from the parameters (channels-last)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from vit_flax.attention_variants import CrossCovarianceAttention
from vit_flax.convolution import BatchNorm, DepthwiseConv
from vit_flax.init import init_weights
from vit_flax.xcit import XCiT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, heads=2, mlp_dim=32, dim_head=8)


def params(module: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """Parameters and batch statistics by dotted path, as float64 numpy arrays."""
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    return {prefix + ".".join(map(str, k)): np.asarray(v[...], np.float64) for k, v in nnx.to_flat_state(state)}


# --- an independent XCiT, from the parameters with numpy (float64) ----------------------------------------------


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def depthwise(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """``(n, h, w, c)`` maps, one ``(k, k)`` kernel per channel (``w`` is flax's ``(k, k, 1, c)``): a sum of
    shifted, zero-padded copies."""
    k = w.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h_out = (x.shape[1] + 2 * pad - k) // stride + 1
    w_out = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], h_out, w_out, x.shape[3]))
    for i in range(k):
        for j in range(k):
            window = xp[:, i : i + stride * (h_out - 1) + 1 : stride, j : j + stride * (w_out - 1) + 1 : stride]
            out = out + window * w[i, j, 0]
    return out + b


def xca(x: np.ndarray, p: dict, pre: str, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Cross-covariance attention of ``(b, n, dim)`` tokens: maps ``(b, h, d, d)`` over the feature axis."""
    w = p[pre + "to_qkv.kernel"]
    inner = w.shape[1] // 3
    b, n, _ = x.shape
    q, k, v = ((x @ w[:, i * inner : (i + 1) * inner]).reshape(b, n, heads, -1).transpose(0, 2, 3, 1) for i in range(3))
    q = q / np.sqrt((q**2).sum(-1, keepdims=True))
    k = k / np.sqrt((k**2).sum(-1, keepdims=True))
    probs = softmax(np.einsum("bhin,bhjn->bhij", q, k) * np.exp(p[pre + "temperature"]))
    out = np.einsum("bhij,bhjn->bhin", probs, v).transpose(0, 3, 1, 2).reshape(b, n, -1)
    return out @ p[pre + "to_out.kernel"] + p[pre + "to_out.bias"], probs


def class_attention(cls: np.ndarray, patches: np.ndarray, p: dict, pre: str, heads: int) -> np.ndarray:
    w = p[pre + "to_qkv.kernel"]
    inner = w.shape[1] // 3
    ctx = np.concatenate((cls, patches), 1)
    b, m = cls.shape[0], ctx.shape[1]
    q = (cls @ w[:, :inner]).reshape(b, 1, heads, -1).transpose(0, 2, 1, 3)
    k = (ctx @ w[:, inner : 2 * inner]).reshape(b, m, heads, -1).transpose(0, 2, 1, 3)
    v = (ctx @ w[:, 2 * inner :]).reshape(b, m, heads, -1).transpose(0, 2, 1, 3)
    probs = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]))
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(b, 1, -1)
    return out @ p[pre + "to_out.kernel"] + p[pre + "to_out.bias"]


def mlp(x: np.ndarray, p: dict, pre: str) -> np.ndarray:
    return gelu(x @ p[pre + "fc1.kernel"] + p[pre + "fc1.bias"]) @ p[pre + "fc2.kernel"] + p[pre + "fc2.bias"]


def xca_block(x: np.ndarray, grid: tuple[int, int], p: dict, pre: str, heads: int) -> np.ndarray:
    """One XCA layer in eval mode: attention, local patch interaction (BatchNorm's running statistics), MLP."""
    h = layer_norm(x, p[pre + "norm1.scale"], p[pre + "norm1.bias"])
    x = x + p[pre + "ls1.gamma"] * xca(h, p, pre + "attn.", heads)[0]
    b, n, d = x.shape
    h = layer_norm(x, p[pre + "norm_lpi.scale"], p[pre + "norm_lpi.bias"]).reshape(b, *grid, d)
    h = depthwise(h, p[pre + "lpi.conv1.kernel"], p[pre + "lpi.conv1.bias"])
    h = (h - p[pre + "lpi.bn.mean"]) / np.sqrt(p[pre + "lpi.bn.var"] + 1e-5)
    h = gelu(h * p[pre + "lpi.bn.scale"] + p[pre + "lpi.bn.bias"])
    h = depthwise(h, p[pre + "lpi.conv2.kernel"], p[pre + "lpi.conv2.bias"])
    x = x + p[pre + "ls_lpi.gamma"] * h.reshape(b, n, d)
    return x + p[pre + "ls2.gamma"] * mlp(layer_norm(x, p[pre + "norm2.scale"], p[pre + "norm2.bias"]), p, pre + "ff.")


def cls_block(cls: np.ndarray, patches: np.ndarray, p: dict, pre: str, heads: int) -> np.ndarray:
    h = layer_norm(cls, p[pre + "norm1.scale"], p[pre + "norm1.bias"])
    cls = cls + p[pre + "ls1.gamma"] * class_attention(h, patches, p, pre + "attn.", heads)
    h = layer_norm(cls, p[pre + "norm2.scale"], p[pre + "norm2.bias"])
    return cls + p[pre + "ls2.gamma"] * mlp(h, p, pre + "ff.")


def xcit_by_hand(model: XCiT, img: np.ndarray, keep: list[bool], heads: int) -> np.ndarray:
    p = params(model)
    img = np.asarray(img, np.float64)
    b, hh, ww, c = img.shape
    ph, pw = model.patch_size
    grid = (hh // ph, ww // pw)
    patches = img.reshape(b, grid[0], ph, grid[1], pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.scale"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.kernel"] + p[e + "proj.bias"], p[e + "post_norm.scale"], p[e + "post_norm.bias"])
    full = model.grid
    x = x + p["pos_embedding"].reshape(full[0], full[1], -1)[: grid[0], : grid[1]].reshape(1, -1, x.shape[-1])
    depth, cls_depth = model.depths
    for i in range(depth):
        if keep[i]:
            x = xca_block(x, grid, p, f"patch_transformer.blocks.{i}.", heads)
    x = layer_norm(x, p["patch_transformer.norm.scale"], p["patch_transformer.norm.bias"])
    cls = np.broadcast_to(p["cls_token"], (b, 1, x.shape[-1]))
    for j in range(cls_depth):
        if keep[depth + j]:
            cls = cls_block(cls, x, p, f"cls_transformer.blocks.{j}.", heads)
    return layer_norm(cls[:, 0], p["norm.scale"], p["norm.bias"]) @ p["mlp_head.kernel"] + p["mlp_head.bias"]


def _perturbed(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Layer scales, temperatures, BatchNorm affine parameters and running statistics moved from their start, so
    that all count."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        name = ".".join(map(str, path))
        shape = var[...].shape
        if name.endswith(("gamma", "temperature", "bn.scale", "bn.var")):
            var[...] = jnp.asarray(0.5 + rng.random(shape), jnp.float32)
        elif name.endswith(("bn.bias", "bn.mean")):
            var[...] = jnp.asarray(0.3 * rng.standard_normal(shape), jnp.float32)
    return model


@nnx.jit(static_argnums=3)
def run(m: XCiT, x: jax.Array, keep: jax.Array | None = None, features: bool = False) -> jax.Array:
    return m(x, keep_layers=keep, return_features=features)


# --- the model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "kernel", "size"),
    [([True] * 4, 3, (16, 16)), ([False, True, True, False], 5, (16, 16)), ([True, False, False, True], 1, (8, 12))],
)
def test_xcit_matches_a_computation_from_its_parameters(keep: list[bool], kernel: int, size: tuple[int, int]) -> None:
    model = _perturbed(XCiT(depth=2, cls_depth=2, local_patch_kernel_size=kernel, **SMALL, rngs=nnx.Rngs(0)))
    model.eval()
    img = jax.random.normal(jax.random.key(1), (2, *size, 3))
    want = xcit_by_hand(model, img, keep, heads=2)
    got = run(model, img) if all(keep) else run(model, img, jnp.asarray(keep))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layer_scale_and_temperature_starts() -> None:
    a = params(init_weights(XCiT(depth=2, cls_depth=1, **SMALL, rngs=nnx.Rngs(0)), seed=3))
    gammas = [v for k, v in a.items() if k.endswith("gamma")]
    assert len(gammas) == 3 * 2 + 2 * 1 and all(np.all(g == np.float32(0.1)) for g in gammas)
    temps = [v for k, v in a.items() if k.endswith("temperature")]
    assert len(temps) == 2 and all(t.shape == (2, 1, 1) and np.all(t == 1) for t in temps)
    built = params(XCiT(depth=1, cls_depth=1, **SMALL, rngs=nnx.Rngs(0)))
    assert all(np.all(v == 1) for k, v in built.items() if k.endswith("temperature"))


# --- layer dropout and BatchNorm statistics ----------------------------------------------------------------------


def _stats(model: XCiT, i: int) -> tuple[np.ndarray, np.ndarray]:
    bn = model.patch_transformer.blocks[i].lpi.bn
    return np.asarray(bn.mean[...]), np.asarray(bn.var[...])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_dropped_block_passes_its_input_and_keeps_its_statistics(jit: bool) -> None:
    model = XCiT(depth=2, cls_depth=2, layer_dropout=0.5, **SMALL, rngs=nnx.Rngs(0))
    model.train()
    img = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    keep = jnp.asarray([True, False, False, True])
    if jit:
        _, f = run(model, img, keep, True)
    else:
        _, f = model(img, keep_layers=keep, return_features=True, return_attn=True)
        assert list(f) == [
            "block00/attn", "block00", "block01/attn", "block01", "cls/block00/attn", "cls/block00",
            "cls/block01/attn", "cls/block01", "pre_logits",
        ]  # fmt: skip
        assert f["block00/attn"].shape == (2, 2, 8, 8)  # over the features of each head
        np.testing.assert_allclose(f["block00/attn"].sum(-1), np.ones((2, 2, 8)), rtol=1e-5)
        assert f["block01/attn"].shape == (2, 2, 8, 8) and not jnp.any(f["block01/attn"])  # dropped: zeros
        assert f["cls/block01/attn"].shape == (2, 2, 1, 17)  # the class token over itself and 16 patches
    np.testing.assert_array_equal(f["block01"], f["block00"])
    (mean0, var0), (mean1, var1) = _stats(model, 0), _stats(model, 1)
    assert np.any(mean0 != 0) and np.any(var0 != 1), "the kept block updated its running statistics"
    assert np.all(mean1 == 0) and np.all(var1 == 1), "the dropped block's statistics are as they were"


def test_layer_dropout_draws_in_training_only() -> None:
    model = XCiT(depth=2, cls_depth=1, layer_dropout=0.5, **SMALL, rngs=nnx.Rngs(0))
    model.train()
    img = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    outs = [run(model, img) for _ in range(6)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:]), "the draw differs between calls"
    model.eval()
    # in eval mode every layer runs: as keeping all of them (two programs, so to rounding)
    np.testing.assert_allclose(run(model, img), run(model, img, jnp.ones(3, bool)), rtol=1e-6, atol=1e-6)


# --- the shared pieces -----------------------------------------------------------------------------------------


def test_cross_covariance_attention_by_hand() -> None:
    attn = _perturbed(CrossCovarianceAttention(16, heads=3, dim_head=8, rngs=nnx.Rngs(0)))
    attn.eval()
    x = jax.random.normal(jax.random.key(1), (2, 7, 16))
    out, probs = attn(x, return_attn=True)
    want, want_probs = xca(np.asarray(x, np.float64), params(attn, "a."), "a.", 3)
    assert out.shape == (2, 7, 16) and probs.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(attn(x), out)
    with pytest.raises(ValueError, match="CrossCovarianceAttention takes no mask"):
        attn(x, jnp.ones((2, 1, 7, 7), bool))
    attn.temperature[...] = jnp.full((3, 1, 1), -1e4)  # exp(temperature) scales the logits: uniform maps
    np.testing.assert_allclose(attn(x, return_attn=True)[1], np.full((2, 3, 8, 8), 1 / 8), rtol=1e-6)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (5, 1), (1, 1), (3, 2)])
def test_depthwise_conv_by_hand(kernel: int, stride: int) -> None:
    conv = DepthwiseConv(6, kernel, stride=stride, rngs=nnx.Rngs(0))
    assert conv.kernel.shape == (kernel, kernel, 1, 6) and conv.bias.shape == (6,)
    conv.bias[...] = jax.random.normal(jax.random.key(2), (6,))
    x = jax.random.normal(jax.random.key(1), (2, 5, 7, 6))
    out = conv(x)
    if stride == 1:
        assert out.shape == x.shape  # an odd kernel keeps the map's size
    assert out.shape[1:3] == (
        (5 + 2 * (kernel // 2) - kernel) // stride + 1,
        (7 + 2 * (kernel // 2) - kernel) // stride + 1,
    )
    w, b = (np.asarray(t[...], np.float64) for t in (conv.kernel, conv.bias))
    np.testing.assert_allclose(out, depthwise(np.asarray(x, np.float64), w, b, stride), rtol=1e-5, atol=1e-6)


def test_batchnorm_updates_as_torch_and_follows_train_and_eval() -> None:
    bn = BatchNorm(4, momentum=0.3, eps=1e-3, rngs=nnx.Rngs(0))
    assert bn.momentum == pytest.approx(0.7) and bn.epsilon == 1e-3 and not bn.use_fast_variance
    bn.scale[...] = jnp.asarray([0.5, 1.0, 1.5, 2.0])
    bn.bias[...] = jnp.asarray([0.1, -0.2, 0.3, 0.0])
    x = 2 + 3 * jax.random.normal(jax.random.key(0), (3, 5, 2, 4))
    n = 3 * 5 * 2
    xs = np.asarray(x, np.float64)
    mean, var = xs.mean((0, 1, 2)), xs.var((0, 1, 2))
    y = bn(x)  # built in training mode, as nnx.BatchNorm
    want = (xs - mean) / np.sqrt(var + 1e-3) * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], 0.3 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var[...], 0.7 + 0.3 * var * n / (n - 1), rtol=1e-5, atol=1e-6)  # unbiased
    bn.eval()
    assert bn.use_running_average
    stats = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    want = (xs - stats[0]) / np.sqrt(stats[1] + 1e-3) * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
    np.testing.assert_allclose(bn(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.mean[...], stats[0])  # eval updates nothing
    bn.train()
    assert not bn.use_running_average
    assert bn(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(jnp.ones((1, 1, 1, 4)))
    for bad in (1.5, -0.1, None, True):
        with pytest.raises(ValueError, match="BatchNorm momentum must be a number in"):
            BatchNorm(4, momentum=bad, rngs=nnx.Rngs(0))


# --- arguments and inputs ------------------------------------------------------------------------------------------


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"cls_depth .* must be an int >= 1"):
        XCiT(depth=1, cls_depth=0, **SMALL)
    with pytest.raises(ValueError, match=r"depth \(cross-covariance blocks\) must be an int >= 0"):
        XCiT(depth=-1, cls_depth=1, **SMALL)
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"layer_dropout must be a probability in \[0, 1\)"):
            XCiT(depth=1, cls_depth=1, layer_dropout=rate, **SMALL)
    for k in (0, 2, 4, -3, 3.0, True):
        with pytest.raises(ValueError, match=r"local_patch_kernel_size must be an odd int >= 1"):
            XCiT(depth=1, cls_depth=1, local_patch_kernel_size=k, **SMALL)
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        XCiT(depth=1, cls_depth=1, **dict(SMALL, image_size=18))
    model = XCiT(depth=1, cls_depth=1, **SMALL)
    with pytest.raises(ValueError, match="channels=3"):
        model(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="height 20 is larger than the model's 16"):
        model(jnp.zeros((1, 20, 16, 3)))
    with pytest.raises(ValueError, match="width 6 must be a positive multiple of the patch size 4"):
        model(jnp.zeros((1, 16, 6, 3)))
    with pytest.raises(ValueError, match=r"keep_layers must hold one boolean per block, shape \(2,\)"):
        model(jnp.zeros((1, 16, 16, 3)), keep_layers=[True, True, False])
    gray = XCiT(depth=1, cls_depth=1, channels=1, **SMALL)
    gray.eval()
    assert gray(jnp.zeros((2, 16, 16, 1))).shape == (2, 5)
