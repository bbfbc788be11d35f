"""SimpleViT: "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, image_geometry
from vit_torch.layers import Linear, PatchEmbed, Transformer, crop_grid, sincos_posemb, with_features
from vit_torch.vit import IMAGE_AXES

__all__ = ["SimpleViT"]


class SinCosViT(nn.Module):
    """The SimpleViT body on patches of any number of axes: fixed sin-cos positions, no class token,
    mean pooling, no dropout, a linear head. ``simple_vit.SimpleViT`` (images) and
    ``simple_vit_3d.SimpleViT`` (videos, volumes) differ only in how they read their geometry."""

    def __init__(
        self,
        *,
        size: tuple[int, ...],
        patch_size: tuple[int, ...],
        axis_names: Sequence[str],
        input_name: str,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        channels: int,
        dim_head: int,
    ) -> None:
        super().__init__()
        self.size, self.patch_size = size, patch_size
        self.axis_names, self.input_name = tuple(axis_names), input_name
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(size, patch_size))
        self.register_buffer("pos_embedding", sincos_posemb(self.grid, dim)[None], persistent=False)

        self.to_patch_embedding = PatchEmbed(patch_size, channels, dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, out_bias=False)
        self.linear_head = Linear(dim, num_classes)

    def forward(
        self, x: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        check_input(
            x.shape, name=self.input_name, channels_last=False, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=self.axis_names,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(x)
        x = x + crop_grid(self.pos_embedding, self.grid, grid)
        x = self.transformer(x, features=features).mean(dim=1)
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.linear_head(x), features)


@records_config
class SimpleViT(SinCosViT):
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
        size, patch = image_geometry(image_size, patch_size)
        super().__init__(
            size=size, patch_size=patch, axis_names=IMAGE_AXES, input_name="img", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, channels=channels, dim_head=dim_head,
        )  # fmt: skip
