"""CaiT: talking heads, class attention, layer scale and layer dropout against computations from the parameters."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.attention_variants import ClassAttention, LayerDropout, TalkingHeadsAttention
from vit_flax.cait import CaiT
from vit_flax.init import init_weights

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, heads=3, mlp_dim=32, dim_head=8)


def params(module: nnx.Module, prefix: str = "") -> dict[str, jax.Array]:
    return {prefix + ".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


# --- an independent CaiT, from the parameters with plain array ops ----------------------------------------------


def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, eps: float = 1e-5) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * w + b


def talking_heads(
    x: jax.Array, ctx: jax.Array, p: dict, pre: str, heads: int, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Queries from ``x``, keys and values from ``ctx``; mixing matrices from ``p`` where present."""
    w = p[pre + "to_qkv.kernel"]
    inner = w.shape[1] // 3
    b, n, m = x.shape[0], x.shape[1], ctx.shape[1]
    q = (x @ w[:, :inner]).reshape(b, n, heads, -1).transpose(0, 2, 1, 3)
    k = (ctx @ w[:, inner : 2 * inner]).reshape(b, m, heads, -1).transpose(0, 2, 1, 3)
    v = (ctx @ w[:, 2 * inner :]).reshape(b, m, heads, -1).transpose(0, 2, 1, 3)
    dots = jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    if pre + "mix_heads_pre_attn" in p:
        dots = jnp.einsum("bhij,hg->bgij", dots, p[pre + "mix_heads_pre_attn"])
    if mask is not None:
        dots = jnp.where(mask, dots, -jnp.inf)
    probs = jax.nn.softmax(dots, axis=-1)
    attn = probs
    if pre + "mix_heads_post_attn" in p:
        attn = jnp.einsum("bhij,hg->bgij", attn, p[pre + "mix_heads_post_attn"])
    out = jnp.einsum("bhij,bhjd->bhid", attn, v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.kernel"] + p[pre + "to_out.bias"], probs


def block(x: jax.Array, ctx: jax.Array | None, p: dict, pre: str, heads: int) -> jax.Array:
    h = layer_norm(x, p[pre + "norm1.scale"], p[pre + "norm1.bias"])
    kv = h if ctx is None else jnp.concatenate((h, ctx), axis=1)
    x = x + p[pre + "ls1.gamma"] * talking_heads(h, kv, p, pre + "attn.", heads)[0]
    h = layer_norm(x, p[pre + "norm2.scale"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.kernel"] + p[pre + "ff.fc1.bias"]
    h = 0.5 * h * (1 + jax.scipy.special.erf(h / math.sqrt(2)))
    return x + p[pre + "ls2.gamma"] * (h @ p[pre + "ff.fc2.kernel"] + p[pre + "ff.fc2.bias"])


def cait_by_hand(model: CaiT, img: jax.Array, keep: list[bool], heads: int) -> jax.Array:
    p = params(model)
    b, hh, ww, c = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.scale"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.kernel"] + p[e + "proj.bias"], p[e + "post_norm.scale"], p[e + "post_norm.bias"])
    x = x + p["pos_embedding"]
    depth, cls_depth = model.depths
    for i in range(depth):
        if keep[i]:
            x = block(x, None, p, f"patch_transformer.blocks.{i}.", heads)
    cls = jnp.broadcast_to(p["cls_token"], (b, 1, x.shape[-1]))
    for j in range(cls_depth):
        if keep[depth + j]:
            cls = block(cls, x, p, f"cls_transformer.blocks.{j}.", heads)
    return layer_norm(cls[:, 0], p["norm.scale"], p["norm.bias"]) @ p["mlp_head.kernel"] + p["mlp_head.bias"]


def _perturbed(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Mixing matrices and layer scales moved from their start, so that both count."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = ".".join(map(str, path))
        if "mix_heads" in name:
            var[...] = var[...] + 0.5 * rng.standard_normal(var[...].shape).astype(np.float32)
        elif name.endswith("gamma"):
            var[...] = jnp.asarray(0.2 + rng.random(var[...].shape), jnp.float32)
    return model


@pytest.fixture(scope="module")
def model() -> CaiT:
    """One model for the tests that run it (each shape compiles once): mixing and layer scales perturbed."""
    return _perturbed(CaiT(depth=2, cls_depth=2, layer_dropout=0.5, **SMALL, rngs=nnx.Rngs(0)))


@nnx.jit
def run(m: CaiT, x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
    TRACES.append(keep is None)
    return m(x, keep_layers=keep)


TRACES: list[bool] = []
IMG = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))


@pytest.mark.parametrize("keep", [[True] * 4, [False, True, True, False], [True, False, False, True]])
def test_cait_matches_a_computation_from_its_parameters(model: CaiT, keep: list[bool]) -> None:
    model.eval()
    want = cait_by_hand(model, IMG, keep, heads=3)
    got = run(model, IMG) if all(keep) else run(model, IMG, jnp.asarray(keep))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_talking_heads_with_a_mask_and_class_attention_by_hand() -> None:
    attn = _perturbed(TalkingHeadsAttention(16, heads=3, dim_head=8, rngs=nnx.Rngs(0)))
    attn.eval()
    x = jax.random.normal(jax.random.key(1), (2, 7, 16))
    mask = jax.random.uniform(jax.random.key(2), (2, 1, 7, 7)) > 0.3
    mask = mask.at[..., 0].set(True)
    out, probs = attn(x, mask, return_attn=True)
    want, want_probs = talking_heads(x, x, params(attn, "a."), "a.", 3, mask)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)  # the softmax's maps: rows sum to one
    assert not jnp.any(jnp.where(jnp.broadcast_to(mask, probs.shape), 0.0, probs))

    cls_attn = _perturbed(ClassAttention(16, heads=3, dim_head=8, pre_mix=True, post_mix=True, rngs=nnx.Rngs(0)))
    cls_attn.eval()
    cls, patches = jax.random.normal(jax.random.key(3), (2, 1, 16)), jax.random.normal(jax.random.key(4), (2, 6, 16))
    out, probs = cls_attn(cls, context=patches, return_attn=True)
    want, _ = talking_heads(cls, jnp.concatenate((cls, patches), 1), params(cls_attn, "a."), "a.", 3)
    assert out.shape == (2, 1, 16) and probs.shape == (2, 3, 1, 7)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ClassAttention needs context="):
        cls_attn(cls)


