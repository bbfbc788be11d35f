"""NaViT in flax: packed batches of static shape compile once; token dropout; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.na_vit import NaViT
from vit_flax.na_vit_3d import NaViT as NaViT3d
from vit_parity.core import packing, spec

# the spec's 2-D config, so that the generic tests and these share compiled functions
CFG = dict(spec.get("navit").case().config)
SHAPE = dict(group_max_seq_len=24, max_images=4, num_seqs=3)


def _images(sides: list[tuple[int, ...]], seed: int = 0, c: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((*s, c), dtype=np.float32) for s in sides]


@pytest.fixture(scope="module")
def model() -> NaViT:
    m = NaViT(**CFG, rngs=nnx.Rngs(0))
    m.eval()
    return m


TRACES: list[int] = []


@nnx.jit
def classify(m: NaViT, patches: jax.Array, segment_ids: jax.Array, coords: jax.Array, image_ids: jax.Array,
             keep: jax.Array | None) -> jax.Array:  # fmt: skip
    TRACES.append(1)  # runs only while tracing
    return m(patches, segment_ids, coords, image_ids, keep=keep)


def _run(m: NaViT, batch: packing.PackedBatch, keep: np.ndarray | None = None) -> np.ndarray:
    """Per-slot logits; every real token is kept unless ``keep`` says otherwise (one compilation for all)."""
    return np.asarray(classify(m, *batch.arrays, batch.segment_ids > 0 if keep is None else keep))


def test_a_stream_of_different_batches_compiles_once(model: NaViT) -> None:
    a, b, c, d = _images([(32, 32), (16, 24), (8, 8), (24, 32)])
    stream = [[a, b, c], [d, c], [a], [c, b, d, a]]
    before, logits, traces = len(TRACES), [], []
    for images in stream:
        batch = model.pack(images, **SHAPE)
        out = _run(model, batch)
        assert out.shape == (3, 4, 10)
        assert not np.any(out[batch.image_ids < 0])  # empty slots are zeros
        logits.append(batch.unpack(out))
        traces.append(len(TRACES))
    assert traces[0] - before <= 1  # the first batch compiles (unless a test before compiled these shapes)
    assert traces[-1] == traces[0]  # the other batches reuse it
    # the same image gets the same logits whatever it is packed with
    np.testing.assert_allclose(logits[0][0], logits[2][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[0][2], logits[1][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[3], np.stack([logits[0][2], logits[0][1], logits[1][0], logits[0][0]]),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_keep_masks_in_the_model_or_at_packing_time_agree_with_a_crop(model: NaViT) -> None:
    big, other = _images([(32, 24), (16, 16)], seed=1)
    keep = np.zeros((4, 3), bool)
    keep[:2, :2] = True  # the top-left 16x16 pixels: same patches, same coordinates
    keeps = [keep, np.ones((2, 2), bool)]
    crop = model.pack([big[:16, :16], other], **SHAPE)
    want = crop.unpack(_run(model, crop))
    dropped = model.pack([big, other], keep=keeps, **SHAPE)  # tokens removed before packing
    np.testing.assert_allclose(dropped.unpack(_run(model, dropped)), want, rtol=1e-5, atol=1e-5)
    full = model.pack([big, other], **SHAPE)
    mask = np.zeros(full.segment_ids.shape, bool)  # the same choice as a (num_seqs, max_seq_len) mask
    mask.reshape(-1)[full.packing.token_index(24)] = np.concatenate([k.reshape(-1) for k in keeps])
    np.testing.assert_allclose(full.unpack(_run(model, full, mask)), want, rtol=1e-5, atol=1e-5)


def test_token_dropout_runs_inside_the_compiled_function() -> None:
    def by_size(h: jax.Array, w: jax.Array) -> jax.Array:  # works on the arrays of every slot's sides
        return jnp.where(h * w > 512, 0.5, 0.0)

    model = NaViT(**dict(CFG, dropout=0.0, emb_dropout=0.0, token_dropout_prob=by_size), rngs=nnx.Rngs(0))
    sides = [(32, 32), (16, 24), (8, 8), (24, 8)]  # 16, 6, 1, 3 tokens; only the first one drops
    batch = model.pack(_images(sides, seed=2), **SHAPE)
    drop = nnx.jit(lambda m, segment, coords: m._drop_tokens(segment, coords, 4))
    kept = np.asarray(drop(model, batch.segment_ids, batch.coords))
    assert not kept[batch.segment_ids == 0].any()
    for s in range(3):
        for j, i in enumerate(batch.image_ids[s]):
            if i >= 0:
                n = int((batch.segment_ids[s] == j + 1).sum())
                assert (kept[s] == j + 1).sum() == packing.num_keep(n, 0.5 if i == 0 else 0.0)

    eval_model = NaViT(**CFG, rngs=nnx.Rngs(0))  # the same weights: rngs and shapes are the same
    for (path, p), (_, q) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                                 nnx.to_flat_state(nnx.state(eval_model, nnx.Param))):  # fmt: skip
        np.testing.assert_array_equal(p[...], q[...], err_msg=str(path))
    eval_model.eval()
    c = batch.unpack(_run(eval_model, batch))
    model.train()
    a, b = (batch.unpack(np.asarray(classify(model, *batch.arrays, None))) for _ in range(2))
    assert not np.allclose(a[0], b[0])  # 32x32 drops half its tokens, differently each call
    np.testing.assert_allclose(a[1:], c[1:], rtol=1e-5, atol=1e-5)  # the others drop nothing
    np.testing.assert_allclose(b[1:], c[1:], rtol=1e-5, atol=1e-5)


def test_video_model_packs_volumes_of_different_frame_counts() -> None:
    model = NaViT3d(**spec.get("navit_nested_3d").case().config, rngs=nnx.Rngs(0))
    vols = _images([(4, 16, 16), (2, 8, 24), (2, 8, 8)], seed=3)
    batch = model.pack(vols, group_max_seq_len=10, max_images=2, num_seqs=3)
    assert batch.coords.shape == (3, 10, 3) and batch.patches.shape == (3, 10, 2 * 8 * 8 * 3)
    np.testing.assert_array_equal(batch.tokens(batch.coords)[:8], packing.patch_coords((2, 2, 2)))
    assert {"pos_embed_frame", "pos_embed_height", "pos_embed_width"} <= set(vars(model))
    with pytest.raises(ValueError, match=r"images\[0\] frames 3 must be a positive multiple of the patch size 2"):
        model.pack([np.zeros((3, 8, 8, 3), np.float32)], group_max_seq_len=10)
    with pytest.raises(ValueError, match=r"images\[1\] frames 6 is larger than the model's maximum 4"):
        model.pack([vols[0], np.zeros((6, 8, 8, 3), np.float32)], group_max_seq_len=10)


def test_bad_input_names_the_image_and_the_limit(model: NaViT) -> None:
    good = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(ValueError, match=r"images\[1\] has 16 tokens, more than group_max_seq_len=12"):
        model.pack([good, np.zeros((32, 32, 3), np.float32)], group_max_seq_len=12)
    with pytest.raises(ValueError, match=r"images\[1\] width 20 must be a positive multiple of the patch size 8"):
        model.pack([good, np.zeros((16, 20, 3), np.float32)])
    with pytest.raises(ValueError, match=r"images\[2\] height 40 is larger than the model's maximum 32"):
        model.pack([good, good, np.zeros((40, 8, 3), np.float32)])
    with pytest.raises(ValueError, match=r"images\[1\] must have channels=3 \(height width c\), got 1"):
        model.pack([good, np.zeros((16, 16, 1), np.float32)])
    with pytest.raises(ValueError, match="images is empty"):
        model.pack([])
    with pytest.raises(ValueError, match=r"the images need 2 sequences of group_max_seq_len=16, more than num_seqs=1"):
        model.pack([good, good, good, good, good], group_max_seq_len=16, num_seqs=1)
    batch = model.pack([good])
    with pytest.raises(ValueError, match=r"patches must be \(num_seqs, max_seq_len, 192\)"):
        model(batch.patches[..., :100], *batch.arrays[1:])
    with pytest.raises(ValueError, match=r"coords must have shape \(1, 2048, 2\)"):
        model(batch.patches, batch.segment_ids, batch.coords[..., :1], batch.image_ids)
