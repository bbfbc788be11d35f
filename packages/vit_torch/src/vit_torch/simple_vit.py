"""SimpleViT: "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022)."""

from __future__ import annotations

from torch import Tensor, nn

from vit_parity.config import records_config
from vit_parity.validate import as_tuple, check_divisible, check_input
from vit_torch.layers import Intermediates, PatchEmbed, Transformer, crop_grid, sincos_posemb

__all__ = ["SimpleViT"]


@records_config
class SimpleViT(nn.Module):
    """Simple ViT (Beyer et al., 2022): 2-D sin-cos positions, no class token, mean pooling, no dropout.

    Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and
    divisible by ``patch_size``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        channels: int = 3,
        dim_head: int = 64,
    ) -> None:
        super().__init__()
        self.image_size = as_tuple(image_size, 2, "image_size")
        self.patch_size = as_tuple(patch_size, 2, "patch_size")
        check_divisible(self.image_size, self.patch_size, "image_size", "patch_size")
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.image_size, self.patch_size))
        self.register_buffer("pos_embedding", sincos_posemb(self.grid, dim)[None], persistent=False)

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, out_bias=False)
        self.linear_head = nn.Linear(dim, num_classes)

    def forward(self, img: Tensor, intermediates: Intermediates | None = None) -> Tensor:
        check_input(
            img.shape, name="img", channels_last=False, channels=self.channels,
            max_size=self.image_size, patch=self.patch_size, axis_names=("height", "width"),
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        x = x + crop_grid(self.pos_embedding, self.grid, grid)
        x = self.transformer(x, intermediates=intermediates)
        return self.linear_head(x.mean(dim=1))
