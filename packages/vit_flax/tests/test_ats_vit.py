"""ATS-ViT: token sampling, padding and masked attention against a computation from the parameters; draws under
nnx.jit (one trace whatever the draw); errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.ats_vit import ViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=3, max_tokens_per_depth=(16, 8, 4), heads=4,
             mlp_dim=64, dim_head=8)  # fmt: skip
EPS = 1e-6


def params(module: nnx.Module) -> dict[str, np.ndarray]:
    return {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


# --- an independent ATS-ViT, from the parameters with numpy and a Python loop per image ---------------------------


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kept_by_hand(logits: list[float], real: list[bool], k: int, u: np.ndarray | None) -> list[int]:
    """The positions one image keeps: all its real tokens when they fit the budget; else each row of the draw ``u``
    (k, n) picks the token of largest ``logit + gumbel(u)``, every picked token once; no draw: the k largest."""
    candidates = [j for j, r in enumerate(real) if r]
    if len(candidates) <= k:
        return candidates
    if u is None:
        return sorted(sorted(candidates, key=lambda j: -logits[j])[:k])
    picked = set()
    for row in np.asarray(u, np.float64).tolist():
        g = [-math.log(-math.log(x + EPS) + EPS) for x in row]
        picked.add(max(candidates, key=lambda j: logits[j] + g[j]))
    return sorted(picked)


def ats_by_hand(model: ViT, img: np.ndarray, noise: list | None) -> tuple[np.ndarray, list, list[np.ndarray]]:
    """Logits, the patch ids left (per image) and every layer's tokens (padding zero), in float64."""
    p = {k: v.astype(np.float64) for k, v in params(model).items()}
    img = np.asarray(img, np.float64)
    b, hh, ww, c = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.scale"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.kernel"] + p[e + "proj.bias"], p[e + "post_norm.scale"], p[e + "post_norm.bias"])
    n = x.shape[1]
    full = [s // q for s, q in zip(model.size, model.patch_size)]
    pos = p["pos_embedding"][:, 1:].reshape(1, *full, -1)[:, : hh // ph, : ww // pw].reshape(1, n, -1)  # top-left
    cls = np.broadcast_to(p["cls_token"] + p["pos_embedding"][:, :1], (b, 1, x.shape[-1]))
    x = np.concatenate((cls, x + pos), 1)
    real = [[True] * (n + 1) for _ in range(b)]
    ids = [list(range(n)) for _ in range(b)]
    heads = model.transformer.blocks[0].attn.heads
    outputs = []
    for i, k in enumerate(model.max_tokens):
        pre = f"transformer.blocks.{i}."
        w = x.shape[1]
        h = layer_norm(x, p[pre + "norm1.scale"], p[pre + "norm1.bias"])
        q, kk, v = (
            t.reshape(b, w, heads, -1).transpose(0, 2, 1, 3) for t in np.split(h @ p[pre + "attn.to_qkv.kernel"], 3, -1)
        )
        dots = q @ kk.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        attn = softmax(np.where(np.array(real)[:, None, None, :], dots, -np.inf))
        out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, w, -1) @ p[pre + "attn.to_out.kernel"]
        x = x + out + p[pre + "attn.to_out.bias"]
        if w - 1 > k:
            s = (attn[:, :, 0, 1:] * np.linalg.norm(v[:, :, 1:], axis=-1)).sum(1)
            logits = np.log(s / (s.sum(-1, keepdims=True) + EPS) + EPS)
            rows, new_real, new_ids = [], [], []
            for j in range(b):
                u = None if noise is None or noise[i] is None else noise[i][j]
                keep = kept_by_hand(logits[j].tolist(), real[j][1:], k, u)
                pad = k - len(keep)
                rows.append(np.concatenate((x[j, :1], x[j, [1 + t for t in keep]], np.zeros((pad, x.shape[-1])))))
                new_real.append([True] * (1 + len(keep)) + [False] * pad)
                new_ids.append([ids[j][t] for t in keep] + [-1] * pad)
            x, real, ids = np.stack(rows), new_real, new_ids
        h = layer_norm(x, p[pre + "norm2.scale"], p[pre + "norm2.bias"])
        x = x + gelu(h @ p[pre + "ff.fc1.kernel"] + p[pre + "ff.fc1.bias"]) @ p[pre + "ff.fc2.kernel"]
        x = (x + p[pre + "ff.fc2.bias"]) * np.array(real)[..., None]
        outputs.append(x)
    cls = layer_norm(x[:, 0], p["transformer.norm.scale"], p["transformer.norm.bias"])
    return cls @ p["mlp_head.kernel"] + p["mlp_head.bias"], ids, outputs


def forcing(shape: tuple[int, int, int], picks: list[list[int]]) -> np.ndarray:
    """A uniform draw under which row ``r`` of image ``j`` picks the token ``picks[j][r]``, whatever the scores: its
    Gumbel number is about 16, every other one about -2.6 (the scores' logarithms span at most 14)."""
    u = np.full(shape, 1e-7, np.float32)
    for j, row in enumerate(picks):
        for r, t in enumerate(row):
            u[j, r, t] = 1.0 - 1e-7
    return u


@pytest.fixture(scope="module")
def model() -> ViT:
    m = ViT(**SMALL, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for _, v in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        if v[...].ndim == 1:  # norms away from one and zero
            v.set_value(v[...] + 0.5 * rng.standard_normal(v[...].shape, dtype=np.float32))
    m.eval()
    return m


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return np.random.default_rng(2).standard_normal((3, 16, 16, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def run() -> object:
    """The model under nnx.jit with every feature and attention map (one compilation per mode and kind of draw for
    the module), counting its traces."""
    traces = []

    @nnx.jit
    def call(m: ViT, x: jax.Array, noise: list) -> tuple:
        traces.append(1)
        return m(x, True, noise=noise, return_features=True, return_attn=True)

    call.traces = traces
    return call


def _noise(model: ViT, img: np.ndarray, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [None if s is None else jnp.asarray(rng.random(s, dtype=np.float32)) for s in model.noise_shapes(img.shape)]


def _check(model: ViT, img: np.ndarray, noise: list | None, got: tuple) -> None:
    want, want_ids, want_blocks = ats_by_hand(model, img, noise)
    (logits, ids), features = got
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    assert np.asarray(ids).tolist() == want_ids
    assert [k for k in features if "/attn" not in k] == ["block00", "block01", "block02", "pre_logits"]
    for i, block in enumerate(want_blocks):
        np.testing.assert_allclose(features[f"block{i:02d}"], block, rtol=1e-5, atol=1e-5)


NO_DRAW = [None, None, None]


def test_matches_a_computation_from_its_parameters_traced_once(model: ViT, img: np.ndarray, run: object) -> None:
    """Eval mode without a draw (the highest scores), then two explicit draws on two images: one trace for both
    draws, whatever they are (the kept widths are static)."""
    got = run(model, jnp.asarray(img), NO_DRAW)
    _check(model, img, None, got)
    assert [tuple(f.shape) for k, f in got[1].items() if "/attn" not in k] == [
        (3, 17, 32),
        (3, 9, 32),
        (3, 5, 32),
        (3, 32),
    ]
    before = len(run.traces)
    other = np.random.default_rng(3).standard_normal(img.shape, dtype=np.float32)
    for x, seed in ((img, 0), (other, 1)):
        noise = _noise(model, x, seed)
        _check(model, x, noise, run(model, jnp.asarray(x), noise))
    assert len(run.traces) - before == 1


def test_an_image_whose_tokens_fit_the_budget_keeps_them_all(model: ViT, img: np.ndarray, run: object) -> None:
    # layer 1 keeps one token of image 0 (all its draws pick patch 5) and eight of the others; layer 2 (budget 4)
    # keeps image 0's token and samples the others
    picks = [[5] * 8, list(range(8)), list(range(8, 16))]
    noise = [None, forcing((3, 8, 16), picks), np.random.default_rng(3).random((3, 4, 8), dtype=np.float32)]
    got = run(model, jnp.asarray(img), [None if u is None else jnp.asarray(u) for u in noise])
    _check(model, img, noise, got)
    (_, ids), features = got
    ids = np.asarray(ids)
    assert ids[0].tolist() == [5, -1, -1, -1]
    assert set(ids[1].tolist()) - {-1} <= set(range(8)) and set(ids[2].tolist()) - {-1} <= set(range(8, 16))
    assert not np.asarray(features["block01"])[0, 2:].any() and not np.asarray(features["block02"])[0, 2:].any()
    # the masked attention gives padding no weight: layer 2 reads what layer 1 left
    attn = np.asarray(features["block02/attn"])
    assert attn.shape == (3, 4, 9, 9)
    np.testing.assert_allclose(attn.sum(-1), np.ones((3, 4, 9)), rtol=1e-5)
    assert not attn[0, :, :, 2:].any() and attn[1:].all()


def test_training_draws_from_the_dropout_stream_and_eval_draws_nothing(
    model: ViT, img: np.ndarray, run: object
) -> None:
    sampler = model.transformer.blocks[1].ats
    x = jnp.asarray(img)
    model.train()
    try:
        draws = [np.asarray(run(model, x, NO_DRAW)[0][1]) for _ in range(4)]
        assert sampler.rngs.count[...] == 4, "one draw per call from the layer's stream"
        # an explicit draw gives the eval-mode numbers in training as well
        noise = _noise(model, img, 4)
        in_train = run(model, x, noise)[0]
    finally:
        model.eval()
    assert any(not np.array_equal(draws[0], d) for d in draws[1:]), "the stream advances between calls"
    for ids in draws:
        for row in ids.tolist():
            real = [t for t in row if t >= 0]
            assert real and real == sorted(set(real)) and row == real + [-1] * (4 - len(real))
    in_eval = run(model, x, noise)[0]
    np.testing.assert_array_equal(in_train[0], in_eval[0])
    np.testing.assert_array_equal(in_train[1], in_eval[1])
    count = sampler.rngs.count[...]
    first, again = run(model, x, NO_DRAW)[0], run(model, x, NO_DRAW)[0]
    assert sampler.rngs.count[...] == count, "eval mode drew random numbers"
    np.testing.assert_array_equal(first[0], again[0])
    assert (np.asarray(first[1]) >= 0).all()  # the highest-scoring tokens: always the budget's count


def test_bad_arguments_and_inputs_are_named(model: ViT, img: np.ndarray) -> None:
    bad = {
        (8, 4): r"max_tokens_per_depth must hold one token budget per layer, 3 \(depth\) entries, got 2",
        (8, 0, 0): r"max_tokens_per_depth\[1\] must be a positive int",
        (4, 8, 2): r"must not increase from one layer to the next .* max_tokens_per_depth\[1\] = 8 > "
        r"max_tokens_per_depth\[0\] = 4",
    }
    for budgets, message in bad.items():
        with pytest.raises(ValueError, match=message):
            ViT(**dict(SMALL, max_tokens_per_depth=budgets))
    with pytest.raises(ValueError, match="channels=3"):
        model(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="height 20 is larger than the model's 16"):
        model(jnp.zeros((1, 20, 16, 3)))
    noise = _noise(model, img, 0)
    x = jnp.asarray(img)
    with pytest.raises(ValueError, match=r"noise must be a list with one entry per layer, 3 \(depth\).*got 2 entries"):
        model(x, noise=noise[:2])
    with pytest.raises(ValueError, match=r"noise\[0\] must be None: layer 0 reads 16 patch tokens, within its budget"):
        model(x, noise=[jnp.zeros((3, 16, 16)), *noise[1:]])
    with pytest.raises(ValueError, match=r"noise\[2\] must have shape .* = \(3, 4, 8\), got \(3, 4, 16\)"):
        model(x, noise=[None, noise[1], jnp.zeros((3, 4, 16))])
