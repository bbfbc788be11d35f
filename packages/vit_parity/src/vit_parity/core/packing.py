"""Sequence packing for NaViT ("Patch n' Pack", Dehghani et al., 2023), framework-free (numpy only).

Images of any resolution and aspect ratio become variable-length token sequences; several of them
share one sequence of at most ``group_max_seq_len`` tokens and attend only within themselves.

- :func:`check_image` validates one image's shape with errors naming its index and the limit.
- :func:`pack` groups token counts by first-fit decreasing and reports the fraction of real tokens.
- :func:`pack_images` cuts images into patches and lays them out in arrays of static shape
  (patches, segment ids, patch coordinates, image ids), which is what the Flax model takes.

Both backends use the same grouping and the same layout, so the same images give the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PackedBatch",
    "Packing",
    "check_image",
    "check_images",
    "keep_masks",
    "num_keep",
    "pack",
    "pack_images",
    "patch_coords",
    "patchify",
    "token_dropout_fn",
]

TokenDropout = float | Callable[..., float] | None


# Drop probabilities count in steps of 1 / DROP_STEPS, so that the kept count is integer arithmetic:
# the same in numpy and in a compiled graph (in floats, 10 * (1 - 0.8) is 1.9999999999999996).
DROP_STEPS = 10_000


def num_keep(n: Any, prob: Any, xp: Any = np) -> Any:
    """How many of an image's ``n`` tokens token dropout keeps at drop probability ``prob`` (at least one):
    ``floor(n * (1 - prob))`` with ``prob`` rounded to 1e-4, in integers. ``n`` and ``prob`` may be
    arrays of the array module ``xp`` (numpy, or ``jax.numpy`` inside a compiled graph)."""
    dropped = xp.round(xp.asarray(prob, dtype=xp.float32) * DROP_STEPS).astype(xp.int32)
    kept = (xp.asarray(n).astype(xp.int32) * (DROP_STEPS - dropped)) // DROP_STEPS
    out = xp.maximum(1, kept)
    return int(out) if xp is np and out.ndim == 0 else out


def token_dropout_fn(token_dropout_prob: TokenDropout) -> Callable[..., float] | None:
    """``token_dropout_prob`` as a function of the image's sides, or None when there is no token dropout.

    A number is a constant probability in ``[0, 1)``; a callable takes the sides (``height, width``
    or ``frames, height, width``) and returns the probability for that image.
    """
    if token_dropout_prob is None:
        return None
    if callable(token_dropout_prob):
        return token_dropout_prob
    if isinstance(token_dropout_prob, bool) or not isinstance(token_dropout_prob, (int, float)):
        raise TypeError(f"token_dropout_prob must be a number or a callable, got {token_dropout_prob!r}")
    prob = float(token_dropout_prob)
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"token_dropout_prob must be in [0, 1), got {prob}")
    return None if prob == 0.0 else ConstantDropout(prob)


@dataclass(frozen=True)
class ConstantDropout:
    """The same token-dropout probability for every image (compares by value, so compiled models can share it)."""

    prob: float

    def __call__(self, *sides: Any) -> float:
        return self.prob


def check_image(
    shape: Sequence[int],
    index: int,
    *,
    channels: int,
    channels_last: bool,
    max_size: Sequence[int],
    patch: Sequence[int],
    axis_names: Sequence[str] = ("height", "width"),
    name: str = "images",
) -> tuple[int, ...]:
    """Validate the shape of one unbatched image (``c, *sides`` or ``*sides, c``); return its sides.

    Errors name the image (``images[3]``), the offending side and the limit it breaks.
    """
    n = len(axis_names)
    layout = " ".join([*axis_names, "c"] if channels_last else ["c", *axis_names])
    shape = tuple(int(s) for s in shape)
    where = f"{name}[{index}]"
    if len(shape) != n + 1:
        raise ValueError(f"{where} must be a {n + 1}-D array ({layout}), got shape {shape}")
    c = shape[-1] if channels_last else shape[0]
    sides = shape[:-1] if channels_last else shape[1:]
    if c != channels:
        raise ValueError(f"{where} must have channels={channels} ({layout}), got {c} in shape {shape}")
    for axis, s, limit, p in zip(axis_names, sides, max_size, patch):
        if s > limit:
            raise ValueError(f"{where} {axis} {s} is larger than the model's maximum {limit} (shape {shape})")
        if s <= 0 or s % p:
            raise ValueError(f"{where} {axis} {s} must be a positive multiple of the patch size {p} (shape {shape})")
    return sides


def check_images(shapes: Sequence[Sequence[int]], **kwargs: Any) -> list[tuple[int, ...]]:
    """:func:`check_image` on every shape; an empty list is an error too."""
    name = kwargs.get("name", "images")
    if len(shapes) == 0:
        raise ValueError(f"{name} is empty: give at least one image")
    return [check_image(s, i, **kwargs) for i, s in enumerate(shapes)]


def _first_fit_decreasing(lengths: Sequence[int], max_seq_len: int, max_images: int | None) -> list[list[int]]:
    """Bins of item indices: items by decreasing length, each into the first bin where it fits.

    A max-tree over the bins' free space finds the first bin with room in O(log n).
    """
    size = 1
    while size < len(lengths):
        size *= 2
    free = [max_seq_len] * size  # unopened bins are empty bins
    tree = [max_seq_len] * (2 * size)  # tree[size + b] = free space of bin b, internal nodes the max
    count = [0] * size
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need, node = lengths[i], 1
        while node < size:  # descend to the leftmost leaf with room
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        count[b] += 1
        free[b] -= need
        tree[node] = free[b] if max_images is None or count[b] < max_images else -1
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return [sorted(b) for b in bins]


@dataclass(frozen=True)
class Packing:
    """Images grouped into sequences: ``groups[s]`` lists the (input) indices of the images of sequence ``s``.

    In a sequence, images sit in the order of ``groups[s]``, each image's tokens contiguous, padding last.
    """

    groups: tuple[tuple[int, ...], ...]
    lengths: tuple[int, ...]
    max_seq_len: int

    @property
    def num_images(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.lengths))

    @property
    def max_images(self) -> int:
        """The largest number of images in one sequence."""
        return max(len(g) for g in self.groups)

    @property
    def longest(self) -> int:
        """The longest sequence's number of real tokens."""
        return max(sum(self.lengths[i] for i in g) for g in self.groups)

    @property
    def fill(self) -> float:
        """Fraction of real (non-padding) tokens when every sequence is padded to ``max_seq_len``."""
        return self.num_tokens / (len(self.groups) * self.max_seq_len)

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sequence, slot)`` of every image, in input order."""
        seq = np.empty(self.num_images, np.int64)
        slot = np.empty(self.num_images, np.int64)
        for s, group in enumerate(self.groups):
            for j, i in enumerate(group):
                seq[i], slot[i] = s, j
        return seq, slot

    def token_index(self, seq_len: int) -> np.ndarray:
        """Flat positions ``s * seq_len + offset`` of every real token, images in input order."""
        starts = np.empty(self.num_images, np.int64)
        for s, group in enumerate(self.groups):
            offset = s * seq_len
            for i in group:
                starts[i] = offset
                offset += self.lengths[i]
        lengths = np.asarray(self.lengths, np.int64)
        return np.repeat(starts, lengths) + _ranges(lengths)

    def segment_ids(self, seq_len: int) -> np.ndarray:
        """``(num_sequences, seq_len)`` int32: 0 on padding, ``j + 1`` on the tokens of a sequence's ``j``-th image."""
        out = np.zeros(len(self.groups) * seq_len, np.int32)
        _, slot = self.slots()
        out[self.token_index(seq_len)] = np.repeat(slot + 1, self.lengths)
        return out.reshape(len(self.groups), seq_len)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(n) for n in lengths)``."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def pack(
    lengths: Sequence[int],
    max_seq_len: int,
    *,
    max_images: int | None = None,
    name: str = "group_max_seq_len",
) -> Packing:
    """Group images of ``lengths`` tokens into sequences of at most ``max_seq_len`` tokens.

    Greedy first-fit decreasing: the longest image first, each into the first sequence with room
    (and fewer than ``max_images`` images). An image longer than ``max_seq_len`` is an error naming
    its index and the limit.
    """
    lengths = tuple(int(n) for n in lengths)
    if not lengths:
        raise ValueError("images is empty: give at least one image")
    if max_seq_len < 1:
        raise ValueError(f"{name} must be a positive int, got {max_seq_len}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive int, got {max_images}")
    for i, n in enumerate(lengths):
        if n > max_seq_len:
            raise ValueError(f"images[{i}] has {n} tokens, more than {name}={max_seq_len}")
    groups = _first_fit_decreasing(lengths, max_seq_len, max_images)
    return Packing(tuple(tuple(g) for g in groups), lengths, max_seq_len)


