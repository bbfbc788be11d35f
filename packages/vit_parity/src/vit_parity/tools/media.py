"""Video files and medical volumes as channels-first float32 arrays, and decoding files in worker processes.

- Videos (``.mp4``, ``.avi``, ``.webm``, ``.mov``) are read with PyAV (``pip install 'vit-parity[video]'``):
  :func:`read_video` gives ``(c, t, h, w)`` in ``[0, 1]``, RGB or grayscale, ``t`` frames sampled uniformly
  over the clip (the centre frame of each of ``t`` equal segments, so a short clip repeats frames evenly) or
  every ``frame_stride``-th frame from the start.
- Volumes are NIfTI files (``.nii``, ``.nii.gz``, read with nibabel) or DICOM series, a folder of ``.dcm``
  slices (read with pydicom; ``pip install 'vit-parity[medical]'``). :func:`read_volume` gives ``(1, d, h, w)``
  raw intensities (DICOM: rescale slope and intercept applied; NIfTI: its scaling applied). Both kinds are
  turned to one orientation, axial slices as a DICOM viewer shows them: depth from the feet to the head,
  height from the front (anterior) to the back, width from the patient's right to left. DICOM slices are
  ordered by their position along the slice normal (``ImagePositionPatient``), or by ``InstanceNumber``
  when positions are missing (and then kept as stored). Volumes are resampled to the requested grid by
  trilinear interpolation; voxel spacing is not used (a volume is stretched to the grid, whatever its
  millimetres).
- :func:`map_files` reads files in ``spawn`` worker processes, results in file order; by default only many
  slow files on idle CPUs (:func:`default_workers`), since starting processes and sending arrays back cost time.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from vit_parity.tools.data import DataError, _require, resize

__all__ = [
    "DEFAULT_FRAMES",
    "DICOM_SUFFIX",
    "VIDEO_SUFFIXES",
    "VOLUME_SUFFIXES",
    "default_workers",
    "is_dicom_series",
    "kind_of",
    "map_files",
    "read_video",
    "read_video_bytes",
    "read_volume",
    "reader",
    "sample_indices",
    "suffix",
    "to_float",
    "video_size",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mov")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIX = ".dcm"
DEFAULT_FRAMES = 8
# By default, videos and volumes are decoded in worker processes when there are more files than this and
# decoding them in one process would take longer than that (see default_workers).
POOL_THRESHOLD = 8
POOL_MIN_SECONDS = 3.0


def suffix(path: Path) -> str:
    """The lower-case suffix of ``path``, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_dicom_series(path: Path) -> bool:
    """Whether ``path`` is a folder holding ``.dcm`` files (one DICOM series)."""
    return path.is_dir() and any(p.is_file() and p.suffix.lower() == DICOM_SUFFIX for p in path.iterdir())


def kind_of(path: Path) -> str | None:
    """``"video"`` or ``"volume"`` for the files this module reads, else None."""
    if path.is_dir():
        return "volume" if is_dicom_series(path) else None
    s = suffix(path)
    if s in VIDEO_SUFFIXES:
        return "video"
    if s in VOLUME_SUFFIXES:
        return "volume"
    return None


def _av(path: Path) -> Any:
    return _require("av", f"reading {suffix(path)} videos", extra="video", package="PyAV")


# ------------------------------------------------------------------------------------------------ videos


def sample_indices(count: int, frames: int, frame_stride: int | None = None) -> np.ndarray:
    """The frame indices taken from a clip of ``count`` frames: uniform (segment centres) or strided from 0."""
    if frame_stride is not None:
        return np.arange(frames, dtype=np.int64) * frame_stride
    return np.minimum(((np.arange(frames) + 0.5) * count / frames).astype(np.int64), count - 1)


def video_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The ``(h, w)`` of a video's first video stream, read from its header."""
    p = Path(path)
    av = _av(p)
    try:
        with av.open(str(p)) as container:
            stream = _video_stream(container, p)
            return int(stream.codec_context.height), int(stream.codec_context.width)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"cannot read video {p} ({err}); remove or replace the file") from None


def _video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        raise DataError(f"{path} holds no video stream; remove or replace the file")
    return container.streams.video[0]


