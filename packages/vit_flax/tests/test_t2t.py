"""Tokens-to-Token ViT in flax: the soft split against a loop over windows (torch's channel order), the model
against a recomputation from its parameters, ``transformer=``, the hooks a distillable subclass uses, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vit_flax
from vit_flax.layers import Transformer
from vit_flax.t2t import T2TViT
from vit_flax.unfold import unfold
from vit_parity.core.facts import t2t as facts

TINY = dict(num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """Independent soft split of a channels-last ``(b, h, w, c)`` array: visit every window in row-major order,
    read every pixel (zero outside the map) and list it as torch's ``nn.Unfold`` does: channel first, then row,
    then column."""
    b, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    rows, cols = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((b, rows * cols, c * kh * kw), x.dtype)
    for r in range(rows):
        for q in range(cols):
            for ch in range(c):
                for i in range(kh):
                    for j in range(kw):
                        y, z = r * sh - ph + i, q * sw - pw + j
                        if 0 <= y < h and 0 <= z < w:
                            out[:, r * cols + q, (ch * kh + i) * kw + j] = x[:, y, z, ch]
    return out


GEOMETRIES = [  # (h, w), kernel, stride, padding
    ((8, 8), (3, 3), (2, 2), (1, 1)),
    ((9, 7), (7, 7), (4, 4), (2, 2)),
    ((6, 10), (2, 3), (1, 2), (0, 1)),
    ((4, 6), (2, 2), (3, 1), (0, 0)),  # stride larger than the kernel: pixels skipped
]


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), GEOMETRIES)
def test_unfold_lists_each_window_as_torch_does(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> None:
    x = np.random.default_rng(0).standard_normal((2, *size, 3), dtype=np.float32)
    tokens, grid = unfold(jnp.asarray(x), kernel, stride, padding)
    np.testing.assert_array_equal(np.asarray(tokens), windows(x, kernel, stride, padding))
    assert grid == facts.unfold_grid(size, kernel, stride, padding)
    # the gradient of the sum: each pixel counts the windows that read it
    grad = jax.grad(lambda v: unfold(v, kernel, stride, padding)[0].sum())(jnp.asarray(x))
    reads = np.zeros(size)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    for r in range(grid[0]):
        for q in range(grid[1]):
            for i in range(kh):
                for j in range(kw):
                    y, z = r * sh - ph + i, q * sw - pw + j
                    if 0 <= y < size[0] and 0 <= z < size[1]:
                        reads[y, z] += 1
    np.testing.assert_array_equal(np.asarray(grad), np.broadcast_to(reads[None, :, :, None], x.shape))


def test_unfold_is_exact_in_bfloat16_under_jit_and_refuses_small_maps() -> None:
    x = jax.random.normal(jax.random.key(0), (1, 7, 9, 2)).astype(jnp.bfloat16)
    tokens, grid = jax.jit(lambda v: unfold(v, 3, 2, 1))(x)
    assert tokens.dtype == jnp.bfloat16 and grid == (4, 5)
    want = windows(np.asarray(x.astype(jnp.float32)), (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(np.asarray(tokens.astype(jnp.float32)), want)
    with pytest.raises(ValueError, match=r"at least as large as the window 10 \(padding 0\), got shape \(1, 7, 9, 2\)"):
        unfold(x, 10)
    with pytest.raises(ValueError, match=r"takes a \(b, h, w, c\) map"):
        unfold(x[0], 3)


# --- the model against a recomputation from its parameters -------------------------------------------------------


def layer_norm(x: np.ndarray, p: dict[str, np.ndarray], key: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p[f"{key}.scale"] + p[f"{key}.bias"]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def transformer(x: np.ndarray, p: dict[str, np.ndarray], key: str, heads: int) -> np.ndarray:
    """Pre-norm blocks and a final norm, from the parameters: explicit softmax attention, exact GELU."""
    from math import erf

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / 2**0.5)))
    i = 0
    while f"{key}.blocks.{i}.norm1.scale" in p:
        b, i = f"{key}.blocks.{i}", i + 1
        h = layer_norm(x, p, f"{b}.norm1") @ p[f"{b}.attn.to_qkv.kernel"]
        q, k, v = (t.reshape(*t.shape[:2], heads, -1).transpose(0, 2, 1, 3) for t in np.split(h, 3, axis=-1))
        out = (softmax(q @ k.transpose(0, 1, 3, 2) / q.shape[-1] ** 0.5) @ v).transpose(0, 2, 1, 3)
        out = out.reshape(*out.shape[:2], -1)
        if f"{b}.attn.to_out.kernel" in p:
            out = out @ p[f"{b}.attn.to_out.kernel"] + p[f"{b}.attn.to_out.bias"]
        x = x + out
        h = gelu(layer_norm(x, p, f"{b}.norm2") @ p[f"{b}.ff.fc1.kernel"] + p[f"{b}.ff.fc1.bias"])
        x = x + h @ p[f"{b}.ff.fc2.kernel"] + p[f"{b}.ff.fc2.bias"]
    return layer_norm(x, p, f"{key}.norm")


def params(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every parameter as a float64 array under its dotted path."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(k) for k in path): np.asarray(v[...], np.float64) for path, v in flat}


def reference_t2t(model: T2TViT, img: np.ndarray, heads: int) -> np.ndarray:
    """T2T-ViT recomputed in float64 from the parameters: soft splits by :func:`windows`, one-head token
    transformers as wide as the tokens, positions cut from the reshaped full grid."""
    p = params(model)
    layers = model.geometry.layers
    x, grid = img.astype(np.float64), img.shape[1:3]
    for i, (kernel, stride) in enumerate(layers):
        if i:
            x = x.reshape(x.shape[0], *grid, x.shape[-1])
        grid = facts.unfold_grid(grid, kernel, stride, stride // 2)
        x = windows(x, (kernel, kernel), (stride, stride), (stride // 2, stride // 2))
        if i < len(layers) - 1:
            x = transformer(x, p, f"to_patch_embedding.transformers.{i}", heads=1)
    x = x @ p["to_patch_embedding.proj.kernel"] + p["to_patch_embedding.proj.bias"]
    pos = p["pos_embedding"][0, 1:].reshape(*model.grid, -1)[: grid[0], : grid[1]].reshape(-1, x.shape[-1])
    cls = p["cls_token"][0] + p["pos_embedding"][0, :1]
    x = np.concatenate((np.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x + pos), axis=1)
    x = transformer(x, p, "transformer", heads)
    x = x[:, 0] if model.pool == "cls" else x.mean(1)
    return x @ p["mlp_head.kernel"] + p["mlp_head.bias"]


CONFIGS = [  # config, input (h, w)
    (dict(image_size=16, channels=3, t2t_layers=((3, 2), (3, 2))), (16, 16)),
    (dict(image_size=(32, 24), channels=1, pool="mean"), (24, 16)),  # default splits, smaller non-square input
    (dict(image_size=16, channels=2, t2t_layers=((4, 4),)), (13, 16)),  # one split: no token transformer
]


@pytest.mark.parametrize(("config", "size"), CONFIGS)
def test_model_matches_a_recomputation_from_its_parameters(config: dict, size: tuple[int, int]) -> None:
    model = T2TViT(**{**TINY, "depth": 2, **config}, rngs=nnx.Rngs(0))
    model.eval()
    rng = np.random.default_rng(0)
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):  # norms and biases away from their starting values
        v.set_value(v[...] + 0.1 * rng.standard_normal(v[...].shape, dtype=np.float32))
    img = rng.standard_normal((2, *size, config["channels"]), dtype=np.float32)
    got, feats = nnx.jit(lambda m, x: m(x, return_features=True, return_attn=True))(model, jnp.asarray(img))
    np.testing.assert_allclose(np.asarray(got), reference_t2t(model, img, heads=2), rtol=2e-5, atol=2e-5)
    blocks = [f"t2t{i}/block00" for i in range(len(model.geometry.layers) - 1)] + ["block00", "block01"]
    want = [*blocks, *(f"{b}/attn" for b in blocks), "pre_logits"]
    assert sorted(feats) == sorted(want)  # a dict leaving jit has its keys sorted
    if len(model.geometry.layers) > 1:  # the first token transformer: one head over the first split's tokens
        n, width = math.prod(facts.split_grids(size, model.geometry.layers)[0]), model.geometry.widths[0]
        assert feats["t2t0/block00"].shape == (2, n, width) and feats["t2t0/block00/attn"].shape == (2, 1, n, n)


# --- transformer=, the hooks of a distillable subclass -------------------------------------------------------------


class Mixer(nnx.Module):
    """A user's token mixer mapping (b, n, dim) to (b, n, dim): not a library transformer."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs) -> None:
        self.fc = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + jnp.tanh(self.fc(x.mean(1, keepdims=True)))


