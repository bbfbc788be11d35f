"""Spec entry of the ViT with a patch merger."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(num_classes=10, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)
# merging after the last block (the final norm reads the merged tokens); a non-square image, one channel, one head
# as wide as the tokens (no output projection)
_LAST_RECT = dict(
    _SMALL, image_size=(16, 12), patch_size=4, patch_merge_layer=2, patch_merge_num_tokens=3, heads=1, dim_head=32,
    channels=1,
)  # fmt: skip

register(
    ArchSpec(
        name="vit_with_patch_merger",
        torch="vit_torch.vit_with_patch_merger:ViT",
        flax="vit_flax.vit_with_patch_merger:ViT",
        paper="Learning to Merge Tokens in Vision Transformers (Renggli et al., 2022)",
        cases=(
            # the default merge layer: half-way (after block 1 of 2), 16 patches merged into 4 tokens; dropout
            Case(
                "merge-mid-dropout",
                dict(_SMALL, image_size=16, patch_size=4, patch_merge_num_tokens=4, dropout=0.1, emb_dropout=0.1),
                (image(h=16, w=16),),
                ("b", 10),
            ),
            Case("merge-last-rect", _LAST_RECT, (image(c=1, h=16, w=12),), ("b", 10)),
        ),
    )
)
