"""Spec entries of NaViT: packed sequences of images (and videos) of different sizes.

torch takes lists of images (lists of lists for the masked model, or a flat list it groups itself;
a flat list for the nested-tensor models), flax takes the packed arrays of ``vit_parity.core.packing``.
The ``PackedImages`` hook (``vit_parity.tools.fixtures``) builds both from the same seeded images and
grouping, and reads back per-image logits and the real tokens of every block, images in input order.
"""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, HookRef, Input, register

PACKED = "vit_parity.tools.fixtures:PackedImages"


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
                HookRef.to(PACKED, sides=_SIDES, patch=(8, 8), max_seq_len=24, torch_call="group_images", extra_seqs=1),
            ),
            Case(
                "lists",
                _CONFIG_2D,
                _images(6, _SIDES),
                ("n", 10),
                HookRef.to(
                    PACKED,
                    sides=_SIDES,
                    patch=(8, 8),
                    max_seq_len=24,
                    torch_call="groups",
                    groups=((0, 1), (2, 3, 4), (5,)),
                    extra_slots=1,
                ),  # fmt: skip,
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
                HookRef.to(PACKED, sides=_SIDES, patch=(8, 8), max_seq_len=24, extra_seqs=1),
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
                HookRef.to(PACKED, sides=_VIDEO_SIDES, patch=(2, 8, 8), max_seq_len=10, extra_seqs=1),
            ),
        ),
        mirror=False,
    )
)
