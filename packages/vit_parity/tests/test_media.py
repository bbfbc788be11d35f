"""Video files (PyAV) and medical volumes (NIfTI with nibabel, DICOM series with pydicom) as data: sampling,
orientation, resampling, missing extras, unreadable files, worker processes, and `vit train` / `vit predict` on them.
Every file is made here with the same libraries; a test skips only when its library is not installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import fails, one_thread, run  # noqa: F401 (one_thread: autouse)

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.tools import data, media
from vit_parity.tools.data import DataError, Preprocess

# frame i of a test clip is a constant gray of this value: 16 levels 15 apart, far above the codecs' error
LEVELS = [10 + 15 * i for i in range(16)]
TOL = 4 / 255  # what mpeg4/h264/vp8 at these sizes change a constant frame by, with room


def _clip(path: Path, frames: list, size: tuple[int, int] = (8, 8), codec: str = "mpeg4") -> Path:
    """Encode constant frames (a gray level, or an (r, g, b) triple each) into ``path``."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        for value in frames:
            rgb = np.broadcast_to(np.asarray(value, dtype=np.uint8), (*size, 3))
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _levels(clip: np.ndarray) -> np.ndarray:
    """Each frame's mean over channels and pixels, in 0..255."""
    return clip.mean(axis=(0, 2, 3)) * 255


# ------------------------------------------------------------------------------------------------ videos


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "mpeg4"), (".mp4", "libx264"), (".webm", "libvpx")])
def test_video_sampling_uniform_and_strided(tmp_path: Path, suffix: str, codec: str) -> None:
    path = _clip(tmp_path / f"clip{suffix}", LEVELS, codec=codec)  # .webm records no frame count: counted
    clip = media.read_video(path, 4)
    assert clip.shape == (3, 4, 8, 8) and clip.dtype == np.float32
    assert clip.min() >= 0.0 and clip.max() <= 1.0
    # the centre frames of four equal segments of 16: 2, 6, 10, 14
    np.testing.assert_allclose(_levels(clip), [LEVELS[i] for i in (2, 6, 10, 14)], atol=TOL * 255)
    strided = media.read_video(path, 5, frame_stride=3)
    np.testing.assert_allclose(_levels(strided), [LEVELS[i] for i in (0, 3, 6, 9, 12)], atol=TOL * 255)
    gray = media.read_video(path, 2, channels=1, size=(4, 6))
    assert gray.shape == (1, 2, 4, 6)
    np.testing.assert_allclose(_levels(gray), [LEVELS[4], LEVELS[12]], atol=TOL * 255)


def test_short_clips_repeat_frames_evenly_or_refuse_a_stride(tmp_path: Path) -> None:
    path = _clip(tmp_path / "short.avi", LEVELS[:3])
    np.testing.assert_allclose(_levels(media.read_video(path, 6)), [LEVELS[i] for i in (0, 0, 1, 1, 2, 2)], atol=4)
    np.testing.assert_allclose(_levels(media.read_video(path, 2, frame_stride=2)), [LEVELS[0], LEVELS[2]], atol=4)
    with pytest.raises(DataError, match=r"short\.avi has 3 frames; 2 frames with a frame stride of 3 need 4"):
        media.read_video(path, 2, frame_stride=3)


def test_video_colours_keep_their_channel_order(tmp_path: Path) -> None:
    colours = [(200, 40, 90), (30, 180, 60)]
    clip = media.read_video(_clip(tmp_path / "c.mov", colours, size=(16, 16)), 2)
    got = clip.mean(axis=(2, 3)).T * 255  # (t, c)
    np.testing.assert_allclose(got, colours, atol=8)  # 4:2:0 chroma costs saturated colours a few levels


def test_folder_of_videos_in_one_or_two_processes(tmp_path: Path) -> None:
    for label, offset in (("ball", 0), ("wave", 8)):
        for k in range(3):
            _clip(tmp_path / label / f"{k}.mp4", LEVELS[offset + k : offset + k + 6], size=(8, 12))
    one = data.folder(tmp_path, frames=3, workers=1)
    assert one.classes == ("ball", "wave") and list(one.y) == [0, 0, 0, 1, 1, 1]
    assert one.x.shape == (6, 3, 3, 8, 12) and one.axes == "b c t h w"  # the first clip's size
    # clip k of "wave" holds levels 8 + k ... 13 + k; the segment centres of 6 frames in 3 are 1, 3, 5
    np.testing.assert_allclose(_levels(one.x[4]), [LEVELS[8 + 1 + i] for i in (1, 3, 5)], atol=TOL * 255)
    two = data.folder(tmp_path, frames=3, workers=2)
    np.testing.assert_array_equal(two.x, one.x)
    np.testing.assert_array_equal(two.y, one.y)
    # load() passes frames, stride, size and channels through
    small = data.load(str(tmp_path), size=4, frames=2, frame_stride=2, channels=1, workers=1)
    assert small.x.shape == (6, 1, 2, 4, 4)
    np.testing.assert_allclose(_levels(small.x[0]), [LEVELS[0], LEVELS[2]], atol=TOL * 255)
    assert data.folder(tmp_path, size=(2, 4, 4), workers=1).x.shape == (6, 3, 2, 4, 4)
    with pytest.raises(DataError, match=r"asks for 2 frames but frames is 3"):
        data.folder(tmp_path, size=(2, 4, 4), frames=3)
    with pytest.raises(DataError, match="workers must be at least 1, got 0"):
        data.folder(tmp_path, workers=0)


