"""Learnable memory in flax: the ViT and an adapter against computations written from the parameters in numpy (the
mask written out by hand), several adapters on one frozen base (an optimizer with ``TRAINABLE`` leaves it alone),
checkpoints and bad input named.

The generic tests cover the rest through the registry case: a gradient of every parameter is zero on the ViT (read
through ``stop_gradient``) and nonzero on the adapter's own; the ViT's dropout runs in training, its draws advance
between calls through the adapter, and eval mode draws nothing. The README's flax example runs in vit_parity's
README test."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vit_flax
from vit_flax.learnable_memory_vit import TRAINABLE, Adapter, ViT
from vit_flax.vit import ViT as PlainViT

Array = jax.Array
BASE = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)


def params(model: nnx.Module) -> dict[str, Array]:
    return {".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def numpy_params(model: nnx.Module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in params(model).items()}


def perturbed(model: nnx.Module, seed: int) -> nnx.Module:
    """Every norm and bias away from its start, so that each one counts (an adapter's own, not its ViT's)."""
    key = jax.random.key(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if var[...].ndim == 1 and path[0] != "vit":
            key, sub = jax.random.split(key)
            var[...] = var[...] + 0.5 * jax.random.normal(sub, var[...].shape)
    return model


def images(b: int = 2, size: int = 16) -> Array:
    return jax.random.normal(jax.random.key(2), (b, size, size, 3))


# --- an independent computation from the parameters, in numpy (float64) --------------------------------------


def layer_norm(x: np.ndarray, p: dict[str, np.ndarray], name: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p[f"{name}.scale"] + p[f"{name}.bias"]


def linear(x: np.ndarray, p: dict[str, np.ndarray], name: str) -> np.ndarray:
    y = x @ p[f"{name}.kernel"]
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu(h: np.ndarray) -> np.ndarray:
    return 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))


def blocks_by_hand(
    p: dict[str, np.ndarray],
    img: np.ndarray,
    *,
    patch: int,
    heads: int,
    depth: int,
    task: np.ndarray | None = None,
    memories: np.ndarray | None = None,
) -> np.ndarray:
    """The ViT's token sequence after its blocks (channels-last image); with a task token put first and memories
    appended to each block's keys and values, the ViT's tokens kept from the task token and the memories."""
    b, hh, ww, c = img.shape
    patches = img.reshape(b, hh // patch, patch, ww // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, -1, patch * patch * c)
    e = "to_patch_embedding."
    x = layer_norm(linear(layer_norm(patches, p, e + "pre_norm"), p, e + "proj"), p, e + "post_norm")
    x = np.concatenate((np.broadcast_to(p["cls_token"], (b, 1, x.shape[-1])), x), axis=1) + p["pos_embedding"]
    n = x.shape[1]
    if task is not None:
        x = np.concatenate((np.broadcast_to(task, (b, 1, x.shape[-1])), x), axis=1)
    for i in range(depth):
        pre = f"transformer.blocks.{i}."
        h = layer_norm(x, p, pre + "norm1")
        kv = h if memories is None else np.concatenate((h, np.broadcast_to(memories[i], (b, *memories.shape[1:]))), 1)
        wq, wk, wv = np.split(p[pre + "attn.to_qkv.kernel"], 3, axis=-1)
        q = (h @ wq).reshape(b, h.shape[1], heads, -1).transpose(0, 2, 1, 3)
        k, v = ((kv @ w).reshape(b, kv.shape[1], heads, -1).transpose(0, 2, 1, 3) for w in (wk, wv))
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        if task is not None:  # the ViT's tokens (rows 1 ...) see neither the task token nor the memories
            logits[:, :, 1:, 0] = -np.inf
            logits[:, :, 1:, 1 + n :] = -np.inf
        out = (softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(b, h.shape[1], -1)
        x = x + linear(out, p, pre + "attn.to_out")
        x = x + linear(gelu(linear(layer_norm(x, p, pre + "norm2"), p, pre + "ff.fc1")), p, pre + "ff.fc2")
    return x


def head_by_hand(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return linear(layer_norm(x, p, "mlp_head.norm"), p, "mlp_head.fc")


@pytest.fixture(scope="module")
def base() -> ViT:
    model = perturbed(ViT(**BASE, rngs=nnx.Rngs(0)), 1)
    model.eval()
    return model


def adapter_on(vit: ViT, seed: int) -> Adapter:
    """An adapter of 3 memories per block and 4 classes (one config: each jitted function compiles once)."""
    adapter = perturbed(Adapter(vit=vit, num_memories_per_layer=3, num_classes=4, rngs=nnx.Rngs(seed)), seed)
    adapter.eval()
    return adapter


@nnx.jit
def forward(model: nnx.Module, img: Array) -> Array:
    return model(img)


@nnx.jit
def forward_features(model: nnx.Module, img: Array) -> tuple[Array, dict[str, Array]]:
    return model(img, return_features=True, return_attn=True)


# --- against computations from the parameters ------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_against_a_computation_from_its_parameters(pool: str) -> None:
    model = perturbed(ViT(**BASE, pool=pool, rngs=nnx.Rngs(0)), 1)
    model.eval()
    img = images()
    p = numpy_params(model)
    x = blocks_by_hand(p, np.asarray(img, np.float64), patch=4, heads=2, depth=2)
    want = head_by_hand(p, x[:, 0] if pool == "cls" else x.mean(1))
    np.testing.assert_allclose(forward(model, img), want, rtol=1e-5, atol=1e-5)


def test_adapter_against_a_computation_from_its_parameters(base: ViT) -> None:
    adapter = adapter_on(base, 3)
    img = images()
    p, own = numpy_params(base), numpy_params(adapter)
    x = blocks_by_hand(
        p, np.asarray(img, np.float64), patch=4, heads=2, depth=2, task=own["memory_cls_token"],
        memories=own["memories_per_layer"],
    )  # fmt: skip
    got, features = forward_features(adapter, img)
    np.testing.assert_allclose(got, head_by_hand(own, x[:, 0]), rtol=1e-5, atol=1e-5)
    assert set(features) == {"block00/attn", "block00", "block01/attn", "block01", "pre_logits"}
    # keys: the task token, the ViT's 17 tokens, 3 memories; the ViT's tokens put no weight on the others
    attn = np.asarray(features["block01/attn"])
    assert attn.shape == (2, 2, 18, 21)
    assert not attn[:, :, 1:, 0].any() and not attn[:, :, 1:, 18:].any() and attn[:, :, 0, 18:].all()


def test_the_vits_tokens_inside_an_adapter_are_the_vits_own(base: ViT) -> None:
    adapter = adapter_on(base, 4)
    img = images()
    _, plain = forward_features(base, img)
    _, inside = forward_features(adapter, img)
    for label in ("block00", "block01"):
        np.testing.assert_allclose(inside[label][:, 1:], plain[label], rtol=1e-5, atol=1e-6)


# --- one frozen base, several adapters -------------------------------------------------------------------------


@nnx.jit
def train_step(adapter: Adapter, opt: nnx.Optimizer, img: Array) -> None:
    def loss(model: Adapter) -> Array:
        return jnp.mean(model(img) ** 2)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, TRAINABLE))(adapter)
    opt.update(adapter, grads)


def test_adapters_share_one_frozen_base_and_change_none_of_its_outputs() -> None:
    v = perturbed(ViT(**BASE, rngs=nnx.Rngs(0)), 1)
    v.eval()
    img = images()
    base_alone = forward(v, img)
    first = adapter_on(v, 5)
    first_alone = forward(first, img)
    second = adapter_on(v, 6)
    assert first.vit is v and second.vit is v

    before = {k: np.asarray(t) for k, t in params(v).items()}
    opt = nnx.Optimizer(first, optax.adamw(0.1, weight_decay=0.5), wrt=TRAINABLE)
    train_step(first, opt, img)
    assert all(np.array_equal(before[k], t) for k, t in params(v).items())

    np.testing.assert_array_equal(forward(v, img), base_alone)
    assert not np.allclose(forward(first, img), first_alone)  # it trained
    third = adapter_on(v, 6)  # the same draw as the second, alone
    np.testing.assert_array_equal(forward(second, img), forward(third, img))


def test_checkpoint_keeps_the_vits_keys(base: ViT, tmp_path: Path) -> None:
    adapter = adapter_on(base, 7)
    own = {"memory_cls_token", "memories_per_layer", "mlp_head.norm.scale", "mlp_head.norm.bias"}
    own |= {"mlp_head.fc.kernel", "mlp_head.fc.bias"}
    assert set(params(adapter)) == {f"vit.{k}" for k in params(base)} | own
    vit_flax.save(adapter, tmp_path / "adapter")
    vit_flax.save(base, tmp_path / "base")
    loaded, alone = vit_flax.load(tmp_path / "adapter"), vit_flax.load(tmp_path / "base")
    loaded.eval()
    alone.eval()
    img = images()
    assert isinstance(loaded, Adapter) and isinstance(loaded.vit, ViT)
    np.testing.assert_array_equal(forward(loaded, img), forward(adapter, img))
    np.testing.assert_array_equal(forward(alone, img), forward(base, img))


def test_bad_input_is_named(base: ViT) -> None:
    img = images()
    with pytest.raises(ValueError, match=r"vit must be a vit_flax\.learnable_memory_vit\.ViT, got ViT"):
        Adapter(vit=nnx.eval_shape(lambda: PlainViT(**BASE)))  # shapes only: nothing to compute
    with pytest.raises(ValueError, match=r"vit must be a vit_flax\.learnable_memory_vit\.ViT, got Linear"):
        Adapter(vit=nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"num_memories_per_layer must be an int >= 1"):
            Adapter(vit=base, num_memories_per_layer=bad)

    adapter = Adapter(vit=base, num_memories_per_layer=3)
    adapter.vit = nnx.eval_shape(lambda: ViT(**{**BASE, "dim": 32}))  # an adapter on a ViT of another width
    with pytest.raises(ValueError, match=r"vit must be a ViT of dim=16 and depth=2 .*\(2, 3, 16\).*got .*dim=32"):
        adapter(img)

    task, memories = jnp.zeros(16), jnp.zeros((2, 3, 16))
    with pytest.raises(ValueError, match=r"class_token must have shape \(16,\).*got \(32,\)"):
        base.memory_forward(img, jnp.zeros(32), memories)
    for bad in ((1, 3, 16), (2, 3, 8), (2, 0, 16), (3, 16)):
        with pytest.raises(ValueError, match=r"memories must have shape \(2, m, 16\) with m >= 1"):
            base.memory_forward(img, task, jnp.zeros(bad))
    with pytest.raises(ValueError, match="img"):
        Adapter(vit=base)(jnp.zeros((2, 3, 16, 16)))  # channels-first
