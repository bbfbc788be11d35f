"""Spec entries of NaViT: packed sequences of images (and videos) of different sizes.

torch takes lists of images (lists of lists for the masked model, or a flat list it groups itself;
a flat list for the nested-tensor models), flax takes the packed arrays of ``vit_parity.packing``.
The :class:`PackedImages` hook builds both from the same seeded images and grouping, and reads
back per-image logits and the real tokens of every block, images in input order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vit_parity import packing
from vit_parity.spec import ArchSpec, Case, CaseHook, Input, register


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

    def tokens(self, case: Case, backend: str, inputs: tuple[Any, ...], block: Any) -> Any:
        if backend == "torch" and self.torch_call == "flat":
            return block.values()  # jagged: the images' tokens one after the other
        s, n = block.shape[:2]
        return block.reshape(s * n, *block.shape[2:])[self.layout().token_index(n)]


def _images(n: int, sides: tuple[tuple[int, ...], ...], c: int = 3) -> tuple[Input, ...]:
    """Describes ``n`` images (the largest sides) for the output shape; the hook builds the real inputs."""
    axes = ("t", "h", "w")[-len(sides[0]) :]
    biggest = {a: max(s[i] for s in sides) for i, a in enumerate(axes)}
    return (Input("images", "n c " + " ".join(axes), {"n": n, "c": c, **biggest}),)


# one block: NaViT compiles about twice the graph of a ViT of the same size, and flax tests pay per compile
_SMALL = dict(num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
# 16, 8, 3, 8, 1, 3 tokens of 8x8. Every 2-D case has the same config and packs them in the same flax
# shapes (3 sequences of 24 tokens, 4 image slots, some empty), so that flax compiles once for all.
_CONFIG_2D = dict(_SMALL, image_size=32, patch_size=8, dropout=0.1, emb_dropout=0.1, token_dropout_prob=0.25)
_SIDES = ((32, 32), (16, 32), (8, 24), (32, 16), (8, 8), (24, 8))
_VIDEO_SIDES = ((4, 16, 16), (2, 8, 24), (4, 8, 8), (2, 16, 8))  # 8, 3, 2, 2 tokens of 2x8x8

register(
    ArchSpec(
        name="navit",
        torch="vit_torch.na_vit:NaViT",
        flax="vit_flax.na_vit:NaViT",
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023)",
        cases=(
            Case(
                "grouped",
                _CONFIG_2D,
                _images(6, _SIDES),
                ("n", 10),
                PackedImages(_SIDES, (8, 8), 24, "group_images", extra_seqs=1),
            ),
            Case(
                "lists",
                _CONFIG_2D,
                _images(6, _SIDES),
                ("n", 10),
                PackedImages(_SIDES, (8, 8), 24, "groups", groups=((0, 1), (2, 3, 4), (5,)), extra_slots=1),
            ),
        ),
    )
)

register(
    ArchSpec(
        name="navit_nested",
        torch="vit_torch.na_vit_nested_tensor:NaViT",
        flax="vit_flax.na_vit:NaViT",
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023)",
        cases=(
            Case(
                "jagged",
                _CONFIG_2D,
                _images(6, _SIDES),
                ("n", 10),
                PackedImages(_SIDES, (8, 8), 24, extra_seqs=1),
            ),
        ),
        mirror=False,
    )
)

register(
    ArchSpec(
        name="navit_nested_3d",
        torch="vit_torch.na_vit_nested_tensor_3d:NaViT",
        flax="vit_flax.na_vit_3d:NaViT",
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023)",
        cases=(
            Case(
                "videos",
                dict(
                    _SMALL,
                    depth=1,
                    image_size=(16, 24),
                    max_frames=4,
                    patch_size=8,
                    frame_patch_size=2,
                    emb_dropout=0.1,
                ),
                _images(4, _VIDEO_SIDES),
                ("n", 10),
                PackedImages(_VIDEO_SIDES, (2, 8, 8), 10, extra_seqs=1),
            ),
        ),
        mirror=False,
    )
)
