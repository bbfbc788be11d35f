"""NaViT: the framework-free packer, and the same logits in torch (masked, nested) and flax (packed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vit_parity.core import packing, spec
from vit_parity.tools.parity import strict_float32


def _naive_ffd(lengths: list[int], cap: int, max_images: int | None = None) -> list[list[int]]:
    """First-fit decreasing written the slow, obvious way."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b in range(len(bins)):
            if room[b] >= lengths[i] and (max_images is None or len(bins[b]) < max_images):
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(cap - lengths[i])
    return [sorted(b) for b in bins]


def test_first_fit_decreasing_by_hand() -> None:
    p = packing.pack([6, 5, 4, 3, 2], 10)
    # 6 opens bin 0, 5 opens bin 1, 4 fills bin 0, 3 and 2 fill bin 1
    assert p.groups == ((0, 2), (1, 3, 4))
    assert p.fill == 1.0 and p.num_tokens == 20 and p.max_images == 3 and p.longest == 10
    p = packing.pack([7, 7, 7], 10)
    assert p.groups == ((0,), (1,), (2,)) and p.fill == pytest.approx(21 / 30)


@pytest.mark.parametrize("max_images", [None, 3])
def test_first_fit_decreasing_matches_the_obvious_version(max_images: int | None) -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        lengths = rng.integers(1, 65, size=int(rng.integers(1, 200))).tolist()
        p = packing.pack(lengths, 64 + trial, max_images=max_images)
        assert [list(g) for g in p.groups] == _naive_ffd(lengths, 64 + trial, max_images)
        assert sorted(i for g in p.groups for i in g) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in g) <= 64 + trial for g in p.groups)
        if max_images:
            assert p.max_images <= max_images
        assert p.fill == pytest.approx(sum(lengths) / (len(p.groups) * (64 + trial)))


def test_packing_layout_indices() -> None:
    p = packing.grouped([[1, 2], [0]], [3, 2, 1])
    seq, slot = p.slots()
    assert seq.tolist() == [1, 0, 0] and slot.tolist() == [0, 0, 1]
    # sequence 0: image 1 (2 tokens), image 2 (1 token), 1 pad; sequence 1: image 0 (3 tokens), 1 pad
    assert p.token_index(4).tolist() == [4, 5, 6, 0, 1, 2]
    assert p.segment_ids(4).tolist() == [[1, 1, 2, 0], [1, 1, 1, 0]]


def test_pack_errors_name_the_image_and_the_limit() -> None:
    with pytest.raises(ValueError, match=r"images\[2\] has 12 tokens, more than group_max_seq_len=10"):
        packing.pack([3, 4, 12], 10)
    with pytest.raises(ValueError, match="images is empty"):
        packing.pack([], 10)
    kw = dict(channels=3, channels_last=False, max_size=(64, 64), patch=(16, 16))
    assert packing.check_image((3, 32, 48), 0, **kw) == (32, 48)
    with pytest.raises(ValueError, match=r"images\[4\] width 40 must be a positive multiple of the patch size 16"):
        packing.check_image((3, 32, 40), 4, **kw)
    with pytest.raises(ValueError, match=r"images\[1\] height 80 is larger than the model's maximum 64"):
        packing.check_image((3, 80, 32), 1, **kw)
    with pytest.raises(ValueError, match=r"images\[0\] must have channels=3 \(c height width\), got 1"):
        packing.check_image((1, 32, 32), 0, **kw)
    with pytest.raises(ValueError, match=r"images\[2\] must be a 3-D array"):
        packing.check_image((32, 32), 2, **kw)
    with pytest.raises(ValueError, match="images is empty"):
        packing.check_images([], **kw)


