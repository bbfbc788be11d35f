"""ViT for small datasets: shifted patch tokenization, locality self-attention and the whole model against
computations from the parameters (channels-last); the seed's examples; bad input named."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.attention_variants import LocalitySelfAttention
from vit_flax.init import init_weights
from vit_flax.vit_for_small_dataset import LSA, SPT, ViT, shifted_copies

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)


def close(got: jax.Array | np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol)


def params(module: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """The module's parameters as float64 numpy arrays, by dotted path."""
    state = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {prefix + ".".join(map(str, k)): np.asarray(v[...], np.float64) for k, v in state}


# --- an independent model, from the parameters in numpy (float64) ---------------------------------------------------


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``(b, h, w, c)`` moved ``dy`` pixels down and ``dx`` right (each -1, 0 or 1), zeros where it uncovers the
    border."""
    out = np.zeros_like(img)
    h, w = img.shape[1:3]
    rows_to, rows_from = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h - max(dy, 0))
    cols_to, cols_from = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w - max(dx, 0))
    out[:, rows_to, cols_to] = img[:, rows_from, cols_from]
    return out


def spt_by_hand(img: np.ndarray, p: dict, pre: str, patch: tuple[int, int]) -> np.ndarray:
    """The image and its copies moved right, left, down, up, on the channels; patches as (ph, pw, c); norm; proj."""
    img = np.asarray(img, np.float64)
    x = np.concatenate([img, shift(img, 0, 1), shift(img, 0, -1), shift(img, 1, 0), shift(img, -1, 0)], axis=-1)
    b, hh, ww, c = x.shape
    ph, pw = patch
    patches = x.reshape(b, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    x = layer_norm(patches, p[pre + "norm.scale"], p[pre + "norm.bias"])
    return x @ p[pre + "proj.kernel"] + p[pre + "proj.bias"]


erf = np.vectorize(math.erf)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def lsa_by_hand(x: np.ndarray, p: dict, pre: str, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits times exp(temperature), the diagonal masked, softmax, values, output projection."""
    x = np.asarray(x, np.float64)
    b, n, _ = x.shape
    w = np.split(p[pre + "to_qkv.kernel"], 3, axis=1)
    q, k, v = ((x @ t).reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for t in w)
    logits = np.einsum("bhid,bhjd->bhij", q, k) * np.exp(p[pre + "temperature"])
    probs = softmax(np.where(np.eye(n, dtype=bool), -np.inf, logits))
    out = np.einsum("bhij,bhjd->bhid", probs, v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.kernel"] + p[pre + "to_out.bias"], probs


def vit_by_hand(model: ViT, img: jax.Array, heads: int) -> np.ndarray:
    """The model on ``img``; a smaller image takes the top-left part of the position grid."""
    p = params(model)
    x = spt_by_hand(img, p, "to_patch_embedding.", model.patch_size)
    b, d = x.shape[0], x.shape[-1]
    (gh, gw), (h, w) = model.grid, (img.shape[1] // model.patch_size[0], img.shape[2] // model.patch_size[1])
    pos = p["pos_embedding"][:, 1:].reshape(1, gh, gw, d)[:, :h, :w].reshape(1, h * w, d)
    cls = np.broadcast_to(p["cls_token"] + p["pos_embedding"][:, :1], (b, 1, d))
    x = np.concatenate((cls, x + pos), axis=1)
    for i in range(len(model.transformer.blocks)):
        pre = f"transformer.blocks.{i}."
        x = x + lsa_by_hand(layer_norm(x, p[pre + "norm1.scale"], p[pre + "norm1.bias"]), p, pre + "attn.", heads)[0]
        h = layer_norm(x, p[pre + "norm2.scale"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.kernel"]
        h = h + p[pre + "ff.fc1.bias"]
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = x + h @ p[pre + "ff.fc2.kernel"] + p[pre + "ff.fc2.bias"]
    pooled = x[:, 0] if model.pool == "cls" else x.mean(1)
    return layer_norm(pooled, p["norm.scale"], p["norm.bias"]) @ p["mlp_head.kernel"] + p["mlp_head.bias"]


def _perturbed(model: nnx.Module) -> nnx.Module:
    """Norms, biases and temperatures away from their start, so that each counts."""
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if var[...].ndim <= 1:
            var[...] = var[...] + 0.5 * rng.standard_normal(var[...].shape).astype(np.float32)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, ViT]:
    """One model of each pool, with the same weights (the pools differ only in that attribute)."""
    model = _perturbed(ViT(**SMALL, rngs=nnx.Rngs(0)))
    model.eval()
    mean = nnx.clone(model)
    mean.pool = "mean"
    return {"cls": model, "mean": mean}


@nnx.jit
def forward(model: ViT, img: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    return model(img, return_features=True)


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_matches_a_computation_from_its_parameters(models: dict[str, ViT], pool: str) -> None:
    model = models[pool]
    img = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    logits, f = forward(model, img)
    close(logits, vit_by_hand(model, img, heads=2))
    # the pooled token is normalized after pooling (as the reference's head), the blocks have no final norm
    pooled = np.asarray(f["block01"], np.float64)
    pooled = pooled[:, 0] if pool == "cls" else pooled.mean(1)
    p = params(model)
    close(f["pre_logits"], layer_norm(pooled, p["norm.scale"], p["norm.bias"]))


def test_a_smaller_image_uses_the_top_left_positions(models: dict[str, ViT]) -> None:
    model = models["mean"]
    img = jax.random.normal(jax.random.key(2), (2, 8, 12, 3))
    close(forward(model, img)[0], vit_by_hand(model, img, heads=2))


def test_spt_by_hand_and_its_shifts(models: dict[str, ViT]) -> None:
    spt = models["cls"].to_patch_embedding  # alone, on a non-square image
    img = jax.random.normal(jax.random.key(3), (3, 8, 12, 3))
    tokens = spt(img)
    assert tokens.shape == (3, 2 * 3, 16)
    close(tokens, spt_by_hand(img, params(spt, "s."), "s.", (4, 4)))
    # on the channels: the image, then its copies moved right, left, down, up
    x = np.asarray(shifted_copies(img))
    img = np.asarray(img)
    assert x.shape == (3, 8, 12, 15)
    np.testing.assert_array_equal(x[..., :3], img)
    np.testing.assert_array_equal(x[:, :, 1:, 3:6], img[:, :, :-1])  # moved right: zeros in the first column
    np.testing.assert_array_equal(x[:, :, :-1, 6:9], img[:, :, 1:])  # moved left
    np.testing.assert_array_equal(x[:, 1:, :, 9:12], img[:, :-1])  # moved down
    np.testing.assert_array_equal(x[:, :-1, :, 12:15], img[:, 1:])  # moved up
    assert not x[:, :, 0, 3:6].any() and not x[:, :, -1, 6:9].any()
    assert not x[:, 0, :, 9:12].any() and not x[:, -1, :, 12:15].any()


@nnx.jit
def lsa_calls(attn: LocalitySelfAttention, x: jax.Array, mask: jax.Array, one: jax.Array) -> dict[str, jax.Array]:
    """Both paths (explicit softmax, fused), with and without a mask, and on a lone token, in one program."""
    out, probs = attn(x, return_attn=True)
    out_masked, probs_masked = attn(x, mask, return_attn=True)
    return dict(
        out=out, probs=probs, fused=attn(x), out_masked=out_masked, probs_masked=probs_masked,
        fused_masked=attn(x, mask), one=attn(one, return_attn=True)[0], one_fused=attn(one),
    )  # fmt: skip


def test_locality_self_attention_by_hand() -> None:
    attn = _perturbed(LocalitySelfAttention(16, heads=2, dim_head=8, rngs=nnx.Rngs(0)))  # the model's shapes
    attn.eval()
    assert LSA is LocalitySelfAttention and attn.temperature[...].shape == ()
    p = params(attn, "a.")
    rng = np.random.default_rng(1)
    x, one = rng.standard_normal((2, 7, 16), np.float32), rng.standard_normal((2, 1, 16), np.float32)
    mask = np.ones((7, 7), bool)
    mask[:, 2] = False  # no query may attend to key 2
    got = {k: np.asarray(v) for k, v in lsa_calls(attn, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(one)).items()}
    want, want_probs = lsa_by_hand(x, p, "a.", 2)
    close(got["out"], want)
    close(got["probs"], want_probs, 1e-6)
    close(got["fused"], want)
    assert not np.diagonal(got["probs"], axis1=-2, axis2=-1).any()  # no token attends to itself
    close(got["probs"].sum(-1), np.ones((2, 2, 7)), 1e-6)
    # a mask adds to the diagonal's: a masked key gets no weight, in either path
    assert not got["probs_masked"][..., 2].any() and not np.diagonal(got["probs_masked"], axis1=-2, axis2=-1).any()
    close(got["fused_masked"], got["out_masked"])
    # a lone token attends to itself (the only key), as the reference's softmax over one masked logit does
    v = (one @ np.split(p["a.to_qkv.kernel"], 3, axis=1)[2]) @ p["a.to_out.kernel"] + p["a.to_out.bias"]
    close(got["one"], v)
    close(got["one_fused"], v)


def test_temperature_starts_at_the_usual_scale() -> None:
    attn = LocalitySelfAttention(16, heads=2, dim_head=8, rngs=nnx.Rngs(0))
    want = math.log(8**-0.5)
    assert float(attn.temperature[...]) == pytest.approx(want)
    attn.temperature[...] = jnp.asarray(3.0)
    init_weights(attn, seed=0)  # the shared initializer starts it there too
    assert float(attn.temperature[...]) == pytest.approx(want)
    # at the start, the logits are scaled as plain attention's: softmax(q k^T / sqrt(d)) off the diagonal
    rng = np.random.default_rng(2)
    x, one = rng.standard_normal((2, 7, 16), np.float32), rng.standard_normal((2, 1, 16), np.float32)
    probs = lsa_calls(attn, jnp.asarray(x), jnp.ones((7, 7), bool), jnp.asarray(one))["probs"]
    w = np.asarray(attn.to_qkv.kernel[...], np.float64)
    q, k, _ = ((x @ t).reshape(2, 7, 2, 8).transpose(0, 2, 1, 3) for t in np.split(w, 3, axis=1))
    plain = np.where(np.eye(7, dtype=bool), -np.inf, np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(8))
    close(probs, softmax(plain), 1e-6)


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        ViT(**dict(SMALL, pool="max"))
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        ViT(**dict(SMALL, image_size=18))
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        SPT(dim=16, patch_size=0)
    # abstract weights: the checks run before any of them is read
    model = nnx.eval_shape(lambda: ViT(**dict(SMALL, channels=1), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"img must have channels=1 \(b height width c\), got 16"):
        model(jnp.zeros((1, 1, 16, 16)))  # channels-first
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(jnp.zeros((1, 16, 20, 1)))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(jnp.zeros((1, 10, 16, 1)))
    with pytest.raises(ValueError, match=r"4-D tensor \(b height width c\)"):
        model(jnp.zeros((1, 16, 16)))
    spt = nnx.eval_shape(lambda: SPT(dim=16, patch_size=4, channels=3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="width 6 must be a positive multiple of the patch size 4"):
        spt(jnp.zeros((1, 8, 6, 3)))
    with pytest.raises(ValueError, match="channels=3"):
        spt(jnp.zeros((1, 8, 8, 1)))


def test_seed_readme_examples_channels_last() -> None:
    """The seed's examples build the flax model and SPT and give their shapes on channels-last images (traced
    abstractly: the numbers are checked on small models above and by parity)."""

    def build() -> ViT:
        return ViT(
            image_size=256,
            patch_size=16,
            num_classes=1000,
            dim=1024,
            depth=6,
            heads=16,
            mlp_dim=2048,
            dropout=0.1,
            emb_dropout=0.1,
        )

    v = nnx.eval_shape(build)
    img = jax.ShapeDtypeStruct((4, 256, 256, 3), jnp.float32)
    graphdef, state = nnx.split(v)
    preds = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, img)
    assert preds.shape == (4, 1000)

    spt = nnx.eval_shape(lambda: SPT(dim=1024, patch_size=16, channels=3))
    graphdef, state = nnx.split(spt)
    tokens = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, img)
    assert tokens.shape == (4, 256, 1024)