def grouped(groups: Sequence[Sequence[int]], lengths: Sequence[int], max_seq_len: int | None = None) -> Packing:
    """A :class:`Packing` of images already grouped by the caller (``groups`` of input indices)."""
    lengths = tuple(int(n) for n in lengths)
    longest = max((sum(lengths[i] for i in g) for g in groups), default=0)
    return Packing(tuple(tuple(g) for g in groups), lengths, max_seq_len or longest)


def patchify(image: np.ndarray, patch: Sequence[int], *, channels_last: bool) -> np.ndarray:
    """One image ``(c, *sides)`` or ``(*sides, c)`` to ``(n_patches, prod(patch) * c)``.

    Patches in row-major grid order, each flattened as ``(*patch, c)``: the order of both backends' ``patchify``.
    """
    image = np.asarray(image)
    if not channels_last:
        image = np.moveaxis(image, 0, -1)
    *sides, c = image.shape
    n = len(patch)
    split: list[int] = []
    for s, p in zip(sides, patch):
        split += [s // p, p]
    order = [*range(0, 2 * n, 2), *range(1, 2 * n, 2), 2 * n]
    return image.reshape(*split, c).transpose(order).reshape(-1, c * math.prod(patch))


def patch_coords(grid: Sequence[int]) -> np.ndarray:
    """``(prod(grid), len(grid))`` int32 coordinates of every patch of ``grid``, row-major."""
    mesh = np.meshgrid(*[np.arange(g, dtype=np.int32) for g in grid], indexing="ij")
    return np.stack(mesh, axis=-1).reshape(-1, len(grid))


def keep_masks(
    grids: Sequence[Sequence[int]],
    token_dropout_prob: TokenDropout,
    rng: np.random.Generator,
    patch: Sequence[int],
) -> list[np.ndarray]:
    """Random token-dropout masks, one boolean array of each image's grid shape.

    Each image keeps :func:`num_keep` of its tokens, chosen uniformly; the probability may depend
    on the image's sides (``grid * patch``).
    """
    fn = token_dropout_fn(token_dropout_prob)
    masks = []
    for grid in grids:
        n = math.prod(grid)
        if fn is None:
            masks.append(np.ones(tuple(grid), bool))
            continue
        keep = np.zeros(n, bool)
        keep[rng.permutation(n)[: num_keep(n, fn(*(g * p for g, p in zip(grid, patch))))]] = True
        masks.append(keep.reshape(tuple(grid)))
    return masks


@dataclass(frozen=True)
class PackedBatch:
    """Images packed in arrays of static shape, what the Flax NaViT takes.

    - ``patches``: ``(num_seqs, max_seq_len, prod(patch) * c)`` float32, zeros on padding;
    - ``segment_ids``: ``(num_seqs, max_seq_len)`` int32, 0 on padding, ``j + 1`` on the ``j``-th image's tokens;
    - ``coords``: ``(num_seqs, max_seq_len, n_axes)`` int32 patch coordinates, 0 on padding;
    - ``image_ids``: ``(num_seqs, max_images)`` int32, the input index of the image in each slot, -1 if empty.
    """

    patches: np.ndarray
    segment_ids: np.ndarray
    coords: np.ndarray
    image_ids: np.ndarray
    packing: Packing

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The model's inputs: ``(patches, segment_ids, coords, image_ids)``."""
        return self.patches, self.segment_ids, self.coords, self.image_ids

    @property
    def fill(self) -> float:
        """Fraction of real tokens among all ``num_seqs * max_seq_len`` slots."""
        return self.packing.num_tokens / self.segment_ids.size

    def unpack(self, out: Any) -> Any:
        """Per-slot outputs ``(num_seqs, max_images, ...)`` to per-image outputs ``(num_images, ...)``, input order.

        Works on numpy, JAX and torch arrays (and inside ``jit``: the indices are constants).
        """
        seq, slot = self.packing.slots()
        return out[seq, slot]

    def tokens(self, x: Any) -> Any:
        """Per-token values ``(num_seqs, max_seq_len, ...)`` to the real tokens ``(num_tokens, ...)``, input order."""
        s, n = self.segment_ids.shape
        return x.reshape(s * n, *x.shape[2:])[self.packing.token_index(n)]


def pack_images(
    images: Sequence[Any],
    *,
    patch_size: Sequence[int],
    group_max_seq_len: int,
    max_images: int | None = None,
    num_seqs: int | None = None,
    channels_last: bool = True,
    channels: int | None = None,
    max_size: Sequence[int] | None = None,
    axis_names: Sequence[str] = ("height", "width"),
    keep: Sequence[Any] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> PackedBatch:
    """Cut ``images`` into patches and pack them into a :class:`PackedBatch` of static shape.

    ``max_images`` (images per sequence) and ``num_seqs`` fix the remaining shapes; by default they
    are what this batch needs, so give both to compile a model once for a stream of batches.
    ``keep`` (one boolean array per image, of its patch grid's shape) drops tokens before packing,
    which is how token dropout lets more images share a sequence. ``groups`` (input indices per
    sequence) replaces the first-fit decreasing grouping.
    """
    patch = tuple(patch_size)
    shapes = [tuple(np.shape(im)) for im in images]
    if channels is None:
        channels = shapes[0][-1 if channels_last else 0] if shapes else 0
    check_images(
        shapes, channels=channels, channels_last=channels_last, patch=patch, axis_names=axis_names,
        max_size=max_size or (math.inf,) * len(patch),
    )  # fmt: skip
    grids = [tuple(s // p for s, p in zip(sh[:-1] if channels_last else sh[1:], patch)) for sh in shapes]
    selects = _keep_indices(keep, grids)
    lengths = [math.prod(g) if k is None else len(k) for g, k in zip(grids, selects)]
    if groups is None:
        packing = pack(lengths, group_max_seq_len, max_images=max_images)
    else:
        packing = grouped(groups, lengths, group_max_seq_len)
        for s, group in enumerate(packing.groups):
            if sum(lengths[i] for i in group) > group_max_seq_len:
                raise ValueError(f"group {s} has more than group_max_seq_len={group_max_seq_len} tokens")
    m = max_images or packing.max_images
    if packing.max_images > m:
        raise ValueError(f"a sequence holds {packing.max_images} images, more than max_images={m}")
    s = len(packing.groups) if num_seqs is None else num_seqs
    if len(packing.groups) > s:
        raise ValueError(
            f"the images need {len(packing.groups)} sequences of group_max_seq_len={group_max_seq_len}, "
            f"more than num_seqs={s}"
        )
    seq_len = group_max_seq_len
    patch_dim = channels * math.prod(patch)
    flat_patches = np.zeros((s * seq_len, patch_dim), np.float32)
    flat_coords = np.zeros((s * seq_len, len(patch)), np.int32)
    index = packing.token_index(seq_len)
    tokens, coords = [], []
    for image, grid, k in zip(images, grids, selects):
        p, c = patchify(np.asarray(image, np.float32), patch, channels_last=channels_last), patch_coords(grid)
        tokens.append(p if k is None else p[k])
        coords.append(c if k is None else c[k])
    flat_patches[index] = np.concatenate(tokens)
    flat_coords[index] = np.concatenate(coords)
    segment_ids = np.zeros((s, seq_len), np.int32)
    segment_ids[: len(packing.groups)] = packing.segment_ids(seq_len)
    image_ids = np.full((s, m), -1, np.int32)
    for q, group in enumerate(packing.groups):
        image_ids[q, : len(group)] = group
    return PackedBatch(
        flat_patches.reshape(s, seq_len, patch_dim), segment_ids, flat_coords.reshape(s, seq_len, len(patch)),
        image_ids, packing,
    )  # fmt: skip


def _keep_indices(keep: Sequence[Any] | None, grids: Sequence[tuple[int, ...]]) -> list[np.ndarray | None]:
    """Indices of the kept tokens of every image (None: all), checking each mask against its grid."""
    if keep is None:
        return [None] * len(grids)
    if len(keep) != len(grids):
        raise ValueError(f"keep must hold one mask per image: {len(keep)} masks for {len(grids)} images")
    out: list[np.ndarray | None] = []
    for i, (k, grid) in enumerate(zip(keep, grids)):
        k = np.asarray(k)
        if k.shape != grid or k.dtype != bool:
            raise ValueError(
                f"keep[{i}] must be a boolean array of the image's patch grid {grid}, got {k.dtype} {k.shape}"
            )
        if not k.any():
            raise ValueError(f"keep[{i}] drops every token of images[{i}]; keep at least one")
        out.append(np.flatnonzero(k))
    return out