def test_numpy_patchify_is_row_major_patches_of_patch_then_channel() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((12, 8, 3)).astype(np.float32)  # (h, w, c)
    got = packing.patchify(img, (4, 2), channels_last=True)
    assert got.shape == (3 * 4, 4 * 2 * 3)
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(got[i * 4 + j], img[4 * i : 4 * i + 4, 2 * j : 2 * j + 2].reshape(-1))
    np.testing.assert_array_equal(packing.patchify(img.transpose(2, 0, 1), (4, 2), channels_last=False), got)
    assert packing.patch_coords((2, 3)).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_pack_images_static_layout_and_unpack() -> None:
    rng = np.random.default_rng(1)
    sides = [(16, 32), (32, 32), (8, 8), (24, 16), (8, 40)]
    images = [rng.standard_normal((h, w, 2)).astype(np.float32) for h, w in sides]
    batch = packing.pack_images(images, patch_size=(8, 8), group_max_seq_len=20, max_images=4, num_seqs=3)
    assert batch.patches.shape == (3, 20, 128) and batch.coords.shape == (3, 20, 2)
    assert batch.segment_ids.shape == (3, 20) and batch.image_ids.shape == (3, 4)
    lengths = [h * w // 64 for h, w in sides]
    assert batch.fill == pytest.approx(sum(lengths) / 60)
    assert sorted(i for i in batch.image_ids.ravel().tolist() if i >= 0) == list(range(5))
    tokens, coords = batch.tokens(batch.patches), batch.tokens(batch.coords)
    start = 0
    for img, n, (h, w) in zip(images, lengths, sides):
        np.testing.assert_array_equal(tokens[start : start + n], packing.patchify(img, (8, 8), channels_last=True))
        np.testing.assert_array_equal(coords[start : start + n], packing.patch_coords((h // 8, w // 8)))
        start += n
    # every token carries the slot of its image, padding is zero everywhere
    for s in range(3):
        for j, i in enumerate(batch.image_ids[s]):
            assert (batch.segment_ids[s] == j + 1).sum() == (lengths[i] if i >= 0 else 0)
    pad = batch.segment_ids == 0
    assert not batch.patches[pad].any() and not batch.coords[pad].any()
    per_slot = np.where(batch.image_ids >= 0, batch.image_ids * 10, -1)[..., None]
    assert batch.unpack(per_slot)[:, 0].tolist() == [0, 10, 20, 30, 40]

    with pytest.raises(ValueError, match=r"more than num_seqs=1"):
        packing.pack_images(images, patch_size=(8, 8), group_max_seq_len=20, num_seqs=1)
    with pytest.raises(ValueError, match=r"images\[1\] has 16 tokens, more than group_max_seq_len=12"):
        packing.pack_images(images, patch_size=(8, 8), group_max_seq_len=12)
    with pytest.raises(ValueError, match=r"images\[4\] width 40 is larger than the model's maximum 32"):
        packing.pack_images(images, patch_size=(8, 8), group_max_seq_len=20, max_size=(32, 32))


def test_keep_masks_drop_tokens_before_packing() -> None:
    rng = np.random.default_rng(0)
    grids = [(4, 4), (2, 8), (1, 1)]
    masks = packing.keep_masks(grids, 0.25, rng, (8, 8))
    assert [int(m.sum()) for m in masks] == [12, 12, 1]  # at least one token survives
    by_side = packing.keep_masks(grids, lambda h, w: 0.5 if h * w > 512 else 0.0, rng, (8, 8))
    assert [int(m.sum()) for m in by_side] == [8, 8, 1]
    assert packing.num_keep(10, 0.9) == 1 and packing.num_keep(10, 0.0) == 10
    images = [np.ones((8 * g[0], 8 * g[1], 1), np.float32) for g in grids]
    batch = packing.pack_images(images, patch_size=(8, 8), group_max_seq_len=32, keep=masks)
    assert batch.packing.lengths == (12, 12, 1)
    kept = batch.tokens(batch.coords)[:12]
    np.testing.assert_array_equal(kept, packing.patch_coords((4, 4))[masks[0].ravel()])
    with pytest.raises(ValueError, match=r"keep\[1\] must be a boolean array of the image's patch grid \(2, 8\)"):
        packing.pack_images(images, patch_size=(8, 8), group_max_seq_len=32, keep=[masks[0], masks[0], masks[2]])
    with pytest.raises(ValueError, match="token_dropout_prob must be in"):
        packing.token_dropout_fn(1.0)


def test_first_fit_decreasing_fills_a_mixed_resolution_workload() -> None:
    rng = np.random.default_rng(0)
    sides = rng.integers(4, 33, size=(512, 2))  # 32..256 pixels in steps of 8
    p = packing.pack([int(h * w) for h, w in sides], 1024)
    assert len(p.groups) == math.ceil(p.num_tokens / 1024)  # no sequence more than the minimum
    assert p.fill >= 0.98


# --- the three implementations: torch masked, torch nested, flax packed -------------------------------

# the spec's 2-D shapes and config (minus dropout), so that eager flax ops compiled by the parity tests are reused
CFG = dict(spec.get("navit").case().config, dropout=0.0, emb_dropout=0.0, token_dropout_prob=0.5)
SIDES = [(32, 32), (16, 32), (8, 24), (32, 16), (8, 8), (24, 8)]
SHAPE = dict(group_max_seq_len=24, max_images=4, num_seqs=3)


@pytest.fixture
def three() -> tuple[Any, Any, Any]:
    """Torch masked, torch nested and flax packed NaViT holding the same weights (both backends needed)."""
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    return _three()


def _three() -> tuple[Any, Any, Any]:
    import torch
    from flax import nnx

    from vit_flax.checkpoint import load_state
    from vit_flax.na_vit import NaViT as FlaxNaViT
    from vit_torch.checkpoint import to_checkpoint
    from vit_torch.na_vit import NaViT
    from vit_torch.na_vit_nested_tensor import NaViT as NestedNaViT

    torch.manual_seed(0)
    masked, nested = NaViT(**CFG), NestedNaViT(**CFG)
    nested.load_state_dict(masked.state_dict())
    packed = FlaxNaViT(**CFG, rngs=nnx.Rngs(0))
    load_state(packed, to_checkpoint(nested))
    return masked, nested, packed


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, *s), dtype=np.float32) for s in SIDES]


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_the_packers_groups_give_the_same_logits_in_all_three(three: tuple[Any, Any, Any]) -> None:
    import torch

    masked, nested, packed = three
    masked.eval(), nested.eval(), packed.eval()
    images = _images(1)
    with strict_float32(), torch.no_grad():
        t_images = [torch.from_numpy(im) for im in images]
        a, rec_masked = masked(t_images, group_images=True, group_max_seq_len=24, return_features=True)
        b, rec_nested = nested(t_images, return_features=True)
        a, b = a.numpy(), b.numpy()
        batch = packing.pack_images([im.transpose(1, 2, 0) for im in images], patch_size=(8, 8), **SHAPE)
        c = np.asarray(batch.unpack(packed(*batch.arrays)))
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)
    # every block's real tokens too: masked (padded to the longest group) and jagged
    layout = packing.pack(batch.packing.lengths, 24)
    assert list(rec_masked) == list(rec_nested) == ["block00", "pre_logits"]
    for t_masked, t_nested in [(rec_masked["block00"], rec_nested["block00"])]:
        s, n, d = t_masked.shape
        real = t_masked.reshape(s * n, d)[layout.token_index(n)]
        np.testing.assert_allclose(t_nested.values().numpy(), real.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_with_token_dropout_an_explicit_keep_mask_makes_all_three_agree(three: tuple[Any, Any, Any]) -> None:
    import torch

    masked, nested, packed = three
    masked.train(), nested.train(), packed.train()  # token dropout on, dropout off
    images = _images(2)
    grids = [(h // 8, w // 8) for h, w in SIDES]
    keep = packing.keep_masks(grids, 0.5, np.random.default_rng(3), (8, 8))
    with strict_float32(), torch.no_grad():
        t_images, t_keep = [torch.from_numpy(im) for im in images], [torch.from_numpy(k) for k in keep]
        a = masked(t_images, group_images=True, group_max_seq_len=24, keep=t_keep).numpy()
        b = nested(t_images, keep=t_keep).numpy()
        last = [im.transpose(1, 2, 0) for im in images]
        dropped = packing.pack_images(last, patch_size=(8, 8), keep=keep, **SHAPE)  # dropped before packing
        c = np.asarray(dropped.unpack(packed(*dropped.arrays, keep=dropped.segment_ids > 0)))
        full = packing.pack_images(last, patch_size=(8, 8), **SHAPE)  # dropped in the model
        mask = np.zeros(full.segment_ids.shape, bool)
        mask.reshape(-1)[full.packing.token_index(24)] = np.concatenate([k.reshape(-1) for k in keep])
        d = np.asarray(full.unpack(packed(*full.arrays, keep=mask)))
        # and without the mask, every backend drops tokens at random: the logits move
        e = masked(t_images, group_images=True, group_max_seq_len=24).numpy()
    assert sum(int(k.sum()) for k in keep) < sum(k.size for k in keep)
    for got in (b, c, d):
        np.testing.assert_allclose(got, a, rtol=1e-5, atol=1e-5)
    assert not np.allclose(e, a)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_nested_checkpoints_load_into_the_packed_and_the_masked_model(
    three: tuple[Any, Any, Any], tmp_path: Path
) -> None:
    import torch

    import vit_flax
    import vit_torch

    masked, nested, _ = three
    torch.manual_seed(1)
    for p in nested.parameters():  # weights of its own
        p.data.normal_()
    vit_torch.save(nested.eval(), tmp_path / "nested")
    packed = vit_flax.load(tmp_path / "nested")
    vit_torch.load_weights(masked, tmp_path / "nested")
    images = _images(4)
    with strict_float32(), torch.no_grad():
        want = nested([torch.from_numpy(im) for im in images]).numpy()
        got = masked.eval()([torch.from_numpy(im) for im in images], group_images=True, group_max_seq_len=24)
        batch = packing.pack_images([im.transpose(1, 2, 0) for im in images], patch_size=(8, 8), **SHAPE)
        flax_out = np.asarray(batch.unpack(packed(*batch.arrays)))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flax_out, want, rtol=1e-5, atol=1e-5)


def test_numpy_and_the_compiled_graph_keep_the_same_number_of_tokens() -> None:
    """One formula for token dropout's kept count: in floats, 10 * (1 - 0.8) is 1.999..., floor 1 in numpy,
    while float32 arithmetic in a graph gave 2 for 99 such pairs with n < 300."""
    import jax
    import jax.numpy as jnp

    assert packing.num_keep(10, 0.8) == 2 and packing.num_keep(3, 0.9) == 1 and packing.num_keep(7, 0.5) == 3
    n = np.repeat(np.arange(1, 300), 19)
    p = np.tile(np.round(np.arange(0.05, 1.0, 0.05), 2), 299)
    in_graph = np.asarray(jax.jit(lambda n, p: packing.num_keep(n, p, xp=jnp))(n, p.astype(np.float32)))
    in_numpy = np.array([packing.num_keep(int(a), float(b)) for a, b in zip(n, p)])
    want = np.maximum(1, (n * np.round((1 - p) * 100).astype(int)) // 100)  # exact, in integers
    np.testing.assert_array_equal(in_numpy, want)
    np.testing.assert_array_equal(in_graph, want)
