"""Parallel ViT: the parallel block and the whole model against computations from their parameters, the attention
maps of every branch, bad arguments and inputs named."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.layers import Block
from vit_flax.parallel_vit import ParallelBlock, ViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)


def params(module: nnx.Module, prefix: str = "") -> dict[str, jax.Array]:
    return {prefix + ".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, eps: float = 1e-5) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * w + b


def attention(x: jax.Array, p: dict, pre: str, heads: int) -> tuple[jax.Array, jax.Array]:
    b, n, _ = x.shape
    w = jnp.split(p[pre + "to_qkv.kernel"], 3, axis=1)
    q, k, v = ((x @ t).reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for t in w)
    probs = jax.nn.softmax(jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1]), axis=-1)
    out = jnp.einsum("bhij,bhjd->bhid", probs, v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.kernel"] + p[pre + "to_out.bias"], probs


def feed_forward(x: jax.Array, p: dict, pre: str) -> jax.Array:
    h = x @ p[pre + "fc1.kernel"] + p[pre + "fc1.bias"]
    h = 0.5 * h * (1 + jax.scipy.special.erf(h / math.sqrt(2)))
    return h @ p[pre + "fc2.kernel"] + p[pre + "fc2.bias"]


def parallel_block(x: jax.Array, p: dict, pre: str, branches: int, heads: int) -> tuple[jax.Array, list]:
    """``x + sum_j attn_j(norm1_j(x))``, then ``x + sum_j ff_j(norm2_j(x))``; the maps of every branch."""
    outs = [
        attention(layer_norm(x, p[f"{pre}{j}.norm1.scale"], p[f"{pre}{j}.norm1.bias"]), p, f"{pre}{j}.attn.", heads)
        for j in range(branches)
    ]
    x = x + sum(out for out, _ in outs)
    x = x + sum(
        feed_forward(layer_norm(x, p[f"{pre}{j}.norm2.scale"], p[f"{pre}{j}.norm2.bias"]), p, f"{pre}{j}.ff.")
        for j in range(branches)
    )
    return x, [maps for _, maps in outs]


def by_hand(model: ViT, img: jax.Array, branches: int, heads: int) -> jax.Array:
    p = params(model)
    b, hh, ww, c = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    x = patches @ p["to_patch_embedding.proj.kernel"] + p["to_patch_embedding.proj.bias"]  # no norms
    x = jnp.concatenate((jnp.broadcast_to(p["cls_token"], (b, 1, x.shape[-1])), x), axis=1) + p["pos_embedding"]
    for i in range(len(model.transformer.blocks)):
        x = parallel_block(x, p, f"transformer.blocks.{i}.branches.", branches, heads)[0]
    pooled = x[:, 0] if model.pool == "cls" else x.mean(1)
    return layer_norm(pooled, p["norm.scale"], p["norm.bias"]) @ p["mlp_head.kernel"] + p["mlp_head.bias"]


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
def models() -> dict[tuple[int, str], ViT]:
    built = {}
    for k, pool in [(2, "cls"), (3, "mean")]:
        model = _perturbed(ViT(num_parallel_branches=k, pool=pool, **SMALL, rngs=nnx.Rngs(0)))
        model.eval()
        built[k, pool] = model
    return built


@pytest.mark.parametrize(("branches", "pool"), [(2, "cls"), (3, "mean")])
def test_model_matches_a_computation_from_its_parameters(models: dict, branches: int, pool: str) -> None:
    model = models[branches, pool]
    assert all(len(block.branches) == branches for block in model.transformer.blocks)
    img = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    logits, f = forward(model, img)
    want = jax.jit(lambda x: by_hand(model, x, branches, heads=2))(img)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    pooled = f["block01"][:, 0] if pool == "cls" else f["block01"].mean(1)  # no norm at the end of the stack
    np.testing.assert_allclose(f["pre_logits"], model.norm(pooled), rtol=1e-6, atol=1e-6)


def test_every_branch_gives_its_attention_map() -> None:
    block = _perturbed(ParallelBlock(16, heads=2, dim_head=8, mlp_dim=32, branches=3, rngs=nnx.Rngs(0)))
    block.eval()
    x = jax.random.normal(jax.random.key(1), (2, 7, 16))
    out, maps = block(x, return_attn=True)
    want, want_maps = parallel_block(x, params(block, "b."), "b.branches.", 3, heads=2)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block(x), out, rtol=1e-5, atol=1e-5)  # flash-style attention, same numbers
    assert list(maps) == ["branch0", "branch1", "branch2"]
    for j in range(3):
        np.testing.assert_allclose(maps[f"branch{j}"], want_maps[j], rtol=1e-5, atol=1e-6)
    graphdef, state = nnx.split(ViT(**SMALL, num_parallel_branches=3))
    labels = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x, return_attn=True)[1], state, jnp.zeros((1, 16, 16, 3))
    )
    assert list(labels) == [f"block{i:02d}/attn/branch{j}" for i in range(2) for j in range(3)]


def test_one_branch_is_the_plain_block() -> None:
    block = _perturbed(ParallelBlock(16, heads=2, dim_head=8, mlp_dim=32, branches=1, rngs=nnx.Rngs(0)))
    block.eval()
    plain = Block(16, heads=2, dim_head=8, mlp_dim=32, rngs=nnx.Rngs(1))
    plain.eval()
    nnx.update(plain, nnx.state(block.branches[0]))
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    np.testing.assert_allclose(block(x), plain(x), rtol=1e-6, atol=1e-6)


def test_bad_arguments_and_inputs_are_named() -> None:
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_parallel_branches must be a positive int"):
            ViT(**SMALL, num_parallel_branches=k)
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        ViT(**SMALL, pool="max")
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        ViT(**dict(SMALL, image_size=18))
    model = ViT(**dict(SMALL, channels=1))
    with pytest.raises(ValueError, match="channels=1"):
        model(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(jnp.zeros((1, 16, 20, 1)))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(jnp.zeros((1, 10, 16, 1)))
    with pytest.raises(ValueError, match=r"4-D tensor \(b height width c\)"):
        model(jnp.zeros((1, 16, 16)))
