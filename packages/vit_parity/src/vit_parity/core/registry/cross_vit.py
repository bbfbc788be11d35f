"""Spec entry of CrossViT: two branches on small and large patches that exchange class tokens."""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_SMALL = dict(
    num_classes=10, sm_enc_depth=1, sm_enc_heads=2, sm_enc_mlp_dim=32, sm_enc_dim_head=8, lg_enc_depth=1,
    lg_enc_heads=2, lg_enc_mlp_dim=32, lg_enc_dim_head=8, cross_attn_heads=2, cross_attn_dim_head=8,
)  # fmt: skip
# different widths (the class tokens are projected), one of everything, embedding dropout only (each dropout site
# costs flax seconds of compile time; the torch tests train with dropout everywhere)
_PROJECTED = dict(
    _SMALL, image_size=16, sm_dim=16, lg_dim=24, sm_patch_size=4, lg_patch_size=8, cross_attn_depth=1, depth=1,
    dropout=0.0, emb_dropout=0.1,
)  # fmt: skip
# equal widths (no projection), two multi-scale blocks of two cross-attention rounds, rectangular patches, no
# dropout; run on a smaller one-channel image
_SAME_WIDTH = dict(
    _SMALL, image_size=(16, 8), sm_dim=16, lg_dim=16, sm_patch_size=(4, 2), lg_patch_size=(8, 4), cross_attn_depth=2,
    depth=2, dropout=0.0, emb_dropout=0.0, channels=1,
)  # fmt: skip

register(
    ArchSpec(
        name="cross_vit",
        torch="vit_torch.cross_vit:CrossViT",
        flax="vit_flax.cross_vit:CrossViT",
        paper="CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification (Chen et al., 2021)",
        cases=(
            Case("projected", _PROJECTED, (image(h=16, w=16),), ("b", 10)),
            Case("same-width-smaller-input", _SAME_WIDTH, (image(c=1, h=8, w=8),), ("b", 10)),
        ),
    )
)
