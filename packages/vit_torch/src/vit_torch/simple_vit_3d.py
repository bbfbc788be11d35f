"""3D SimpleViT: "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022) on tubelets of videos or volumes."""

from __future__ import annotations

from torch import Tensor, nn

from vit_parity.config import records_config
from vit_parity.validate import check_input, video_geometry
from vit_torch.layers import Intermediates, PatchEmbed, Transformer, crop_grid, sincos_posemb
from vit_torch.vit_3d import VIDEO_AXES

__all__ = ["SimpleViT"]


@records_config
class SimpleViT(nn.Module):
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
        super().__init__()
        self.size, self.patch_size = video_geometry(image_size, image_patch_size, frames, frame_patch_size)
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))
        self.register_buffer("pos_embedding", sincos_posemb(self.grid, dim)[None], persistent=False)

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, out_bias=False)
        self.linear_head = nn.Linear(dim, num_classes)

    def forward(self, video: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        check_input(
            video.shape, name="video", channels_last=False, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=VIDEO_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(video)
        x = x + crop_grid(self.pos_embedding, self.grid, grid)
        x = self.transformer(x, intermediates=intermediates)
        return self.linear_head(x.mean(dim=1))
