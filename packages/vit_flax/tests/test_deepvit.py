"""DeepViT: re-attention and the whole model against computations from the parameters; bad input named."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.attention_variants import TalkingHeadsAttention
from vit_flax.deepvit import DeepViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=3, mlp_dim=32, dim_head=8)


def params(module: nnx.Module, prefix: str = "") -> dict[str, jax.Array]:
    return {prefix + ".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, eps: float = 1e-5) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * w + b


def re_attention(x: jax.Array, p: dict, pre: str, heads: int) -> tuple[jax.Array, jax.Array]:
    """Softmax maps mixed across heads by ``mix_heads_post_attn``, normalized over the heads, then the values."""
    b, n, _ = x.shape
    w = jnp.split(p[pre + "to_qkv.kernel"], 3, axis=1)
    q, k, v = ((x @ t).reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for t in w)
    probs = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1]), axis=-1)
    mixed = jnp.einsum("bhij,hg->bgij", probs, p[pre + "mix_heads_post_attn"])
    # LayerNorm over the heads, written out at each (i, j)
    mu = mixed.mean(1, keepdims=True)
    var = ((mixed - mu) ** 2).mean(1, keepdims=True)
    scale, shift = p[pre + "head_norm.scale"].reshape(1, -1, 1, 1), p[pre + "head_norm.bias"].reshape(1, -1, 1, 1)
    attn = (mixed - mu) / jnp.sqrt(var + 1e-5) * scale + shift
    out = jnp.einsum("bhij,bhjd->bhid", attn, v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.kernel"] + p[pre + "to_out.bias"], probs


def deepvit_by_hand(model: DeepViT, img: jax.Array, heads: int) -> jax.Array:
    p = params(model)
    b, hh, ww, c = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.scale"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.kernel"] + p[e + "proj.bias"], p[e + "post_norm.scale"], p[e + "post_norm.bias"])
    x = jnp.concatenate((jnp.broadcast_to(p["cls_token"], (b, 1, x.shape[-1])), x), axis=1) + p["pos_embedding"]
    for i in range(len(model.transformer.blocks)):
        pre = f"transformer.blocks.{i}."
        x = x + re_attention(layer_norm(x, p[pre + "norm1.scale"], p[pre + "norm1.bias"]), p, pre + "attn.", heads)[0]
        h = layer_norm(x, p[pre + "norm2.scale"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.kernel"]
        h = h + p[pre + "ff.fc1.bias"]
        h = 0.5 * h * (1 + jax.scipy.special.erf(h / math.sqrt(2)))
        x = x + h @ p[pre + "ff.fc2.kernel"] + p[pre + "ff.fc2.bias"]
    pooled = x[:, 0] if model.pool == "cls" else x.mean(1)
    return layer_norm(pooled, p["norm.scale"], p["norm.bias"]) @ p["mlp_head.kernel"] + p["mlp_head.bias"]


def _perturbed(model: nnx.Module) -> nnx.Module:
    """Mixing matrices and head norms away from their start, so that both count."""
    rng = np.random.default_rng(0)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = ".".join(map(str, path))
        if "mix_heads" in name or "head_norm" in name:
            var[...] = var[...] + 0.5 * rng.standard_normal(var[...].shape).astype(np.float32)
    return model


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_deepvit_matches_a_computation_from_its_parameters(pool: str) -> None:
    model = _perturbed(DeepViT(pool=pool, **SMALL, rngs=nnx.Rngs(0)))
    model.eval()
    img = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    logits, f = model(img, return_features=True)
    np.testing.assert_allclose(logits, deepvit_by_hand(model, img, heads=3), rtol=1e-5, atol=1e-5)
    if pool == "mean":  # the pooled token is normalized after pooling
        np.testing.assert_allclose(f["pre_logits"], model.norm(f["block01"].mean(1)), rtol=1e-6, atol=1e-6)


def test_re_attention_by_hand_and_its_maps() -> None:
    attn = _perturbed(TalkingHeadsAttention(16, heads=4, dim_head=8, pre_mix=False, head_norm=True, rngs=nnx.Rngs(0)))
    attn.eval()
    assert attn.mix_heads_pre_attn is None and attn.mix_heads_post_attn[...].shape == (4, 4)
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    out, probs = attn(x, return_attn=True)
    want, want_probs = re_attention(x, params(attn, "a."), "a.", 4)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)  # the softmax's maps, before re-attention
    np.testing.assert_allclose(probs.sum(-1), np.ones((2, 4, 6)), rtol=1e-6)


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        DeepViT(**dict(SMALL, pool="max"))
    with pytest.raises(ValueError, match="heads must be an int >= 2: re-attention"):
        DeepViT(**dict(SMALL, heads=1))
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        DeepViT(**dict(SMALL, image_size=18))
    model = DeepViT(**dict(SMALL, channels=1))
    with pytest.raises(ValueError, match="channels=1"):
        model(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(jnp.zeros((1, 16, 20, 1)))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(jnp.zeros((1, 10, 16, 1)))
    with pytest.raises(ValueError, match=r"4-D tensor \(b height width c\)"):
        model(jnp.zeros((1, 16, 16)))
