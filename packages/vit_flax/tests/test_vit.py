"""ViT and SimpleViT behaviour beyond shapes: position cropping, attention maps, bad input, jit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax import SimpleViT, ViT
from vit_flax.layers import Attention, crop_grid, patchify
from vit_parity.core.posemb import sincos_table

SMALL = dict(num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)


def test_patchify_matches_explicit_loop() -> None:
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    patches = patchify(x, (4, 3))
    assert patches.shape == (2, 8, 36)
    for i in range(2):
        for j in range(4):
            want = x[:, 4 * i : 4 * i + 4, 3 * j : 3 * j + 3, :].reshape(2, -1)
            np.testing.assert_array_equal(patches[:, i * 4 + j], want)


def test_fused_attention_matches_explicit_softmax() -> None:
    attn = Attention(16, heads=2, dim_head=8, rngs=nnx.Rngs(0))
    attn.eval()
    x = jax.random.normal(jax.random.key(1), (3, 7, 16))
    mask = jax.random.uniform(jax.random.key(2), (3, 1, 7, 7)) > 0.3
    mask = mask.at[..., 0].set(True)
    fused = attn(x, mask)
    explicit, weights = attn(x, mask, return_attn=True)
    np.testing.assert_allclose(fused, explicit, rtol=1e-5, atol=1e-5)
    assert weights.shape == (3, 2, 7, 7)
    np.testing.assert_allclose(weights.sum(-1), np.ones((3, 2, 7)), rtol=1e-6)
    q, k, _ = np.split(np.asarray(attn.to_qkv(x)), 3, axis=-1)
    q, k = (t.reshape(3, 7, 2, 8).transpose(0, 2, 1, 3) for t in (q, k))
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(8)
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-6)


def test_smaller_image_uses_matching_part_of_the_grid() -> None:
    model = ViT(image_size=32, patch_size=8, **SMALL, rngs=nnx.Rngs(0))
    pos = model.pos_embedding[...][:, 1:]
    cropped = crop_grid(pos, (4, 4), (2, 3))[0]
    np.testing.assert_array_equal(cropped, pos[0].reshape(4, 4, -1)[:2, :3].reshape(6, -1))
    assert not np.array_equal(cropped, pos[0, :6])
    img = jax.random.normal(jax.random.key(0), (1, 16, 24, 3))
    full = jnp.zeros((1, 32, 32, 3)).at[:, :16, :24].set(img)
    small_tokens, grid = model.to_patch_embedding(img)
    full_tokens, _ = model.to_patch_embedding(full)
    assert grid == (2, 3)
    np.testing.assert_allclose(small_tokens, full_tokens.reshape(1, 4, 4, -1)[:, :2, :3].reshape(1, 6, -1))
    assert model(img).shape == (1, 5)


def test_simple_vit_uses_the_2d_sincos_table() -> None:
    model = SimpleViT(image_size=32, patch_size=8, **SMALL, rngs=nnx.Rngs(0))
    model.eval()
    img = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    tokens, grid = model.to_patch_embedding(img)
    x = tokens + jnp.asarray(sincos_table(grid, 32))
    want = model.linear_head(model.transformer(x).mean(1))
    np.testing.assert_allclose(model(img), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [ViT, SimpleViT])
def test_bad_input_names_the_argument(cls: type) -> None:
    model = cls(image_size=32, patch_size=8, **SMALL, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channels=3"):
        model(jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="height 40 is larger than the model's 32"):
        model(jnp.zeros((1, 40, 32, 3)))
    with pytest.raises(ValueError, match="width 20 must be a positive multiple of the patch size 8"):
        model(jnp.zeros((1, 32, 20, 3)))
    with pytest.raises(ValueError, match=r"4-D tensor \(b height width c\)"):
        model(jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        cls(image_size=30, patch_size=8, **SMALL)


def test_pool_must_be_cls_or_mean() -> None:
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        ViT(image_size=32, patch_size=8, pool="max", **SMALL)


def test_seed_example_runs_without_rngs() -> None:
    model = ViT(image_size=32, patch_size=8, **SMALL)
    assert model(jnp.zeros((1, 32, 32, 3))).shape == (1, 5)
    assert "rngs" not in model.config


@pytest.mark.parametrize("cls", [ViT, SimpleViT])
def test_jit_matches_eager(cls: type) -> None:
    model = cls(image_size=32, patch_size=8, **SMALL, rngs=nnx.Rngs(0))
    model.eval()
    img = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, img), model(img), rtol=1e-5, atol=1e-5)


def test_jit_compiles_once_per_shape() -> None:
    model = ViT(image_size=32, patch_size=8, **SMALL, rngs=nnx.Rngs(0))
    model.eval()
    traces = []

    @nnx.jit
    def forward(m: nnx.Module, x: jax.Array) -> jax.Array:
        traces.append(x.shape)
        return m(x)

    for seed in range(3):
        forward(model, jax.random.normal(jax.random.key(seed), (2, 32, 32, 3)))
    assert len(traces) == 1
    forward(model, jnp.zeros((2, 16, 16, 3)))
    assert len(traces) == 2
