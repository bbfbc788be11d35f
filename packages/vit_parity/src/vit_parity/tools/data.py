"""Datasets that need no download, in numpy: channels-first float32 samples, integer labels, class names.

- ``digits``: the 8x8 handwritten digits that ship inside scikit-learn, upsampled to ``size``;
- ``digits-video``: clips of one of those digits moving across the frame, label the digit;
- ``shapes-volume``: noisy 3-D volumes of solid shapes (sphere, cube, cylinder, cone, torus), label the shape;
- a folder of class sub-folders holding one kind of sample: images (PNG/JPEG, read with Pillow), ``.npy``
  arrays, videos (``.mp4``, ``.avi``, ``.webm``, ``.mov``, read with PyAV) or volumes (NIfTI ``.nii`` /
  ``.nii.gz`` files read with nibabel, and DICOM series: sub-folders of ``.dcm`` slices read with pydicom).
  Videos and volumes are read by :mod:`vit_parity.tools.media`, which says how frames are sampled and how
  volumes are ordered and resampled.

Everything here is deterministic for a seed and framework-free: the backends take these arrays
(``(n, c, h, w)`` images, ``(n, c, t, h, w)`` videos and ``(n, 1, d, h, w)`` volumes) and move the channel
axis if they need to. Raw values lie in ``[0, 1]`` (images, videos and generated data) or are taken as stored
(``.npy``, volumes' intensities); :class:`Preprocess` holds what turns a raw sample into a model input, and
travels in checkpoints. Folder files are decoded up front, in worker processes for large folders of videos
or volumes (``workers``). The readers' libraries are optional and imported only when needed: scikit-learn
and Pillow (``pip install 'vit-parity[data]'``), PyAV (``[video]``), nibabel and pydicom (``[medical]``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUILTIN",
    "DataError",
    "Dataset",
    "Preprocess",
    "accepted_inputs",
    "digits",
    "digits_video",
    "folder",
    "load",
    "read_sample",
    "resize",
    "shapes_volume",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")


class DataError(ValueError):
    """Data that cannot be read or used; the message says what to do about it."""


def _require(module: str, feature: str, *, extra: str = "data", package: str | None = None) -> Any:
    """Import ``module`` for ``feature``, or raise a :class:`DataError` naming the pip extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        pip_name = {"sklearn": "scikit-learn", "PIL": "pillow"}.get(top, top)
        if extra == "data":
            raise DataError(
                f"{feature} needs {pip_name}; install it with `pip install {pip_name}` "
                "(or `pip install 'vit-parity[data]'`)"
            ) from None
        raise DataError(
            f"{feature} needs {package or pip_name}; install it with `pip install 'vit-parity[{extra}]'` "
            f"(or `pip install {pip_name}`)"
        ) from None


@dataclass
class Dataset:
    """Samples ``x`` of shape ``(n, c, *spatial)`` (float32), labels ``y`` (int64) and the class names."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim not in (4, 5):
            raise DataError(
                f"dataset {self.name!r}: samples must be (n, c, h, w) or (n, c, t, h, w), got {self.x.shape}"
            )
        if len(self.x) != len(self.y):
            raise DataError(f"dataset {self.name!r}: {len(self.x)} samples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def size(self) -> tuple[int, ...]:
        """The spatial size: ``(h, w)`` for images, ``(t, h, w)`` for videos and volumes."""
        return tuple(int(s) for s in self.x.shape[2:])

    @property
    def axes(self) -> str:
        """The torch-layout axes of a batch, as the spec names them."""
        return "b c h w" if self.x.ndim == 4 else "b c t h w"

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.x[index], self.y[index], self.classes, self.name, dict(self.info))

    def split(self, eval_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A stratified (train, eval) split: ``eval_fraction`` of every class, chosen by ``seed``."""
        if not 0.0 <= eval_fraction < 1.0:
            raise DataError(f"eval fraction must be in [0, 1), got {eval_fraction}")
        rng = np.random.default_rng(seed)
        train, held = [], []
        for c in range(len(self.classes)):
            idx = np.flatnonzero(self.y == c)
            idx = idx[rng.permutation(len(idx))]
            n_eval = round(len(idx) * eval_fraction)
            if eval_fraction > 0 and len(idx) > 1:
                n_eval = min(max(n_eval, 1), len(idx) - 1)
            held.append(idx[:n_eval])
            train.append(idx[n_eval:])
        return self.subset(np.sort(np.concatenate(train))), self.subset(np.sort(np.concatenate(held)))

    def limit(self, n: int | None, seed: int = 0) -> Dataset:
        """At most ``n`` samples, drawn evenly from the classes (for quick runs)."""
        if n is None or n >= len(self):
            return self
        order = np.random.default_rng(seed).permutation(len(self))
        # round-robin over classes so that every class keeps samples
        ranks = np.empty(len(self), dtype=np.int64)
        for c in range(len(self.classes)):
            idx = order[self.y[order] == c]
            ranks[idx] = np.arange(len(idx)) * len(self.classes) + c
        return self.subset(np.sort(np.argsort(ranks, kind="stable")[:n]))