LAYERS = ((3, 2), (2, 2))


def test_a_user_transformer_replaces_depth_heads_and_mlp_dim(tmp_path: Path) -> None:
    mixer = Mixer(16, rngs=nnx.Rngs(1))
    model = T2TViT(image_size=16, num_classes=5, dim=16, transformer=mixer, t2t_layers=LAYERS, rngs=nnx.Rngs(0))
    model.eval()
    assert model.transformer is mixer
    img = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    want = model.mlp_head(mixer(model.tokens(img))[:, 0])
    np.testing.assert_allclose(model(img), want, rtol=1e-6, atol=1e-6)
    _, feats = model(img, return_features=True)
    assert list(feats) == ["t2t0/block00", "pre_logits"]  # the user's module records nothing
    assert repr(model.config["transformer"]).endswith("Mixer module>")  # a static stand-in in the config
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, img), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="constructor argument 'transformer'"):
        vit_flax.save(model, tmp_path / "user")
    with pytest.raises(ValueError, match=r"transformer= replaces depth, heads and mlp_dim: leave them None"):
        T2TViT(image_size=16, **TINY, transformer=Mixer(16, rngs=nnx.Rngs(1)))


def test_a_library_transformer_given_is_the_default_one() -> None:
    built = T2TViT(image_size=16, t2t_layers=LAYERS, **TINY, rngs=nnx.Rngs(0))
    given = T2TViT(
        image_size=16, num_classes=5, dim=16, t2t_layers=LAYERS,
        transformer=Transformer(16, 1, 2, 8, 32, rngs=nnx.Rngs(3)), rngs=nnx.Rngs(4),
    )  # fmt: skip
    nnx.update(given, nnx.state(built))  # the same paths
    built.eval()
    given.eval()
    img = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    np.testing.assert_array_equal(given(img), built(img))
    _, feats = given(img, return_features=True)
    assert list(feats) == ["t2t0/block00", "block00", "pre_logits"]


