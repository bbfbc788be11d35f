"""ViT: "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.features import Features
from vit_parity.core.validate import check_choice, check_input, image_geometry
from vit_torch.layers import Linear, PatchEmbed, Transformer, crop_grid, with_features

__all__ = ["ViT"]

IMAGE_AXES = ("height", "width")


class ClassTokenViT(nn.Module):
    """The ViT body on patches of any number of axes: a class token, learned positions over the patch
    grid, a pre-norm transformer and a linear head. ``vit.ViT`` (images) and ``vit_3d.ViT`` (videos,
    volumes) differ only in how they read their geometry. DeepViT, Parallel ViT and ViT for small datasets
    differ in their blocks (``transformer_options`` go to :class:`~vit_torch.layers.Transformer`), their patch
    embedding (``patch_embedding(patch_size, channels, dim)`` builds it, :meth:`embed_patches` runs it)
    and where the last norm sits (``norm_pooled``: the pooled token is normalized, by ``norm``, before the head).

    The forward pass is built from :meth:`tokens`, :meth:`encode` and :meth:`pool_tokens` (as T2T-ViT's), so
    that a subclass can insert a token between them (``distill.DistillableViT``)."""

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
        pool: str,
        channels: int,
        dim_head: int,
        dropout: float,
        emb_dropout: float,
        patch_embedding: Callable[..., nn.Module] = PatchEmbed,
        norm_pooled: bool = False,
        **transformer_options: Any,
    ) -> None:
        super().__init__()
        check_choice(pool, ("cls", "mean"), "pool")
        self.size, self.patch_size = size, patch_size
        self.axis_names, self.input_name = tuple(axis_names), input_name
        self.pool = pool
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(size, patch_size))

        self.to_patch_embedding = patch_embedding(patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, **transformer_options)
        self.norm = nn.LayerNorm(dim) if norm_pooled else nn.Identity()
        self.mlp_head = Linear(dim, num_classes)

    def tokens(self, x: Tensor, features: Features | None = None) -> Tensor:
        """Check ``x``, embed its patches, add the positions and prepend the class token: ``(b, 1 + n, dim)``,
        before the embedding dropout. ``features`` is unused (T2T-ViT's ``tokens`` records its token blocks there)."""
        check_input(
            x.shape, name=self.input_name, channels_last=False, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=self.axis_names,
        )  # fmt: skip
        x, grid = self.embed_patches(x)
        x = x + crop_grid(self.pos_embedding[:, 1:], self.grid, grid)
        cls = (self.cls_token + self.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat((cls, x), dim=1)

    def embed_patches(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """The patch tokens ``(b, n, dim)`` of the input and their grid."""
        return self.to_patch_embedding(x)

    def encode(self, x: Tensor, features: Features | None = None) -> Tensor:
        """The transformer on a token sequence ``(b, n, dim)``, recording its blocks in ``features``."""
        return self.transformer(x, features=features)

    def pool_tokens(self, x: Tensor) -> Tensor:
        """What the head reads: the class token (``pool='cls'``) or the mean of every token (then ``norm``)."""
        return self.norm(x[:, 0] if self.pool == "cls" else x.mean(dim=1))

    def forward(
        self, x: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        x = self.pool_tokens(self.encode(self.dropout(self.tokens(x, features)), features))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)


@records_config
class ViT(ClassTokenViT):
    """Vision Transformer (Dosovitskiy et al., 2020) with a class token and learned positions.

    Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and
    divisible by ``patch_size``; smaller images use the top-left part of the position grid.
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
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ) -> None:
        size, patch = image_geometry(image_size, patch_size)
        super().__init__(
            size=size, patch_size=patch, axis_names=IMAGE_AXES, input_name="img", num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, pool=pool, channels=channels,
            dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
        )  # fmt: skip
