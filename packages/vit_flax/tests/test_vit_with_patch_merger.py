"""ViT with a patch merger: the merger and the whole model against computations from their parameters, the merge
layer's numbering, bad arguments and inputs named."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.vit_with_patch_merger import PatchMerger, ViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=8)


def params(module: nnx.Module, prefix: str = "") -> dict[str, jax.Array]:
    return {prefix + ".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, eps: float = 1e-5) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * w + b


def merge(x: jax.Array, p: dict, pre: str) -> tuple[jax.Array, jax.Array]:
    """Normalize the tokens, softmax the queries' scaled dot products over the tokens, sum the normalized tokens."""
    x = layer_norm(x, p[pre + "norm.scale"], p[pre + "norm.bias"])
    q = p[pre + "queries"]
    weights = jax.nn.softmax(jnp.einsum("md,bnd->bmn", q, x) / math.sqrt(q.shape[-1]), axis=-1)
    return jnp.einsum("bmn,bnd->bmd", weights, x), weights


def attention(x: jax.Array, p: dict, pre: str, heads: int) -> jax.Array:
    b, n, _ = x.shape
    w = jnp.split(p[pre + "to_qkv.kernel"], 3, axis=1)
    q, k, v = ((x @ t).reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for t in w)
    probs = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1]), axis=-1)
    out = jnp.einsum("bhij,bhjd->bhid", probs, v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.kernel"] + p[pre + "to_out.bias"]


def by_hand(model: ViT, img: jax.Array, merge_after: int, heads: int) -> tuple[jax.Array, list[int]]:
    """The logits, and the number of tokens each block saw."""
    p = params(model)
    b, hh, ww, c = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.scale"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.kernel"] + p[e + "proj.bias"], p[e + "post_norm.scale"], p[e + "post_norm.bias"])
    x = x + p["pos_embedding"]
    seen = []
    for i in range(len(model.transformer.blocks)):
        seen.append(x.shape[1])
        pre = f"transformer.blocks.{i}."
        x = x + attention(layer_norm(x, p[pre + "norm1.scale"], p[pre + "norm1.bias"]), p, pre + "attn.", heads)
        h = layer_norm(x, p[pre + "norm2.scale"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.kernel"]
        h = h + p[pre + "ff.fc1.bias"]
        h = 0.5 * h * (1 + jax.scipy.special.erf(h / math.sqrt(2)))
        x = x + h @ p[pre + "ff.fc2.kernel"] + p[pre + "ff.fc2.bias"]
        if i + 1 == merge_after:  # counted from 1
            x = merge(x, p, "transformer.patch_merger.")[0]
    x = layer_norm(x, p["transformer.norm.scale"], p["transformer.norm.bias"]).mean(1)
    return x @ p["mlp_head.kernel"] + p["mlp_head.bias"], seen


def _perturbed(module: nnx.Module) -> nnx.Module:
    """Norms off their start (ones and zeros), so that a swapped scale and bias would show."""
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        if var[...].ndim == 1:
            var[...] = var[...] + 0.5 * rng.standard_normal(var[...].shape).astype(np.float32)
    return module


@nnx.jit
def forward(model: ViT, img: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    return model(img, return_features=True)


@pytest.fixture(scope="module")
def models() -> dict[int, ViT]:
    """One model per merge layer, built once for the module."""
    built = {}
    for k in (1, 3):
        model = _perturbed(ViT(patch_merge_layer=k, patch_merge_num_tokens=3, **SMALL, rngs=nnx.Rngs(0)))
        model.eval()
        built[k] = model
    return built


@pytest.mark.parametrize("layer", [1, 3])
def test_model_matches_a_computation_from_its_parameters(models: dict, layer: int) -> None:
    """``patch_merge_layer`` counts blocks from 1; the merged tokens go on through the remaining blocks and the final
    norm."""
    img = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    model = models[layer]
    want, seen = jax.jit(lambda x: by_hand(model, x, layer, heads=2))(img)
    logits, f = forward(model, img)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    assert [f[f"block{i:02d}"].shape[1] for i in range(3)] == list(seen) == [16] * layer + [3] * (3 - layer)
    last = f["block02"] if layer < 3 else model.transformer.patch_merger(f["block02"])
    np.testing.assert_allclose(f["pre_logits"], model.transformer.norm(last).mean(1), rtol=1e-6, atol=1e-6)


def test_default_merge_layer_is_half_way() -> None:
    """``None`` merges after block ``depth // 2`` (counted from 1), after the only block when ``depth == 1``."""
    for depth, index in [(1, 0), (3, 0), (4, 1)]:
        assert ViT(**dict(SMALL, depth=depth)).transformer.merge_index == index


def test_patch_merger_alone_on_any_number_of_tokens() -> None:
    merger = _perturbed(PatchMerger(dim=16, num_tokens_out=5, rngs=nnx.Rngs(0)))
    assert merger.queries[...].shape == (5, 16)
    p = params(merger, "m.")
    for n in (1, 7):
        x = 3 * jax.random.normal(jax.random.key(n), (2, n, 16)) + 1
        out, weights = merger(x, return_attn=True)
        want, want_weights = merge(x, p, "m.")
        assert out.shape == (2, 5, 16) and weights.shape == (2, 5, n)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights.sum(-1), np.ones((2, 5)), rtol=1e-6)
    # a merger's output is a convex combination of the normalized tokens: one token is returned as it is normalized
    np.testing.assert_allclose(
        merger(x[:, :1]), jnp.broadcast_to(merger.norm(x[:, :1]), (2, 5, 16)), rtol=1e-6, atol=1e-6
    )


def test_bad_arguments_and_inputs_are_named() -> None:
    for layer in (0, 4, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"patch_merge_layer counts .* must be in 1\.\.3 \(depth=3\)"):
            ViT(**SMALL, patch_merge_layer=layer)
    with pytest.raises(ValueError, match="patch_merge_num_tokens must be a positive int, got 0"):
        ViT(**SMALL, patch_merge_num_tokens=0)
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        ViT(**dict(SMALL, image_size=18))
    merger = PatchMerger(dim=16, num_tokens_out=4)
    with pytest.raises(
        ValueError, match=r"x must be tokens of shape \(b, n, dim=16\) with n >= 1, got shape \(2, 5, 8\)"
    ):
        merger(jnp.zeros((2, 5, 8)))
    with pytest.raises(ValueError, match=r"\(b, n, dim=16\).*got shape \(5, 16\)"):
        merger(jnp.zeros((5, 16)))
    with pytest.raises(ValueError, match=r"with n >= 1, got shape \(2, 0, 16\)"):
        merger(jnp.zeros((2, 0, 16)))
    model = ViT(**dict(SMALL, channels=1))
    with pytest.raises(ValueError, match="channels=1"):
        model(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(jnp.zeros((1, 16, 20, 1)))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(jnp.zeros((1, 10, 16, 1)))
