"""Test fixtures of the spec's cases: hooks that build inputs and read outputs of models that do not take one
array per input. Cases name them with :class:`vit_parity.core.spec.HookRef`; nothing at runtime imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vit_parity.core import packing
from vit_parity.core.spec import Case, CaseHook

__all__ = ["ImagesAndLabels", "PackedImages"]


@dataclass(frozen=True)
class PackedImages(CaseHook):
    """Seeded images of the given ``sides`` packed into sequences of at most ``max_seq_len`` tokens.

    ``torch_call`` is how the torch model takes them: ``"groups"`` (a list of lists, the packed
    sequences), ``"group_images"`` (a flat list plus ``group_images=True, group_max_seq_len``) or
    ``"flat"`` (the nested-tensor models). ``groups`` fixes the grouping (default: the packer's;
    consecutive images, so that the input order is the order of the sequences); ``extra_seqs`` and
    ``extra_slots`` pad the flax batch with empty sequences and image slots.
    """

    sides: tuple[tuple[int, ...], ...]
    patch: tuple[int, ...]
    max_seq_len: int
    torch_call: str = "flat"
    channels: int = 3
    groups: tuple[tuple[int, ...], ...] | None = None
    extra_seqs: int = 0
    extra_slots: int = 0

    def __post_init__(self) -> None:
        if self.groups is not None and [i for g in self.groups for i in g] != list(range(len(self.sides))):
            raise ValueError(f"groups must hold consecutive images in order, got {self.groups}")
        if self.torch_call == "groups" and self.groups is None:
            raise ValueError('torch_call="groups" needs explicit groups')

    def images(self, seed: int) -> list[np.ndarray]:
        """Channels-first float32 images ``(c, *sides)``."""
        rng = np.random.default_rng(seed)
        return [rng.standard_normal((self.channels, *s), dtype=np.float32) for s in self.sides]

    def layout(self) -> packing.Packing:
        lengths = [math.prod(s // p for s, p in zip(side, self.patch)) for side in self.sides]
        if self.groups is not None:
            return packing.grouped(self.groups, lengths, self.max_seq_len)
        return packing.pack(lengths, self.max_seq_len)

    def sample(self, case: Case, backend: str, seed: int) -> tuple[Any, ...]:
        images = self.images(seed)
        if backend == "flax":
            layout = self.layout()
            batch = packing.pack_images(
                [np.moveaxis(im, 0, -1) for im in images], patch_size=self.patch, group_max_seq_len=self.max_seq_len,
                max_images=layout.max_images + self.extra_slots, num_seqs=len(layout.groups) + self.extra_seqs,
                groups=layout.groups, axis_names=("frames", "height", "width")[-len(self.patch) :],
            )  # fmt: skip
            return batch.arrays
        if self.torch_call == "groups":
            return ([[images[i] for i in group] for group in self.layout().groups],)
        if self.torch_call == "group_images":
            return (images, True, self.max_seq_len)
        return (images,)

    def logits(self, case: Case, backend: str, inputs: tuple[Any, ...], out: Any) -> Any:
        if backend == "flax":
            seq, slot = self.layout().slots()
            return out[seq, slot]
        return out

    def feature(self, case: Case, backend: str, inputs: tuple[Any, ...], label: str, value: Any) -> Any:
        if label == "pre_logits":  # pooled per image, like the logits
            return self.logits(case, backend, inputs, value)
        if backend == "torch" and self.torch_call == "flat":
            return value.values()  # jagged: the images' tokens one after the other
        s, n = value.shape[:2]
        return value.reshape(s * n, *value.shape[2:])[self.layout().token_index(n)]


@dataclass(frozen=True)
class ImagesAndLabels(CaseHook):
    """A seeded image batch (the case's first input, in the backend's layout) and integer class labels in
    ``[0, num_classes)``, one per image: the inputs of a wrapper that computes a supervised loss (distillation)."""

    num_classes: int

    def sample(self, case: Case, backend: str, seed: int) -> tuple[Any, ...]:
        img = case.inputs[0]
        labels = np.random.default_rng(seed + 1).integers(0, self.num_classes, img.sizes["b"])
        return img.to_backend(img.sample(seed), backend), labels
