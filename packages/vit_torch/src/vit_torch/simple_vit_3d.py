"""3D SimpleViT: "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022) on tubelets of videos or volumes."""

from __future__ import annotations

from vit_parity.core.config import records_config
from vit_parity.core.validate import video_geometry
from vit_torch.simple_vit import SinCosViT
from vit_torch.vit_3d import VIDEO_AXES

__all__ = ["SimpleViT"]


@records_config
class SimpleViT(SinCosViT):
    """Simple ViT (Beyer et al., 2022) on videos: 3-D sin-cos positions over the ``(t, h, w)`` tubelet grid,
    no class token, mean pooling, no dropout.

    Takes ``video`` of shape ``(b, channels, t, h, w)`` with ``t <= frames``, ``h, w <= image_size`` and
    every side divisible by its patch size.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        image_patch_size: int | tuple[int, int],
        frames: int,
        frame_patch_size: int,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        channels: int = 3,
        dim_head: int = 64,
    ) -> None:
        size, patch = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        super().__init__(
            size=size, patch_size=patch, axis_names=VIDEO_AXES, input_name="video", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, channels=channels, dim_head=dim_head,
        )  # fmt: skip