class WithExtraToken(T2TViT):
    """What a distillable student does: a learned token after the others, read out separately."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.extra = nnx.Param(jnp.ones((1, 1, self.pos_embedding[...].shape[-1])))

    def __call__(self, img: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.tokens(img)
        x = jnp.concatenate((x, jnp.broadcast_to(self.extra[...], (x.shape[0], 1, x.shape[-1]))), axis=1)
        x = self.encode(self.dropout(x))
        return self.mlp_head(self.pool_tokens(x[:, :-1])), x[:, -1]


def test_a_subclass_inserts_a_token_through_the_hooks() -> None:
    model = WithExtraToken(image_size=16, t2t_layers=LAYERS, **TINY, rngs=nnx.Rngs(0))
    model.eval()
    img = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    x = model.tokens(img)
    assert x.shape == (2, 1 + 25, 16)  # class token and a 5 x 5 grid, positions added
    np.testing.assert_allclose(x[:, 0], jnp.broadcast_to(model.cls_token[0, 0] + model.pos_embedding[0, 0], (2, 16)))
    assert model.positions((5, 5)).shape == (1, 26, 16)
    logits, extra = model(img)
    assert logits.shape == (2, 5) and extra.shape == (2, 16)
    assert not np.allclose(logits, T2TViT.__call__(model, img))  # the extra token took part in attention


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 16, 2, 1), r"img width 2 is too small for t2t_layers \(\(7, 4\), \(3, 2\), \(3, 2\)\): it must be at "
         r"least 3 \(shape \(1, 16, 2, 1\)\)"),
        ((1, 20, 16, 1), r"img height 20 is larger than the model's 16"),
        ((1, 16, 16, 3), r"img must have channels=1 \(b height width c\)"),
    ],
)  # fmt: skip
def test_bad_images_are_named(shape: tuple[int, ...], match: str) -> None:
    model = T2TViT(image_size=16, channels=1, **TINY, rngs=nnx.Rngs(0))  # default splits: sides of 3 at least
    with pytest.raises(ValueError, match=match):
        model(jnp.zeros(shape))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"missing \['heads', 'mlp_dim'\]"):
        T2TViT(image_size=16, num_classes=5, dim=16, depth=1)
    with pytest.raises(ValueError, match=r"image_size \(2, 2\) is too small for t2t_layers"):
        T2TViT(image_size=2, **TINY)