# ---------------------------------------------------------------------------------------------- resizing


def resize(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Linear interpolation of the last ``len(size)`` axes of ``x`` to ``size`` (pixel-centre aligned)."""
    out = np.asarray(x, dtype=np.float32)
    n = len(size)
    for k, new in enumerate(size):
        axis = out.ndim - n + k
        old = out.shape[axis]
        if old == new:
            continue
        pos = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, old - 1)
        w = (pos - lo).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = new
        w = w.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------- built-in datasets


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    datasets = _require("sklearn.datasets", "the digits dataset")
    bunch = datasets.load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


_DIGIT_NAMES = tuple(str(d) for d in range(10))


def digits(size: int = 16) -> Dataset:
    """The 1797 handwritten 8x8 digits of scikit-learn, upsampled to ``size`` x ``size``, one channel."""
    images, labels = _digits_raw()
    x = resize(images, (size, size))[:, None]
    return Dataset(x, labels, _DIGIT_NAMES, "digits", {"size": size})


def digits_video(size: int = 16, frames: int = 8, seed: int = 0, glyph: int | None = None) -> Dataset:
    """Clips of ``frames`` frames in which one digit moves across a ``size`` x ``size`` frame.

    The digit (scaled to ``glyph`` pixels, by default three quarters of the frame but at least its
    native 8) starts at a random position with a random velocity of up to two pixels a frame and
    bounces off the edges; every digit image of the set makes one clip. Label: the digit.
    """
    images, labels = _digits_raw()
    glyph = glyph or min(size, max(8, size * 3 // 4))
    if glyph > size:
        raise DataError(f"digits-video needs a frame size of at least its digit's size {glyph}, got {size}")
    if glyph != 8:
        images = resize(images, (glyph, glyph))
    rng = np.random.default_rng(seed)
    room = size - glyph
    n = len(images)
    clips = np.zeros((n, 1, frames, size, size), dtype=np.float32)
    start = rng.integers(0, room + 1, size=(n, 2))
    velocity = rng.integers(-2, 3, size=(n, 2))
    velocity[(velocity == 0).all(axis=1), 0] = 1  # every digit moves
    for i in range(n):
        pos, vel = start[i].copy(), velocity[i].copy()
        for t in range(frames):
            clips[i, 0, t, pos[0] : pos[0] + glyph, pos[1] : pos[1] + glyph] = images[i]
            for a in range(2):  # bounce off the walls
                nxt = pos[a] + vel[a]
                if nxt < 0 or nxt > room:
                    vel[a] = -vel[a]
                    nxt = pos[a] + vel[a]
                pos[a] = min(max(nxt, 0), room)
    return Dataset(clips, labels, _DIGIT_NAMES, "digits-video", {"size": size, "frames": frames, "seed": seed})


def shapes_volume(size: int = 16, samples: int = 500, noise: float = 0.1, seed: int = 0) -> Dataset:
    """Volumes ``size``^3 holding one solid shape (random size, position, axis) plus Gaussian noise.

    Classes: sphere, cube, cylinder, cone, torus, in equal numbers. Values are clipped to ``[0, 1]``.
    """
    if size < 8:
        raise DataError(f"shapes-volume needs a size of at least 8, got {size}")
    rng = np.random.default_rng(seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # voxel centres in [-1, 1]
    coords = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"))  # (3, d, h, w)
    labels = np.arange(samples) % len(SHAPES)
    labels = labels[rng.permutation(samples)]
    x = np.empty((samples, 1, size, size, size), dtype=np.float32)
    for i, label in enumerate(labels):
        r = rng.uniform(0.35, 0.6)
        centre = rng.uniform(-0.9 + r, 0.9 - r, size=3)
        axis = rng.integers(3)
        p = coords - centre[:, None, None, None]
        along = p[axis] * (1 if rng.random() < 0.5 else -1)  # the shape's axis, random direction
        across = np.sqrt(sum(p[a] ** 2 for a in range(3) if a != axis))
        shape = SHAPES[label]
        if shape == "sphere":
            solid = np.sqrt((p**2).sum(axis=0)) <= r
        elif shape == "cube":
            solid = np.abs(p).max(axis=0) <= r * 0.8
        elif shape == "cylinder":
            solid = (across <= r * 0.7) & (np.abs(along) <= r)
        elif shape == "cone":
            solid = (np.abs(along) <= r) & (across <= r * (r - along) / (2 * r))
        else:  # torus in the plane across the axis
            solid = (across - r * 0.65) ** 2 + along**2 <= (r * 0.35) ** 2
        vol = solid.astype(np.float32) + rng.normal(0.0, noise, size=solid.shape).astype(np.float32)
        x[i, 0] = np.clip(vol, 0.0, 1.0)
    info = {"size": size, "samples": samples, "noise": noise, "seed": seed}
    return Dataset(x, labels.astype(np.int64), SHAPES, "shapes-volume", info)


# ----------------------------------------------------------------------------------------------- folders


def _read_image(path: Path, mode: str | None, size: Sequence[int] | None) -> np.ndarray:
    """An image file as ``(c, h, w)`` float32 in [0, 1]; ``mode`` 'L' or 'RGB' (None: as stored)."""
    image_mod = _require("PIL.Image", "reading images")
    try:
        with image_mod.open(path) as img:
            img.load()
            if mode is None:
                mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            img = img.convert(mode)
            if size is not None and img.size != (size[-1], size[-2]):
                img = img.resize((size[-1], size[-2]), image_mod.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path} ({err}); remove or replace the file") from None
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read array {path} ({err}); remove or replace the file") from None


def _read_array(path: Path) -> np.ndarray:
    arr = _load_array(path)
    if not np.issubdtype(arr.dtype, np.number) or arr.ndim not in (2, 3, 4):
        raise DataError(
            f"array {path} has shape {arr.shape} and dtype {arr.dtype}; expected numbers shaped (h, w), "
            "(t, h, w) or (c, t, h, w)"
        )
    return arr.astype(np.float32)


def _image_mode(paths: Sequence[Path]) -> str:
    image_mod = _require("PIL.Image", "reading images")
    for p in paths:
        try:
            with image_mod.open(p) as img:
                if img.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    return "RGB"
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"cannot read image {p} ({err}); remove or replace the file") from None
    return "L"


_KIND_WORDS = {"image": "images", "array": ".npy arrays", "video": "videos", "volume": "volumes"}


def _sample_kind(path: Path) -> str | None:
    """The kind of sample a class folder's entry holds (None: not a sample)."""
    from vit_parity.tools import media

    if path.is_file():
        s = media.suffix(path)
        if s in IMAGE_SUFFIXES:
            return "image"
        if s in ARRAY_SUFFIXES:
            return "array"
    return media.kind_of(path)


def _grid(size: int | Sequence[int] | None, n: int) -> tuple[int, ...] | None:
    return None if size is None else (int(size),) * n if isinstance(size, (int, np.integer)) else tuple(size)


def folder(
    path: str | os.PathLike[str],
    size: int | Sequence[int] | None = None,
    *,
    channels: int | None = None,
    frames: int | None = None,
    frame_stride: int | None = None,
    workers: int | None = None,
) -> Dataset:
    """A folder of class sub-folders (sorted names are the classes) of images, ``.npy`` arrays, videos or volumes.

    Images are read with Pillow, as ``channels`` (1: grayscale, 3: RGB; default: one channel when
    every image is grayscale and three otherwise), resized to ``size`` (default: the first image's
    size). Arrays are single samples shaped ``(h, w)``, ``(t, h, w)`` (one channel) or ``(c, t, h, w)``;
    they are resized to ``size`` when it is given and must otherwise share one shape.

    Videos (``.mp4``, ``.avi``, ``.webm``, ``.mov``) give ``(c, t, h, w)`` in [0, 1]: ``frames`` frames (default 8)
    sampled uniformly over each clip, or every ``frame_stride``-th frame from the start; RGB unless
    ``channels=1``; frames scaled to ``size`` (an int, ``(h, w)`` or ``(t, h, w)``; default: the first clip's
    size). Volumes (``.nii``/``.nii.gz`` files, or sub-folders of ``.dcm`` slices, one DICOM series each) give
    ``(1, d, h, w)`` raw intensities resampled to ``size`` (an int for a cube or ``(d, h, w)``; default: the
    first volume's shape); see :mod:`vit_parity.tools.media`.

    Files are decoded up front, by ``workers`` spawned processes, results in file order. By default videos and
    volumes are decoded in this process unless there are more than 8 and the second one's time says the rest
    would take over 3 s here: then by up to 4 processes, as many as there are idle CPUs
    (:func:`vit_parity.tools.media.default_workers`).
    Images use processes only when ``workers`` asks for them; ``.npy`` arrays are always loaded here. A script
    that reads with several processes needs an ``if __name__ == "__main__":`` guard.
    """
    from vit_parity.tools import media

    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} not found; pass a folder of class sub-folders or one of {', '.join(BUILTIN)}"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data folder {root} has no class sub-folders; put each class's files in <folder>/<class>/")
    if len(class_dirs) < 2:
        raise DataError(f"data folder {root} has one class ({class_dirs[0].name}); a classifier needs at least two")
    files: list[tuple[Path, int, str]] = []
    for label, d in enumerate(class_dirs):
        found = [(p, _sample_kind(p)) for p in sorted(d.iterdir())]
        found = [(p, kind) for p, kind in found if kind is not None]
        if not found:
            known = "/".join(IMAGE_SUFFIXES + ARRAY_SUFFIXES + media.VIDEO_SUFFIXES + media.VOLUME_SUFFIXES)
            raise DataError(
                f"class folder {d} holds no {known} files or folders of .dcm files; add samples or remove it"
            )
        files += [(p, label, kind) for p, kind in found]
    kinds = {kind for _, _, kind in files}
    if len(kinds) > 1:
        words = [w for k, w in _KIND_WORDS.items() if k in kinds]
        raise DataError(
            f"data folder {root} mixes {', '.join(words[:-1])} and {words[-1]}; keep one kind of sample per folder"
        )
    kind = kinds.pop()
    if workers is not None and workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    paths = [p for p, _, _ in files]
    labels = np.array([label for _, label, _ in files], dtype=np.int64)
    info: dict[str, Any] = {"folder": str(root), "kind": kind}
    if kind == "image":
        if channels not in (None, 1, 3):
            raise DataError(f"images are read with 1 or 3 channels, not {channels}")
        mode = {1: "L", 3: "RGB"}.get(channels) if channels else _image_mode(paths)
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
        else:
            size = _read_image(paths[0], mode, None).shape[1:]
        x = np.stack(media.map_files(functools.partial(_read_image, mode=mode, size=size), paths, workers, auto=False))
    elif kind == "array":
        arrays = [_to_channels_first(_read_array(p)) for p in paths]
        if size is not None:
            n_spatial = arrays[0].ndim - 1
            size = (size,) * n_spatial if isinstance(size, int) else tuple(size)
            arrays = [resize(a, size) for a in arrays]
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise DataError(f"the arrays in {root} have different shapes {shapes}; give a size to resize them")
        x = np.stack(arrays)
    elif kind == "video":
        if channels not in (None, 1, 3):
            raise DataError(f"videos are read with 1 or 3 channels, not {channels}")
        grid = _grid(size, 2)
        if grid is not None and len(grid) == 3:  # (t, h, w)
            if frames is not None and frames != grid[0]:
                raise DataError(f"size {grid} asks for {grid[0]} frames but frames is {frames}")
            frames, grid = grid[0], grid[1:]
        if grid is not None and len(grid) != 2:
            raise DataError(f"a video size is an int, (h, w) or (t, h, w), got {size}")
        grid = grid or media.video_size(paths[0])
        read = media.reader("video", frames=frames, frame_stride=frame_stride, size=grid, channels=channels)
        x = media.to_float(np.stack(media.map_files(read, paths, workers)))
        info.update(frames=int(x.shape[2]), frame_stride=frame_stride)
    else:
        if channels not in (None, 1):
            raise DataError(f"volumes are read with one channel, not {channels}")
        grid = _grid(size, 3)
        rest = paths
        first: list[np.ndarray] = []
        if grid is None:  # the first volume's shape
            first = [media.read_volume(paths[0])]
            grid, rest = first[0].shape[1:], paths[1:]
        read = media.reader("volume", size=grid)
        x = np.stack(first + media.map_files(read, rest, workers))
    names = tuple(d.name for d in class_dirs)
    return Dataset(x.astype(np.float32, copy=False), labels, names, str(root), info)


