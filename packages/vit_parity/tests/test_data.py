"""vit_parity.tools.data: built-in datasets, folders, preprocessing, resizing, batching."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets as sklearn_datasets
import torch
from PIL import Image

from vit_parity.core import loop
from vit_parity.tools import data
from vit_parity.tools.data import DataError, Preprocess


@pytest.fixture(scope="module")
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = sklearn_datasets.load_digits()
    return bunch.images, bunch.target


# ---------------------------------------------------------------------------------------------- resize


def test_resize_upsamples_pixel_centre_aligned() -> None:
    x = np.array([0.0, 1.0], dtype=np.float32)
    # output pixel centres sit at -0.25, 0.25, 0.75, 1.25 in input coordinates (clamped at the edges)
    np.testing.assert_allclose(data.resize(x, (4,)), [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_array_equal(data.resize(x, (2,)), x)


def test_resize_matches_torch_interpolate() -> None:
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 5, 7), dtype=np.float32)
    for size in ((11, 13), (3, 4)):
        want = F.interpolate(torch.from_numpy(img), size=size, mode="bilinear", align_corners=False).numpy()
        np.testing.assert_allclose(data.resize(img, size), want, rtol=1e-5, atol=1e-6)
    vol = rng.random((1, 1, 4, 6, 5), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(vol), size=(8, 3, 10), mode="trilinear", align_corners=False).numpy()
    np.testing.assert_allclose(data.resize(vol, (8, 3, 10)), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- digits


def test_digits_are_sklearns_digits(raw_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, target = raw_digits
    native = data.digits(size=8)
    assert native.x.shape == (1797, 1, 8, 8) and native.x.dtype == np.float32
    np.testing.assert_allclose(native.x[:, 0], images / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(native.y, target)
    assert native.classes == tuple("0123456789")
    big = data.digits(size=16)
    assert big.x.shape == (1797, 1, 16, 16) and big.size == (16, 16) and big.axes == "b c h w"
    assert big.x.min() >= 0.0 and big.x.max() <= 1.0
    np.testing.assert_allclose(big.x, data.resize(native.x, (16, 16)))


@pytest.mark.parametrize(("size", "glyph"), [(16, None), (16, 8)])
def test_digits_video_moves_the_digit(raw_digits: tuple[np.ndarray, np.ndarray], size: int, glyph: int | None) -> None:
    images, target = raw_digits
    clips = data.digits_video(size=size, frames=6, seed=3, glyph=glyph)
    assert clips.x.shape == (1797, 1, 6, size, size) and clips.axes == "b c t h w"
    np.testing.assert_array_equal(clips.y, target)
    g = glyph or 12  # by default the digit spans three quarters of the frame
    room = size - g
    moved = 0
    for i in (0, 1, 500, 1796):
        digit = data.resize(images[i] / 16.0, (g, g))
        corners = []
        for t in range(6):
            frame = clips.x[i, 0, t]
            # the digit is pasted whole at one position: find it and check the rest is black
            hits = [
                (r, c)
                for r in range(room + 1)
                for c in range(room + 1)
                if np.allclose(frame[r : r + g, c : c + g], digit, atol=1e-6)
                and np.isclose(frame.sum(), digit.sum(), atol=1e-4)
            ]
            assert hits, f"clip {i} frame {t} does not hold digit {target[i]} whole"
            corners.append(hits[0])
        steps = np.abs(np.diff(np.array(corners), axis=0))
        assert steps.max() <= 2
        moved += len(set(corners)) > 1
    assert moved >= 3  # digits move (a digit whose glyph fits two positions may look still)


def test_digits_video_is_deterministic_for_a_seed() -> None:
    a, b, c = data.digits_video(seed=1), data.digits_video(seed=1), data.digits_video(seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)


# ---------------------------------------------------------------------------------------------- shapes


def _fill_of_bounding_box(mask: np.ndarray) -> float:
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    return float(mask.sum() / np.prod(hi - lo))


def test_shapes_volume_geometry() -> None:
    vols = data.shapes_volume(size=16, samples=100, noise=0.0, seed=0)
    assert vols.x.shape == (100, 1, 16, 16, 16) and vols.classes == data.SHAPES
    np.testing.assert_array_equal(np.bincount(vols.y), [20] * 5)
    assert set(np.unique(vols.x)) <= {0.0, 1.0}
    # a solid's share of its bounding box: cube 1, cylinder pi/4, sphere pi/6, cone pi/12 (coarse voxels)
    expected = {
        "cube": (1.0, 0.01),
        "cylinder": (np.pi / 4, 0.1),
        "sphere": (np.pi / 6, 0.1),
        "cone": (np.pi / 12, 0.15),
    }
    for name, (want, tol) in expected.items():
        fills = [_fill_of_bounding_box(v[0] > 0.5) for v in vols.x[vols.y == data.SHAPES.index(name)]]
        assert abs(np.mean(fills) - want) < tol, (name, np.mean(fills))
    for v, label in zip(vols.x[:, 0], vols.y):
        centre = tuple(np.round(np.argwhere(v > 0.5).mean(0)).astype(int))
        hole = v[centre] == 0.0
        assert hole == (data.SHAPES[label] == "torus"), data.SHAPES[label]


def test_shapes_volume_noise_and_seed() -> None:
    a = data.shapes_volume(samples=10, seed=4)
    np.testing.assert_array_equal(a.x, data.shapes_volume(samples=10, seed=4).x)
    assert a.x.min() >= 0.0 and a.x.max() <= 1.0
    assert len(np.unique(a.x)) > 100  # noisy, not binary
    assert not np.array_equal(a.x, data.shapes_volume(samples=10, seed=5).x)


# ---------------------------------------------------------------------------------------------- folders


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_of_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    dog = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    _png(tmp_path / "dog" / "a.png", dog)
    _png(tmp_path / "cat" / "x.PNG", cat)
    _png(tmp_path / "cat" / "y.png", 255 - cat)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = data.folder(tmp_path)
    assert ds.classes == ("cat", "dog") and list(ds.y) == [0, 0, 1]
    assert ds.x.shape == (3, 1, 6, 5)
    np.testing.assert_allclose(ds.x[0, 0], cat / 255.0, atol=1e-7)
    np.testing.assert_allclose(ds.x[2, 0], dog / 255.0, atol=1e-7)
    # one RGB image makes every image RGB; size resizes
    _png(tmp_path / "dog" / "b.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    rgb = data.folder(tmp_path, size=4)
    assert rgb.x.shape == (4, 3, 4, 4)
    np.testing.assert_allclose(rgb.x[0, 0], rgb.x[0, 2])  # a gray image has equal channels
    assert data.folder(tmp_path, channels=1).x.shape == (4, 1, 6, 5)


def test_folder_of_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            np.save(tmp_path / name / f"{i}.npy", rng.random((4, 6, 6)).astype(np.float32))
    ds = data.folder(tmp_path)
    assert ds.x.shape == (4, 1, 4, 6, 6) and ds.axes == "b c t h w"
    np.testing.assert_array_equal(ds.x[3, 0], np.load(tmp_path / "b" / "1.npy"))
    assert data.folder(tmp_path, size=3).x.shape == (4, 1, 3, 3, 3)
    np.save(tmp_path / "b" / "odd.npy", np.zeros((4, 5, 6), dtype=np.float32))
    with pytest.raises(DataError, match="different shapes"):
        data.folder(tmp_path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "no class sub-folders"),
        (lambda p: (p / "only").mkdir(parents=True), "at least two"),
        (lambda p: ((p / "a").mkdir(parents=True), (p / "b").mkdir()), "holds no"),
    ],
    ids=["missing", "no-classes", "one-class", "empty-class"],
)
def test_folder_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "data"
    setup(root)
    if (root / "a").is_dir():
        _png(root / "a" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=message):
        data.folder(root)


def test_folder_unreadable_image_and_mixed_kinds(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png.*remove or replace"):
        data.folder(tmp_path)
    (tmp_path / "b" / "broken.png").unlink()
    np.save(tmp_path / "b" / "0.npy", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"mixes images and \.npy"):
        data.folder(tmp_path)


def test_load_dispatches_and_reports_missing_optional_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.load("digits", size=8).x.shape == (1797, 1, 8, 8)
    assert data.load("shapes-volume", size=8, samples=10).x.shape == (10, 1, 8, 8, 8)
    assert data.load("digits-video", size=12, frames=3).x.shape == (1797, 1, 3, 12, 12)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"scikit-learn.*pip install"):
        data.load("digits")


# ---------------------------------------------------------------------------------------- split, limit, batches


def test_split_is_stratified_disjoint_and_seeded() -> None:
    ds = data.Dataset(np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1), np.arange(100) % 4, tuple("abcd"))
    train, held = ds.split(0.2, seed=0)
    ids = lambda d: set(d.x[:, 0, 0, 0].astype(int))  # noqa: E731
    assert ids(train) | ids(held) == set(range(100)) and not ids(train) & ids(held)
    np.testing.assert_array_equal(np.bincount(held.y), [5, 5, 5, 5])
    assert ids(ds.split(0.2, seed=0)[1]) == ids(held) != ids(ds.split(0.2, seed=1)[1])
    np.testing.assert_array_equal(held.x[:, 0, 0, 0] % 4, held.y)  # labels travel with their samples
    assert len(ds.split(0.0)[1]) == 0
    small = ds.limit(12, seed=0)
    np.testing.assert_array_equal(np.bincount(small.y), [3, 3, 3, 3])


def test_batches_cover_every_index_once() -> None:
    got = np.concatenate(list(loop.batches(10, 3, rng=np.random.default_rng(0))))
    assert sorted(got) == list(range(10)) and list(got) != list(range(10))
    assert [len(b) for b in loop.batches(10, 3, drop_last=True)] == [3, 3, 3]


def test_random_shift_translates_within_range() -> None:
    x = np.zeros((50, 1, 9, 9), dtype=np.float32)
    x[:, 0, 4, 4] = 1.0
    out = loop.random_shift(x, 2, np.random.default_rng(0))
    pos = np.array([np.argwhere(o[0] == 1.0)[0] for o in out])
    assert np.abs(pos - 4).max() == 2 and len({tuple(p) for p in pos}) > 10
    assert out.sum() == 50  # nothing lost away from the border
    np.testing.assert_array_equal(loop.random_shift(x, 0, np.random.default_rng(0)), x)


# ----------------------------------------------------------------------------------------- preprocessing


def test_preprocess_normalises_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal([[[[2.0]], [[-1.0]]]], [[[[3.0]], [[0.5]]]], size=(200, 2, 4, 4)).astype(np.float32)
    pre = Preprocess.fit(data.Dataset(x, np.zeros(200, dtype=np.int64), ("a",)))
    z = pre(x)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert Preprocess.from_json(pre.to_json()) == pre
    assert pre(np.zeros((1, 2, 8, 8), dtype=np.float32)).shape == (1, 2, 4, 4)  # resized
    with pytest.raises(DataError, match=r"do not fit this model, which takes \(2, 4, 4\)"):
        pre(np.zeros((1, 3, 4, 4), dtype=np.float32))
    with pytest.raises(DataError, match="incomplete"):
        Preprocess.from_json({"size": [4, 4]})


def test_read_sample(tmp_path: Path) -> None:
    pre = Preprocess((4, 4), 1, (0.0,), (1.0,))
    img = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    _png(tmp_path / "a.png", img)
    np.testing.assert_allclose(data.read_sample(tmp_path / "a.png", pre), img[None] / 255.0, atol=1e-7)
    _png(tmp_path / "big.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    assert data.read_sample(tmp_path / "big.jpg", pre).shape == (1, 4, 4)
    np.save(tmp_path / "a.npy", np.ones((4, 4), dtype=np.float64))
    np.testing.assert_array_equal(data.read_sample(tmp_path / "a.npy", pre), np.ones((1, 4, 4)))
    np.save(tmp_path / "bad.npy", np.ones((2, 4, 4)))
    with pytest.raises(DataError, match=r"has shape \(2, 4, 4\); the model takes \(1, 4, 4\)"):
        data.read_sample(tmp_path / "bad.npy", pre)
    with pytest.raises(DataError, match="not found"):
        data.read_sample(tmp_path / "missing.png", pre)
    (tmp_path / "a.gif").write_bytes(b"")
    with pytest.raises(DataError, match="unsupported file type"):
        data.read_sample(tmp_path / "a.gif", pre)
    video = Preprocess((3, 4, 4), 1, (0.0,), (1.0,))
    with pytest.raises(DataError, match="is an image"):
        data.read_sample(tmp_path / "a.png", video)
