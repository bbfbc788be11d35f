"""Spec entries of the video and volume models (inputs ``b c t h w``).

Cases stay few and small: every flax case compiles its own forward and backward pass.
"""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, register, video

_SMALL = dict(num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
_TUBELET = dict(image_size=16, frames=4, image_patch_size=8, frame_patch_size=2)  # non-cubic: 2 x 8 x 8

register(
    ArchSpec(
        name="vit_3d",
        torch="vit_torch.vit_3d:ViT",
        flax="vit_flax.vit_3d:ViT",
        paper="An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), on video tubelets",
        cases=(
            Case(
                "tubelet-2x8x8",
                dict(_SMALL, **_TUBELET, depth=2, dropout=0.1, emb_dropout=0.1),
                (video(t=4, h=16, w=16),),
                ("b", 10),
            ),
            Case(
                "cubic-4-mean",
                dict(_SMALL, image_size=8, frames=8, image_patch_size=4, frame_patch_size=4, pool="mean"),
                (video(t=8, h=8, w=8),),
                ("b", 10),
            ),
            Case(
                "shorter-clip-rect",
                dict(_SMALL, image_size=(16, 8), frames=6, image_patch_size=(8, 4), frame_patch_size=2, channels=1),
                (video(c=1, t=4, h=8, w=8),),
                ("b", 10),
            ),
        ),
    )
)

register(
    ArchSpec(
        name="simple_vit_3d",
        torch="vit_torch.simple_vit_3d:SimpleViT",
        flax="vit_flax.simple_vit_3d:SimpleViT",
        paper="Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), on video tubelets",
        cases=(
            Case(
                "shorter-clip",
                dict(_SMALL, image_size=16, frames=8, image_patch_size=8, frame_patch_size=2),
                (video(t=4, h=16, w=8),),
                ("b", 10),
            ),
        ),
    )
)

_VIVIT = dict(num_classes=10, dim=32, heads=2, mlp_dim=64, dim_head=16, spatial_depth=1, temporal_depth=1)

register(
    ArchSpec(
        name="vivit",
        torch="vit_torch.vivit:ViT",
        flax="vit_flax.vivit:ViT",
        paper="ViViT: A Video Vision Transformer (Arnab et al., 2021)",
        cases=(
            Case(
                "factorized-encoder-cls",
                dict(_VIVIT, **_TUBELET, temporal_depth=2, dropout=0.1, emb_dropout=0.1),
                (video(t=4, h=16, w=16),),
                ("b", 10),
            ),
            Case(
                "factorized-encoder-mean-shorter-clip",
                dict(_VIVIT, image_size=16, frames=8, image_patch_size=8, frame_patch_size=2, pool="mean"),
                (video(t=6, h=16, w=8),),
                ("b", 10),
            ),
            Case(
                "factorized-self-attention-cls",
                dict(_VIVIT, **_TUBELET, variant="factorized_self_attention"),
                (video(t=4, h=16, w=16),),
                ("b", 10),
            ),
            Case(
                "factorized-self-attention-mean-cubic",
                dict(
                    _VIVIT,
                    image_size=8,
                    frames=8,
                    image_patch_size=4,
                    frame_patch_size=4,
                    pool="mean",
                    variant="factorized_self_attention",
                ),
                (video(t=8, h=8, w=8),),
                ("b", 10),
            ),
        ),
    )
)

_CCT = dict(embedding_dim=32, num_layers=2, num_heads=2, mlp_ratio=2.0, num_classes=10)

register(
    ArchSpec(
        name="cct_3d",
        torch="vit_torch.cct_3d:CCT",
        flax="vit_flax.cct_3d:CCT",
        paper="Escaping the Big Data Paradigm with Compact Transformers (Hassani et al., 2021), on videos",
        cases=(
            # wide padding: border tokens see few inputs, so their features have a small variance and a
            # wrong LayerNorm eps shows at 1e-5 (the first case is the one the tampering tests use)
            Case(
                "learnable-wide-padding",
                dict(
                    _CCT,
                    img_size=12,
                    num_frames=4,
                    frame_padding=2,
                    kernel_size=3,
                    stride=2,
                    padding=2,
                    positional_embedding="learnable",
                ),
                (video(t=4, h=12, w=12),),
                ("b", 10),
            ),
            Case(
                "sine-two-convs-shorter-clip",
                dict(
                    _CCT,
                    img_size=16,
                    num_frames=4,
                    n_conv_layers=2,
                    kernel_size=3,
                    stride=1,
                    padding=1,
                    frame_pooling_kernel_size=2,
                    frame_pooling_stride=2,
                    num_layers=1,
                    positional_embedding="sine",
                ),
                (video(t=2, h=8, w=16),),
                ("b", 10),
            ),
            Case(
                "none-even-frame-kernel",
                dict(
                    _CCT,
                    img_size=(16, 12),
                    num_frames=4,
                    frame_kernel_size=2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    num_layers=1,
                    positional_embedding="none",
                    n_input_channels=1,
                ),
                (video(c=1, t=4, h=16, w=12),),
                ("b", 10),
            ),
        ),
    )
)