def _to_channels_first(arr: np.ndarray) -> np.ndarray:
    return arr[None] if arr.ndim in (2, 3) else arr


BUILTIN = ("digits", "digits-video", "shapes-volume")


def load(
    name: str,
    *,
    size: int | Sequence[int] | None = None,
    frames: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    channels: int | None = None,
    frame_stride: int | None = None,
    workers: int | None = None,
) -> Dataset:
    """A built-in dataset by name (``digits``, ``digits-video``, ``shapes-volume``) or a data folder.

    ``size`` is the side of the generated frames/volumes (folders: the resize target, an int or a
    tuple), ``frames`` the clip length of ``digits-video`` and of folder videos, ``samples`` the number of
    volumes of ``shapes-volume``, ``seed`` the generator's seed and ``channels`` how to read folder images
    and videos; ``frame_stride`` and ``workers`` go to :func:`folder`.
    """
    if name in BUILTIN and size is not None and not isinstance(size, int):
        size = int(size[-1])
    if name == "digits":
        return digits(size or 16)
    if name == "digits-video":
        return digits_video(size or 16, frames or 8, seed=seed)
    if name == "shapes-volume":
        return shapes_volume(size or 16, samples=samples or 500, seed=seed)
    return folder(name, size, channels=channels, frames=frames, frame_stride=frame_stride, workers=workers)


