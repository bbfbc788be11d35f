"""CrossViT: "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification" (Chen et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import cross_vit as facts
from vit_parity.core.features import Features, block_label
from vit_torch.cross_attention import CrossAttention
from vit_torch.layers import Head, PatchEmbed, Transformer, crop_grid, with_features

__all__ = ["CrossViT"]


class ImageEmbedder(nn.Module):
    """One branch's tokens ``(b, 1 + n, dim)``: a class token, then the embedded patches, with learned positions
    over the patch grid (smaller images use its top-left part), then dropout."""

    def __init__(
        self, *, dim: int, size: tuple[int, ...], patch_size: tuple[int, ...], channels: int, dropout: float
    ) -> None:
        super().__init__()
        self.grid = tuple(s // p for s, p in zip(size, patch_size))
        self.to_patch_embedding = PatchEmbed(patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, img: Tensor) -> Tensor:
        x, grid = self.to_patch_embedding(img)
        x = x + crop_grid(self.pos_embedding[:, 1:], self.grid, grid)
        cls = (self.cls_token + self.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        return self.dropout(torch.cat((cls, x), dim=1))


class MultiScaleBlock(nn.Module):
    """Both branches' transformers, then ``cross_attn_depth`` rounds in which each branch's class token attends
    to the other branch's patch tokens and to itself (:class:`~vit_torch.cross_attention.CrossAttention`,
    projected to the other branch's width and back)."""

    def __init__(
        self,
        *,
        sm_dim: int,
        lg_dim: int,
        sm_enc: dict[str, int],
        lg_enc: dict[str, int],
        cross_attn_depth: int,
        cross_attn_heads: int,
        cross_attn_dim_head: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.sm_transformer = Transformer(sm_dim, dropout=dropout, **sm_enc)
        self.lg_transformer = Transformer(lg_dim, dropout=dropout, **lg_enc)
        cross = dict(heads=cross_attn_heads, dim_head=cross_attn_dim_head, dropout=dropout)
        self.sm_attend_lg = nn.ModuleList(CrossAttention(sm_dim, lg_dim, **cross) for _ in range(cross_attn_depth))
        self.lg_attend_sm = nn.ModuleList(CrossAttention(lg_dim, sm_dim, **cross) for _ in range(cross_attn_depth))

    def forward(
        self, sm: Tensor, lg: Tensor, *, features: Features | None = None, prefix: str = ""
    ) -> tuple[Tensor, Tensor]:
        sm = self.sm_transformer(sm, features=features, prefix=f"{prefix}sm/")
        lg = self.lg_transformer(lg, features=features, prefix=f"{prefix}lg/")
        (sm_cls, sm_patches), (lg_cls, lg_patches) = (sm[:, :1], sm[:, 1:]), (lg[:, :1], lg[:, 1:])
        for i, (sm_attend_lg, lg_attend_sm) in enumerate(zip(self.sm_attend_lg, self.lg_attend_sm)):
            sm_label, lg_label = block_label(i, f"{prefix}cross/sm/"), block_label(i, f"{prefix}cross/lg/")
            sm_cls = _cross(sm_attend_lg, sm_cls, lg_patches, sm_patches, features, sm_label)
            lg_cls = _cross(lg_attend_sm, lg_cls, sm_patches, lg_patches, features, lg_label)
        return torch.cat((sm_cls, sm_patches), dim=1), torch.cat((lg_cls, lg_patches), dim=1)


def _cross(
    block: CrossAttention, cls: Tensor, context: Tensor, patches: Tensor, features: Features | None, label: str
) -> Tensor:
    """``block(cls, context)``; records the branch's tokens ``[cls; patches]`` (and the attention weights when
    asked) under ``label``."""
    if features is None:
        return block(cls, context)
    if features.attn:
        cls, attn = block(cls, context, return_attn=True)
        features.add_attn(label, attn)
    else:
        cls = block(cls, context)
    features.add(label, torch.cat((cls, patches), dim=1))
    return cls


class MultiScaleEncoder(nn.Module):
    """A stack of :class:`MultiScaleBlock` s (``layers``); returns both branches' tokens."""

    def __init__(self, layers: Sequence[MultiScaleBlock]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, sm: Tensor, lg: Tensor, *, features: Features | None = None) -> tuple[Tensor, Tensor]:
        for i, layer in enumerate(self.layers):
            sm, lg = layer(sm, lg, features=features, prefix=f"enc{i}/")
        return sm, lg


@records_config
class CrossViT(nn.Module):
    """CrossViT (Chen et al., 2021): two vision transformers on the same image, one on small patches (``sm_``) and
    one on large patches (``lg_``), that exchange information through their class tokens.

    Each branch embeds the image into its own patches with its own class token and positions. ``depth``
    multi-scale blocks each run both branches' transformers, then ``cross_attn_depth`` rounds of cross-attention
    in which each class token attends to the other branch's patch tokens and to itself. Each class token goes
    through its branch's head (LayerNorm, Linear) and the two logits are summed.

    Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and divisible by both patch
    sizes; smaller images use the top-left part of each branch's position grid.
    Features: ``enc0/sm/block00`` ... and ``enc0/lg/block00`` ... (each branch's transformer blocks),
    ``enc0/cross/sm/block00``, ``enc0/cross/lg/block00`` ... (the branch's tokens after each cross-attention
    round, in which only its class token changed) and ``pre_logits``, the two class tokens concatenated
    ``(b, sm_dim + lg_dim)``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        num_classes: int,
        sm_dim: int,
        lg_dim: int,
        sm_patch_size: int | tuple[int, int] = 12,
        sm_enc_depth: int = 1,
        sm_enc_heads: int = 8,
        sm_enc_mlp_dim: int = 2048,
        sm_enc_dim_head: int = 64,
        lg_patch_size: int | tuple[int, int] = 16,
        lg_enc_depth: int = 4,
        lg_enc_heads: int = 8,
        lg_enc_mlp_dim: int = 2048,
        lg_enc_dim_head: int = 64,
        cross_attn_depth: int = 2,
        cross_attn_heads: int = 8,
        cross_attn_dim_head: int = 64,
        depth: int = 3,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.geometry = g = facts.geometry(image_size, sm_patch_size, lg_patch_size)
        self.channels = channels
        embed = dict(size=g.size, channels=channels, dropout=emb_dropout)
        self.sm_image_embedder = ImageEmbedder(dim=sm_dim, patch_size=g.sm_patch, **embed)
        self.lg_image_embedder = ImageEmbedder(dim=lg_dim, patch_size=g.lg_patch, **embed)
        sm_enc = dict(depth=sm_enc_depth, heads=sm_enc_heads, dim_head=sm_enc_dim_head, mlp_dim=sm_enc_mlp_dim)
        lg_enc = dict(depth=lg_enc_depth, heads=lg_enc_heads, dim_head=lg_enc_dim_head, mlp_dim=lg_enc_mlp_dim)
        block = dict(
            sm_dim=sm_dim, lg_dim=lg_dim, sm_enc=sm_enc, lg_enc=lg_enc, cross_attn_depth=cross_attn_depth,
            cross_attn_heads=cross_attn_heads, cross_attn_dim_head=cross_attn_dim_head, dropout=dropout,
        )  # fmt: skip
        self.multi_scale_encoder = MultiScaleEncoder([MultiScaleBlock(**block) for _ in range(depth)])
        self.sm_mlp_head = Head(sm_dim, num_classes)
        self.lg_mlp_head = Head(lg_dim, num_classes)

    def forward(
        self, img: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        facts.check_image(img.shape, self.geometry, channels=self.channels, channels_last=False)
        sm, lg = self.multi_scale_encoder(self.sm_image_embedder(img), self.lg_image_embedder(img), features=features)
        sm_cls, lg_cls = sm[:, 0], lg[:, 0]
        if features is not None:
            features.add("pre_logits", torch.cat((sm_cls, lg_cls), dim=-1))
        return with_features(self.sm_mlp_head(sm_cls) + self.lg_mlp_head(lg_cls), features)