def test_folders_refuse_mixed_kinds(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    _clip(tmp_path / "a" / "0.mp4", LEVELS[:2])
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "b" / "0.png")
    with pytest.raises(DataError, match=r"mixes images and videos; keep one kind"):
        data.folder(tmp_path)
    (tmp_path / "b" / "0.png").unlink()
    np.save(tmp_path / "b" / "0.npy", np.zeros((2, 4, 4), dtype=np.float32))
    (tmp_path / "b" / "1.nii").write_bytes(b"")
    with pytest.raises(DataError, match=r"mixes \.npy arrays, videos and volumes"):
        data.folder(tmp_path)


# ----------------------------------------------------------------------------------------------- volumes


def _nifti(path: Path, vol: np.ndarray, affine: np.ndarray | None = None, slope_inter=None) -> Path:
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(vol, np.eye(4) if affine is None else affine)
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def test_nifti_volumes_come_axial_depth_first(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    ras = rng.random((4, 5, 6)).astype(np.float32)  # (x: to the right, y: to the front, z: to the head)
    got = media.read_volume(_nifti(tmp_path / "ras.nii.gz", ras))
    # depth from the feet to the head, height from the front to the back, width from the right to the left
    np.testing.assert_array_equal(got, ras.transpose(2, 1, 0)[None, :, ::-1, ::-1])
    # stored sagittally (i: front, j: head, k: left): nibabel's own reorientation gives the same volume
    sagittal = np.array([[0, 0, -1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    img = nib.load(str(_nifti(tmp_path / "sag.nii", ras, sagittal)))
    canonical = np.asarray(nib.as_closest_canonical(img).get_fdata(), dtype=np.float32)
    np.testing.assert_array_equal(
        media.read_volume(tmp_path / "sag.nii"), canonical.transpose(2, 1, 0)[None, :, ::-1, ::-1]
    )
    # stored integers with a scaling: intensities come scaled
    ints = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    scaled = media.read_volume(_nifti(tmp_path / "int.nii.gz", ints, slope_inter=(2.0, -5.0)))
    np.testing.assert_allclose(scaled[0], (ints * 2.0 - 5.0).transpose(2, 1, 0)[:, ::-1, ::-1])


def test_volumes_are_resampled_trilinearly(tmp_path: Path) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    vol = np.random.default_rng(1).random((6, 5, 4)).astype(np.float32)  # (d, h, w) after reading
    path = _nifti(tmp_path / "v.nii.gz", vol.transpose(2, 1, 0)[::-1, ::-1, :].copy())
    np.testing.assert_array_equal(media.read_volume(path)[0], vol)
    grid = (3, 8, 7)
    # voxel centres aligned: new voxel i sits at old position (i + 0.5) * old / new - 0.5, clamped to the volume
    axes = [np.clip((np.arange(m) + 0.5) * n / m - 0.5, 0, n - 1) for n, m in zip(vol.shape, grid)]
    want = ndimage.map_coordinates(vol, np.meshgrid(*axes, indexing="ij"), order=1)
    np.testing.assert_allclose(media.read_volume(path, grid)[0], want, atol=1e-5)
    assert media.read_volume(path, 4).shape == (1, 4, 4, 4)


def _dicom_slice(path: Path, pixels: np.ndarray, position, number: int, slope: float, intercept: float) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = "1.2.826.0.1.3680043.8.498.1", "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # rows to the left, columns to the back
    ds.InstanceNumber = number
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.4
        ds.save_as(str(path), write_like_original=False)


def _series(folder: Path, positions: bool = True) -> np.ndarray:
    """Four slices written in shuffled file order; returns the volume they make, feet to head, rescaled."""
    slices = np.arange(4 * 3 * 5, dtype=np.int16).reshape(4, 3, 5) * 3 - 40  # stored values, slice z = 0..3
    rescale = [(1.0, -1024.0), (2.0, 0.0), (0.5, 10.0), (1.0, 0.0)]
    for name, z in zip("dbca", (2, 0, 3, 1)):  # file a holds slice 1, b slice 0, c slice 3, d slice 2
        # instance numbers run against the positions: positions win when present
        number = (10 - z) if positions else z + 1
        _dicom_slice(folder / f"{name}.dcm", slices[z], (-20.0, 5.0, 2.5 * z) if positions else None, number,
                     *rescale[z])  # fmt: skip
    return np.stack([slices[z] * s + i for z, (s, i) in enumerate(rescale)]).astype(np.float32)


def test_dicom_series_order_and_rescale(tmp_path: Path) -> None:
    want = _series(tmp_path / "ct")
    np.testing.assert_array_equal(media.read_volume(tmp_path / "ct"), want[None])
    want = _series(tmp_path / "numbered", positions=False)  # no positions: ordered by InstanceNumber
    np.testing.assert_array_equal(media.read_volume(tmp_path / "numbered"), want[None])
    assert media.read_volume(tmp_path / "ct", (2, 6, 10)).shape == (1, 2, 6, 10)
    # `vit predict` takes the series folder as one input
    pre = Preprocess((4, 3, 5), 1, (0.0,), (1.0,))
    np.testing.assert_array_equal(data.read_sample(tmp_path / "numbered", pre), want[None])
    with pytest.raises(DataError, match=r"input file .*empty not found \(a folder, but without \.dcm files\)"):
        data.read_sample(_mkdir(tmp_path / "empty"), pre)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_folder_of_volumes_mixes_nifti_and_dicom(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    want = _series(tmp_path / "a" / "series0")
    _nifti(tmp_path / "a" / "v1.nii.gz", rng.random((5, 3, 4)).astype(np.float32))  # -> (4, 3, 5)
    _nifti(tmp_path / "b" / "v2.nii", rng.random((10, 6, 8)).astype(np.float32))
    (tmp_path / "b" / "notes").mkdir()  # a folder without .dcm files is not a sample
    ds = data.folder(tmp_path, workers=1)
    assert ds.x.shape == (3, 1, 4, 3, 5) and list(ds.y) == [0, 0, 1]  # the first volume's shape
    np.testing.assert_array_equal(ds.x[0, 0], want)
    assert ds.axes == "b c t h w" and data.Preprocess.fit(ds).channels == 1
    np.testing.assert_array_equal(data.folder(tmp_path, workers=2).x, ds.x)
    assert data.folder(tmp_path, size=4, workers=1).x.shape == (3, 1, 4, 4, 4)
    with pytest.raises(DataError, match="volumes are read with one channel, not 3"):
        data.folder(tmp_path, channels=3)


def test_default_workers_need_many_slow_files_and_idle_cpus(monkeypatch) -> None:
    monkeypatch.setattr(media, "_idle_cpus", lambda: 7.6)
    assert media.default_workers(20, 0.5) == 4  # 10 s of decoding: at most 4 processes
    assert media.default_workers(20, 0.1) == 1  # 2 s: not worth starting processes
    assert media.default_workers(8, 10.0) == 1  # few files
    monkeypatch.setattr(media, "_idle_cpus", lambda: 2.9)
    assert media.default_workers(20, 0.5) == 2
    monkeypatch.setattr(media, "_idle_cpus", lambda: 1.5)  # a busy machine: this process
    assert media.default_workers(20, 0.5) == 1
    # map_files times the second file (the first loads the codecs) and asks for the rest; results in order
    asked = []
    monkeypatch.setattr(media, "default_workers", lambda files, seconds: asked.append((files, seconds)) or 1)
    paths = [Path(str(i)) for i in range(10)]
    got = media.map_files(lambda p: np.full(2, int(p.name)), paths)  # not picklable: read here
    assert [int(a[0]) for a in got] == list(range(10)) and len(asked) == 1 and asked[0][0] == 8
    assert media.map_files(lambda p: np.zeros(1), paths[:8]) and len(asked) == 1  # 8 files: no timing, here
    with pytest.raises(DataError, match="workers must be at least 1, got 0"):
        media.map_files(lambda p: np.zeros(1), paths, 0)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("module", "file", "needs", "extra"),
    [
        ("av", "clip.mp4", "reading .mp4 videos needs PyAV", "video"),
        ("nibabel", "v.nii.gz", "reading .nii.gz volumes needs nibabel", "medical"),
        ("pydicom", "series/0.dcm", "reading DICOM series needs pydicom", "medical"),
    ],
)
def test_a_missing_library_names_its_extra(tmp_path: Path, monkeypatch, module: str, file: str, needs: str,
                                           extra: str) -> None:  # fmt: skip
    for label in ("a", "b"):
        (tmp_path / label / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / label / file).write_bytes(b"")
    monkeypatch.setitem(sys.modules, module, None)  # `import module` fails
    with pytest.raises(DataError) as err:
        data.folder(tmp_path)
    assert f"{needs}; install it with `pip install 'vit-parity[{extra}]'`" in str(err.value)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unreadable_file_is_named_in_any_process(tmp_path: Path, workers: int) -> None:
    for k in range(2):
        _clip(tmp_path / "a" / f"{k}.mp4", LEVELS[:4])
    _clip(tmp_path / "b" / "0.mp4", LEVELS[:4])
    (tmp_path / "b" / "1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with pytest.raises(DataError, match=r"cannot read video .*b/1\.mp4 .*remove or replace the file"):
        data.folder(tmp_path, size=8, workers=workers)


def test_unreadable_volumes_are_named(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    pytest.importorskip("pydicom")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(DataError, match=r"cannot read volume .*broken\.nii\.gz"):
        media.read_volume(tmp_path / "broken.nii.gz")
    _series(tmp_path / "ct")
    (tmp_path / "ct" / "b.dcm").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read DICOM file .*ct/b\.dcm"):
        media.read_volume(tmp_path / "ct")


# ------------------------------------------------------------------------------------------- the commands

TINY = ["--image-size", 8, "--patch-size", 4, "--frame-patch-size", 2, "--dim", 16, "--depth", 1, "--heads", 2,
        "--epochs", 1, "--batch-size", 4, "--quiet", "--backend", "torch"]  # fmt: skip


def test_train_and_predict_on_video_files(tmp_path: Path, capsys) -> None:
    for label, offset in (("dark", 0), ("light", 10)):
        for k in range(3):
            _clip(tmp_path / "clips" / label / f"{k}.mp4", LEVELS[offset + k : offset + k + 6], size=(8, 8))
    out = tmp_path / "run"
    args = ["train", "--arch", "vivit", "--data", tmp_path / "clips", "--frames", 4, *TINY]
    code, text, err = run(capsys, *args, "--workers", 1, "--out", out)
    assert code == 0, err
    assert "held-out accuracy" in text
    pre = Preprocess.from_json(ckpt_io.read_config(out / "checkpoint")["extra"]["preprocess"])
    assert pre.size == (4, 8, 8) and pre.channels == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and [e["epoch"] for e in metrics["epochs"]] == [0]
    clip = tmp_path / "clips" / "light" / "0.mp4"
    code, text, err = run(capsys, "predict", out, clip, "--top-k", 2)
    assert code == 0, err
    assert text.startswith(f"{clip}: ") and "dark (" in text and "light (" in text
    # the data flags reach the reader
    short = "has 6 frames; 4 frames with a frame stride of 2 need 7"
    fails(capsys, *args, "--frame-stride", 2, "--out", tmp_path / "r2", match=short)
    fails(capsys, *args, "--workers", 0, "--out", tmp_path / "r3", match="workers must be at least 1, got 0")
    # predict names the file and what the checkpoint takes
    _nifti(tmp_path / "v.nii.gz", np.zeros((8, 8, 4), dtype=np.float32))
    code, _, err = run(capsys, "predict", out, tmp_path / "v.nii.gz")
    assert code == 1 and f"{tmp_path / 'v.nii.gz'} is a volume but the model takes samples shaped (3, 4, 8, 8)" in err
    assert ".mp4/.avi/.webm/.mov videos (4 frames sampled uniformly)" in err


def test_train_and_predict_on_nifti_volumes(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    for label, level in (("low", 0.2), ("high", 0.8)):
        for k in range(3):
            _nifti(tmp_path / "vols" / label / f"{k}.nii.gz", (level + 0.1 * rng.random((8, 8, 8))).astype(np.float32))
    out = tmp_path / "run"
    code, text, err = run(capsys, "train", "--arch", "vit_3d", "--data", tmp_path / "vols", *TINY, "--out", out)
    assert code == 0, err
    pre = Preprocess.from_json(ckpt_io.read_config(out / "checkpoint")["extra"]["preprocess"])
    assert pre.size == (8, 8, 8) and pre.channels == 1
    assert 0.2 < pre.mean[0] < 0.9  # raw intensities, normalised by the checkpoint's statistics
    assert json.loads((out / "metrics.json").read_text())["complete"]
    code, text, err = run(capsys, "predict", out, tmp_path / "vols" / "high" / "1.nii.gz")
    assert code == 0 and "high (" in text, err