def _decode(av: Any, path: Path, wanted: set[int], fmt: str, size: tuple[int, int], last: int | None) -> tuple:
    """The wanted frames (index -> (h, w[, 3]) uint8) and the number of frames decoded (all, or up to ``last``)."""
    got: dict[int, np.ndarray] = {}
    n = 0
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        for frame in container.decode(stream):
            if n in wanted:
                out = frame.reformat(width=size[1], height=size[0], format=fmt, interpolation="BILINEAR")
                got[n] = out.to_ndarray()
            n += 1
            if last is not None and n > last:
                break
    return got, n


def _count_frames(av: Any, path: Path) -> int:
    """Frames in the first video stream: the container's count, or its packets when the container has none."""
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def read_video(
    path: str | os.PathLike[str],
    frames: int | None = None,
    *,
    frame_stride: int | None = None,
    size: Sequence[int] | None = None,
    channels: int | None = None,
) -> np.ndarray:
    """A video file as ``(c, t, h, w)`` float32 in [0, 1].

    ``frames`` (default 8) frames are sampled uniformly over the clip (frame ``floor((i + 0.5) * n / frames)``
    of ``n``, so a clip shorter than ``frames`` repeats its frames evenly), or with ``frame_stride=k`` the
    frames ``0, k, 2k, ...`` (a clip too short for that is an error). Frames are scaled (bilinear) to
    ``size`` ``(h, w)`` (default: the clip's own), RGB unless ``channels=1`` (grayscale).
    """
    return to_float(read_video_bytes(path, frames, frame_stride=frame_stride, size=size, channels=channels))


def to_float(clip: np.ndarray) -> np.ndarray:
    """8-bit frames as float32 in [0, 1]."""
    return clip.astype(np.float32) / np.float32(255.0)