def test_mixing_starts_standard_normal_and_layer_scale_by_depth() -> None:
    # (that both backends draw the same from a seed, and other values from another, is test_init's)
    a = params(init_weights(CaiT(depth=2, cls_depth=1, **SMALL, rngs=nnx.Rngs(0)), seed=3))
    mixing = [k for k in a if "mix_heads" in k]
    assert len(mixing) == 2 * 3  # pre and post in every block of both stacks
    drawn = np.stack([a[k] for k in mixing])
    assert 0.6 < drawn.std() < 1.5 and abs(drawn.mean()) < 0.5  # 54 draws of a standard normal
    assert all(np.all(v == np.float32(0.1)) for k, v in a.items() if k.endswith("gamma"))
    deep = CaiT(depth=19, cls_depth=1, **dict(SMALL, dim=8, mlp_dim=8, dim_head=4), rngs=nnx.Rngs(0))
    gammas = [v for k, v in params(deep).items() if k.endswith("gamma")]
    assert len(gammas) == 2 * (19 + 1) and all(np.all(g == np.float32(1e-5)) for g in gammas)


def test_layer_dropout_draws_in_training_only_without_retracing(model: CaiT) -> None:
    streams = (model.patch_transformer.layer_dropout.rngs, model.cls_transformer.layer_dropout.rngs)
    model.eval()
    before = [int(s.count[...]) for s in streams]
    np.testing.assert_array_equal(run(model, IMG), run(model, IMG))
    assert [int(s.count[...]) for s in streams] == before, "eval draws nothing"

    model.train()
    TRACES.clear()
    outs = [run(model, IMG) for _ in range(6)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:]), "the draw differs between calls"
    explicit = [run(model, IMG, jnp.asarray(k)) for k in ([1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1])]
    assert not np.array_equal(explicit[0], explicit[1])
    assert TRACES == [True, False], "one trace per kind of call (drawn, explicit), not one per draw"

    drop = LayerDropout(0.9, rngs=nnx.Rngs(dropout=0))
    draws = np.stack([np.asarray(drop(3)) for _ in range(100)])
    assert draws.any(axis=1).all()  # never all dropped
    # each block runs with probability 0.1, and one more when all three were dropped (0.9 ** 3)
    assert len({tuple(d) for d in draws}) > 1 and abs(draws.sum(1).mean() - (3 * 0.1 + 0.9**3)) < 0.2
    drop.eval()
    assert drop(3) is None and LayerDropout(0.0, rngs=nnx.Rngs(0))(3) is None


def test_a_dropped_block_passes_its_input_and_gets_no_gradient(model: CaiT) -> None:
    model.train()
    keep = jnp.asarray([True, False, False, True])
    _, f = model(IMG, keep_layers=keep, return_features=True, return_attn=True)
    np.testing.assert_array_equal(f["block01"], f["block00"])
    assert f["block01/attn"].shape == (2, 3, 16, 16) and not jnp.any(f["block01/attn"])
    assert f["cls/block00/attn"].shape == (2, 3, 1, 17) and not jnp.any(f["cls/block00/attn"])
    np.testing.assert_array_equal(f["cls/block00"], jnp.broadcast_to(model.cls_token[...], (2, 1, 16)))
    grads = params(nnx.jit(nnx.grad(lambda m, k: m(IMG, keep_layers=k).sum()))(model, keep))
    for name, g in grads.items():
        dropped = name.startswith(("patch_transformer.blocks.1.", "cls_transformer.blocks.0."))
        assert (not np.any(g)) == dropped, name


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"cls_depth .* must be an int >= 1"):
        CaiT(depth=1, cls_depth=0, **SMALL)
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"layer_dropout must be a probability in \[0, 1\)"):
            CaiT(depth=1, cls_depth=1, layer_dropout=rate, **SMALL)
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        CaiT(depth=1, cls_depth=1, **dict(SMALL, image_size=18))
    model = CaiT(depth=1, cls_depth=1, **SMALL)
    with pytest.raises(ValueError, match="channels=3"):
        model(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="height 20 is larger than the model's 16"):
        model(jnp.zeros((1, 20, 16, 3)))
    with pytest.raises(ValueError, match="width 6 must be a positive multiple of the patch size 4"):
        model(jnp.zeros((1, 16, 6, 3)))
    with pytest.raises(ValueError, match=r"keep_layers must hold one boolean per block, shape \(2,\)"):
        model(jnp.zeros((1, 16, 16, 3)), keep_layers=[True, True, False])
