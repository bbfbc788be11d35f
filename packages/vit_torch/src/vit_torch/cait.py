"""CaiT: "Going deeper with Image Transformers" (Touvron et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import cait
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, image_geometry
from vit_torch.attention_variants import LayerDropTransformer, TalkingHeadsBlock
from vit_torch.layers import Linear, PatchEmbed, crop_grid, with_features

__all__ = ["CaiT"]

IMAGE_AXES = ("height", "width")


class ClassAttentionViT(nn.Module):
    """The body CaiT and XCiT share: patches embedded with learned positions, a stack over the patches
    (``patch_transformer``), then class-attention blocks (``cls_transformer``) where only the class token queries,
    over itself and the patches; the head normalizes the class token (``norm``) and classifies it (``mlp_head``).

    A subclass builds the two stacks (:class:`~vit_torch.attention_variants.LayerDropTransformer` s) and passes them
    in; :meth:`patch_options` names what the patch blocks take besides the tokens (XCiT's patch grid).
    ``forward(img, keep_layers=...)`` gives the layer-dropout draw explicitly (one boolean per block, the patch
    blocks then the class blocks) in either mode. Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at
    most ``image_size`` and divisible by ``patch_size``; smaller images use the top-left part of the position grid.
    Features: ``block00`` ... (the patches), ``cls/block00`` ... (the class token), ``pre_logits``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        emb_dropout: float,
        channels: int,
        patch_transformer: LayerDropTransformer,
        cls_transformer: LayerDropTransformer,
    ) -> None:
        super().__init__()
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))
        self.depths = (len(patch_transformer.blocks), len(cls_transformer.blocks))
        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid), dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.patch_transformer = patch_transformer
        self.cls_transformer = cls_transformer
        self.norm = nn.LayerNorm(dim)
        self.mlp_head = Linear(dim, num_classes)

    def patch_options(self, grid: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of the patch blocks besides the tokens, for an input of patch ``grid``."""
        return {}

    def forward(
        self,
        img: Tensor,
        *,
        keep_layers: Sequence[bool] | Tensor | None = None,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        check_input(
            img.shape, name="img", channels_last=False, channels=self.channels,
            max_size=self.size, patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        keep_patch = keep_cls = None
        if keep_layers is not None:
            keep = torch.as_tensor(keep_layers, dtype=torch.bool)
            cait.check_keep_layers(keep.shape, depth=self.depths[0], cls_depth=self.depths[1])
            keep_patch, keep_cls = keep[: self.depths[0]], keep[self.depths[0] :]
        x, grid = self.to_patch_embedding(img)
        x = self.dropout(x + crop_grid(self.pos_embedding, self.grid, grid))
        x = self.patch_transformer(x, keep=keep_patch, features=features, **self.patch_options(grid))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        cls = self.cls_transformer(cls, keep=keep_cls, context=x, features=features, prefix="cls/")
        cls = self.norm(cls[:, 0])
        if features is not None:
            features.add("pre_logits", cls)
        return with_features(self.mlp_head(cls), features)


@records_config
class CaiT(ClassAttentionViT):
    """CaiT (Touvron et al., 2021): class-attention image transformer.

    ``depth`` self-attention blocks over the patches (``patch_transformer``), then ``cls_depth`` class-attention
    blocks (``cls_transformer``) where only the class token queries, over the class token and the patches (the body
    is :class:`ClassAttentionViT`). Every attention is talking-heads attention (learned head mixing before and after
    the softmax) and every residual branch is layer-scaled (``gamma`` starts at 0.1 up to 18 patch blocks, 1e-5 up
    to 24, 1e-6 beyond). In training each block of both stacks is skipped with probability ``layer_dropout`` (at
    least one of each stack runs); ``forward(img, keep_layers=...)`` gives that draw explicitly (one boolean per
    block, the ``depth`` patch blocks then the ``cls_depth`` class blocks) in either mode. Takes ``img`` of shape
    ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and divisible by ``patch_size``; smaller images use
    the top-left part of the position grid. Features: ``block00`` ... (patches), ``cls/block00`` ... (the class
    token), ``pre_logits``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        cls_depth: int,
        heads: int,
        mlp_dim: int,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        layer_dropout: float = 0.0,
        channels: int = 3,
    ) -> None:
        cait.check_arguments(depth=depth, cls_depth=cls_depth, layer_dropout=layer_dropout)
        stack = dict(
            final_norm=False, block=TalkingHeadsBlock, layer_scale=cait.layer_scale_init(depth),
            layer_dropout=layer_dropout,
        )  # fmt: skip
        super().__init__(
            image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, emb_dropout=emb_dropout,
            channels=channels,
            patch_transformer=LayerDropTransformer(dim, depth, heads, dim_head, mlp_dim, dropout, **stack),
            cls_transformer=LayerDropTransformer(
                dim, cls_depth, heads, dim_head, mlp_dim, dropout, class_attention=True, pre_mix=True, post_mix=True,
                **stack,
            ),
        )  # fmt: skip