def read_video_bytes(
    path: str | os.PathLike[str],
    frames: int | None = None,
    *,
    frame_stride: int | None = None,
    size: Sequence[int] | None = None,
    channels: int | None = None,
) -> np.ndarray:
    """:func:`read_video`'s frames as decoded, ``(c, t, h, w)`` uint8 (a quarter of the bytes to pass around)."""
    p = Path(path)
    frames = DEFAULT_FRAMES if frames is None else int(frames)
    if frames < 1:
        raise DataError(f"frames must be at least 1, got {frames}")
    if frame_stride is not None and frame_stride < 1:
        raise DataError(f"frame_stride must be at least 1, got {frame_stride}")
    if channels not in (None, 1, 3):
        raise DataError(f"videos are read with 1 or 3 channels, not {channels}")
    fmt = "gray" if channels == 1 else "rgb24"
    av = _av(p)
    try:
        hw = tuple(int(s) for s in size) if size is not None else video_size(p)
        if len(hw) != 2 or min(hw) < 1:
            raise DataError(f"a video frame size is (h, w), got {tuple(hw)}")
        if frame_stride is not None:
            index = sample_indices(0, frames, frame_stride)
            got, n = _decode(av, p, set(index.tolist()), fmt, hw, last=int(index[-1]))
            if n <= index[-1]:
                raise DataError(
                    f"video {p} has {n} frames; {frames} frames with a frame stride of {frame_stride} need "
                    f"{int(index[-1]) + 1}; lower frames or frame_stride (--frames, --frame-stride)"
                )
        else:
            count = _count_frames(av, p)
            index = sample_indices(max(count, 1), frames)
            got, n = _decode(av, p, set(index.tolist()), fmt, hw, last=None)
            if n != count and n > 0:  # the container's count was wrong: sample the frames really there
                index = sample_indices(n, frames)
                if not set(index.tolist()) <= set(got):
                    got, n = _decode(av, p, set(index.tolist()), fmt, hw, last=None)
        if n == 0:
            raise DataError(f"video {p} holds no frames; remove or replace the file")
    except (av.FFmpegError, OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read video {p} ({err}); remove or replace the file") from None
    clip = np.stack([got[i] for i in index.tolist()])  # (t, h, w[, 3])
    return clip[None] if clip.ndim == 3 else np.ascontiguousarray(np.moveaxis(clip, -1, 0))


# ----------------------------------------------------------------------------------------------- volumes

# The common orientation as unit vectors in DICOM's patient axes (LPS: x to the left, y to the back, z to the
# head): depth goes to the head, height to the back, width to the patient's left.
_TARGET = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _reorient(vol: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``vol`` with its axes permuted and flipped to the common orientation; ``directions[a]``: axis a in LPS."""
    cos = directions @ _TARGET.T  # cos[a, t]: array axis a against target axis t
    score = np.abs(cos)
    perm = [0, 0, 0]
    for _ in range(3):  # the closest pairs first
        a, t = np.unravel_index(np.argmax(score), score.shape)
        perm[t] = int(a)
        score[a, :] = -1.0
        score[:, t] = -1.0
    out = np.transpose(vol, perm)
    flips = tuple(t for t in range(3) if cos[perm[t], t] < 0)
    return np.ascontiguousarray(np.flip(out, flips) if flips else out)


def _read_nifti(path: Path) -> np.ndarray:
    nib = _require("nibabel", f"reading {suffix(path)} volumes", extra="medical")
    import zlib

    try:
        img = nib.load(str(path))
        vol = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise DataError(f"cannot read volume {path} ({err}); remove or replace the file") from None
    if vol.ndim == 4 and vol.shape[3] == 1:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise DataError(f"volume {path} has shape {vol.shape}; expected one 3-D volume (x, y, z) per file")
    axes = affine[:3, :3].T * np.array([[-1.0, -1.0, 1.0]])  # row a: array axis a in LPS (NIfTI is RAS)
    norms = np.linalg.norm(axes, axis=1, keepdims=True)
    if np.all(norms > 1e-8):
        return _reorient(vol, axes / norms)
    return vol


def _read_dicom_series(folder: Path) -> np.ndarray:
    pydicom = _require("pydicom", "reading DICOM series", extra="medical")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == DICOM_SUFFIX)
    if not files:
        raise DataError(f"DICOM series folder {folder} holds no .dcm files")
    slices, positions, numbers, series, orientations = [], [], [], set(), set()
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
            pixels = np.asarray(ds.pixel_array, dtype=np.float32)
        except Exception as err:  # pydicom raises many kinds (InvalidDicomError, missing pixel handlers, ...)
            raise DataError(f"cannot read DICOM file {f} ({type(err).__name__}: {err}); remove or replace it") from None
        if pixels.ndim != 2:
            raise DataError(f"DICOM file {f} holds pixels shaped {pixels.shape}; expected one 2-D grayscale slice")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels * np.float32(slope) + np.float32(intercept))
        positions.append(getattr(ds, "ImagePositionPatient", None))
        iop = getattr(ds, "ImageOrientationPatient", None)
        orientations.add(None if iop is None else tuple(round(float(v), 4) for v in iop))
        numbers.append(getattr(ds, "InstanceNumber", None))
        series.add(getattr(ds, "SeriesInstanceUID", None))
    if len(series - {None}) > 1:
        raise DataError(f"DICOM folder {folder} holds {len(series - {None})} series; keep one series per folder")
    shapes = sorted({s.shape for s in slices})
    if len(shapes) > 1:
        raise DataError(f"the slices of DICOM series {folder} have different sizes {shapes}")
    directions = None
    if None not in positions and len(orientations) == 1 and None not in orientations:
        iop = np.array(next(iter(orientations)), dtype=np.float64)
        row, col = iop[:3], iop[3:]  # along a row (width), down a column (height)
        normal = np.cross(row, col)
        depth = np.array([float(np.dot(np.asarray(pos, dtype=np.float64), normal)) for pos in positions])
        order = np.argsort(depth, kind="stable")
        if len(np.unique(np.round(depth, 3))) != len(depth):
            raise DataError(
                f"DICOM series {folder} has {len(depth)} slices at {len(np.unique(np.round(depth, 3)))} positions; "
                "keep one series (one slice per position) per folder"
            )
        directions = np.stack([normal, col, row])
    elif None not in numbers:
        order = np.argsort(np.array([int(n) for n in numbers]), kind="stable")
    else:
        raise DataError(
            f"the slices of DICOM series {folder} carry neither ImagePositionPatient and ImageOrientationPatient "
            "nor InstanceNumber, so their order is unknown"
        )
    vol = np.stack([slices[i] for i in order])
    if directions is not None:
        norms = np.linalg.norm(directions, axis=1, keepdims=True)
        if np.all(norms > 1e-8):
            vol = _reorient(vol, directions / norms)
    return vol


def read_volume(path: str | os.PathLike[str], size: int | Sequence[int] | None = None) -> np.ndarray:
    """A NIfTI file or a DICOM series folder as ``(1, d, h, w)`` float32 raw intensities.

    ``size``: an int for a cube, ``(d, h, w)``, or None for the volume's own shape; other shapes are
    resampled trilinearly (voxel centres aligned, spacing not used).
    """
    p = Path(path)
    if p.is_dir():
        vol = _read_dicom_series(p)
    elif suffix(p) in VOLUME_SUFFIXES:
        vol = _read_nifti(p)
    else:
        raise DataError(f"{p} is neither a NIfTI file ({'/'.join(VOLUME_SUFFIXES)}) nor a folder of .dcm files")
    if size is not None:
        grid = (int(size),) * 3 if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        if len(grid) != 3 or min(grid) < 1:
            raise DataError(f"a volume size is an int or (d, h, w), got {size}")
        vol = resize(vol, grid)
    return vol.astype(np.float32, copy=False)[None]


# ----------------------------------------------------------------------------------------------- workers


def _idle_cpus() -> float:
    """The CPUs this process may use, less the system's load (its one-minute average, where there is one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        return cpus - os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        return float(cpus)


def default_workers(files: int, seconds_per_file: float) -> int:
    """Processes for decoding ``files`` more files that take ``seconds_per_file`` each in this process.

    Up to 4, as many as there are idle CPUs, when there are more than 8 files and decoding them here would take
    over 3 s; else 1 (this process). Starting the spawned processes and sending the frames back costs about a
    second, so more processes only pay for long decodes on CPUs that nothing else is using.
    """
    if files <= POOL_THRESHOLD or files * seconds_per_file <= POOL_MIN_SECONDS:
        return 1
    n = min(4, int(_idle_cpus()))
    return n if n >= 2 else 1


def map_files(
    read: Callable[[Path], np.ndarray], paths: Sequence[Path], workers: int | None = None, *, auto: bool = True
) -> list[np.ndarray]:
    """``[read(p) for p in paths]``, the files read by ``workers`` spawned processes when more than one.

    ``workers=None`` reads in this process, unless ``auto``: then the first two files are read here, the second
    timed, and the rest go to :func:`default_workers` processes. ``read`` must be picklable (a top-level function or a
    ``functools.partial`` of one); its errors reach the caller as raised (a :class:`DataError` naming the file).
    """
    if workers is not None and workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    if workers is None:
        if not auto or len(paths) <= POOL_THRESHOLD:
            return [read(p) for p in paths]
        first = read(paths[0])  # not timed: a process's first file also pays for loading the codecs
        start = time.perf_counter()
        second = read(paths[1])
        n = default_workers(len(paths) - 2, time.perf_counter() - start)
        return [first, second, *_pool(read, paths[2:], n)]
    return _pool(read, paths, int(workers))


def _pool(read: Callable[[Path], np.ndarray], paths: Sequence[Path], workers: int) -> list[np.ndarray]:
    n = min(workers, len(paths))
    if n <= 1:
        return [read(p) for p in paths]
    chunk = max(1, len(paths) // (n * 4))
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(read, paths, chunksize=chunk))
    except BrokenProcessPool as err:
        raise DataError(
            f"a process decoding data files stopped ({err}); read with one process (workers=1, `--workers 1`) "
            "to see which file fails (a script that reads with several must guard its entry point with "
            "`if __name__ == '__main__':`)"
        ) from None


def reader(kind: str, **options: Any) -> Callable[[Path], np.ndarray]:
    """A picklable reader of one file of ``kind`` with the given options: videos as uint8 (:func:`to_float`)."""
    return functools.partial(read_video_bytes if kind == "video" else read_volume, **options)