# ----------------------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """What turns a raw sample into a model input: its spatial size, channels and per-channel normalisation."""

    size: tuple[int, ...]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, data: Dataset) -> Preprocess:
        """Per-channel mean and standard deviation of ``data``."""
        axes = (0, *range(2, data.x.ndim))
        mean = data.x.mean(axis=axes, dtype=np.float64)
        std = data.x.std(axis=axes, dtype=np.float64)
        std = np.where(std > 1e-6, std, 1.0)
        return cls(data.size, data.channels, tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalise a batch ``(n, c, *size)`` of raw samples, resizing them first if their size differs."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != len(self.size) + 2 or x.shape[1] != self.channels:
            raise DataError(
                f"samples shaped {tuple(x.shape[1:])} do not fit this model, which takes "
                f"{(self.channels, *self.size)} (channels first)"
            )
        if tuple(x.shape[2:]) != self.size:
            x = resize(x, self.size)
        shape = (1, self.channels) + (1,) * len(self.size)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return (x - mean) / std

    def to_json(self) -> dict[str, Any]:
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Preprocess:
        try:
            return cls(tuple(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))
        except (KeyError, TypeError) as err:
            raise DataError(f"the checkpoint's preprocessing record is incomplete ({err!r})") from None


def accepted_inputs(pre: Preprocess) -> str:
    """What :func:`read_sample` takes for a model with preprocessing ``pre``, in words (for error messages)."""
    from vit_parity.tools import media

    shape = (pre.channels, *pre.size)
    arrays = f".npy arrays shaped {shape} (channels first)"
    if pre.channels == 1:
        arrays += f" or {tuple(pre.size)}"
    arrays += ", other sizes resized"
    if len(pre.size) == 2 and pre.channels in (1, 3):
        return f"{'/'.join(IMAGE_SUFFIXES)} images or {arrays}"
    files = []
    if len(pre.size) == 3 and pre.channels in (1, 3):
        files.append(f"{'/'.join(media.VIDEO_SUFFIXES)} videos ({pre.size[0]} frames sampled uniformly)")
    if len(pre.size) == 3 and pre.channels == 1:
        files.append(f"{'/'.join(media.VOLUME_SUFFIXES)} volumes, folders of .dcm slices (a DICOM series)")
    return ", ".join(files) + f" or {arrays}" if files else arrays


def read_sample(path: str | os.PathLike[str], pre: Preprocess) -> np.ndarray:
    """One raw sample file (image, ``.npy``, video, volume) as ``(c, *pre.size)`` float32, ready for ``pre(...)``.

    Images are converted to the checkpoint's channels (grayscale or RGB) and resized; arrays are
    ``(*spatial)`` for one channel or ``(c, *spatial)`` and are resized to ``pre.size``. Videos give
    ``pre.size[0]`` frames sampled uniformly, scaled to ``pre.size[1:]``; volumes (a NIfTI file or a folder
    of ``.dcm`` slices) are resampled to ``pre.size``. Every error names the file and what this model
    accepts (:func:`accepted_inputs`).
    """
    from vit_parity.tools import media

    p = Path(path)
    if not p.is_file() and not media.is_dicom_series(p):
        raise DataError(f"input file {p} not found" + (" (a folder, but without .dcm files)" if p.is_dir() else ""))
    suffix = media.suffix(p)
    shape = (pre.channels, *pre.size)
    accepts = f"this checkpoint accepts {accepted_inputs(pre)}"
    if suffix in IMAGE_SUFFIXES:
        if len(pre.size) != 2 or pre.channels not in (1, 3):
            raise DataError(f"{p} is an image but the model takes samples shaped {shape}; {accepts}")
        return _read_image(p, "L" if pre.channels == 1 else "RGB", pre.size)
    if suffix in ARRAY_SUFFIXES:
        arr = _load_array(p)
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"array {p} holds {arr.dtype}, not numbers; {accepts}")
        if arr.ndim == len(pre.size) and pre.channels == 1:
            arr = arr[None]
        if arr.ndim != len(pre.size) + 1 or arr.shape[0] != pre.channels:
            raise DataError(f"array {p} has shape {arr.shape}; the model takes {shape}; {accepts}")
        return resize(arr.astype(np.float32), pre.size)
    kind = media.kind_of(p)
    if kind == "video":
        if len(pre.size) != 3 or pre.channels not in (1, 3):
            raise DataError(f"{p} is a video but the model takes samples shaped {shape}; {accepts}")
        return _named(p, accepts, media.read_video, p, pre.size[0], size=pre.size[1:], channels=pre.channels)
    if kind == "volume":
        if len(pre.size) != 3 or pre.channels != 1:
            raise DataError(f"{p} is a volume but the model takes samples shaped {shape}; {accepts}")
        return _named(p, accepts, media.read_volume, p, pre.size)
    raise DataError(f"{p}: unsupported file type {suffix!r}; {accepts}")


def _named(path: Path, accepts: str, read: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    """``read(*args, **kwargs)``, its errors naming ``path`` and what the checkpoint accepts."""
    try:
        return read(*args, **kwargs)
    except DataError as err:
        msg = str(err)
        raise DataError((msg if str(path) in msg else f"{path}: {msg}") + f"; {accepts}") from None
