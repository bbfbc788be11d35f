"""NaViT on jagged nested tensors: "Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution".

The same model as :mod:`vit_torch.na_vit` (same weights, same logits), with no padding and no mask:
each image is one ragged sequence of a ``torch.nested`` tensor (``layout=torch.jagged``) and
attention runs through the fused ``scaled_dot_product_attention`` per image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vit_parity.core.config import records_config
from vit_parity.core.features import Features
from vit_parity.core.validate import as_tuple
from vit_torch.na_vit import NaViTBase, TokenDropout

__all__ = ["NaViT"]


class _QuietJaggedConstruction(logging.Filter):
    """torch's ``nested_tensor_from_jagged`` asks ``is_fx_tracing()``, which logs a deprecation note on every
    first call outside tracing; the note concerns torch internals, not this model's use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("is_fx_tracing will return true")


logging.getLogger("torch.fx._symbolic_trace").addFilter(_QuietJaggedConstruction())


class NestedNaViTBase(NaViTBase):
    """NaViT's forward pass on jagged nested tensors, for any number of axes."""

    def forward(
        self,
        images: Sequence[Tensor],
        *,
        keep: Sequence[Any] | None = None,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if return_attn:
            raise ValueError(
                "attention maps are not recorded on nested tensors; vit_torch.na_vit.NaViT (same weights) records them"
            )
        if isinstance(images, Tensor) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a list of tensors, one per image, got {type(images).__name__}")
        patches, coords = self.tokens(list(images), keep)
        x = self.embed(patches, coords)
        offsets = torch.tensor([0, *(len(p) for p in patches)], device=x.device).cumsum(0)
        x = self.dropout(torch.nested.nested_tensor_from_jagged(x, offsets))
        features = Features.request(return_features, return_attn)
        x = self.transformer(x, features=features)
        n = len(patches)
        queries = self.attn_pool_queries.expand(n, -1)
        one_each = torch.arange(n + 1, device=x.device)
        pooled = self.pool(torch.nested.nested_tensor_from_jagged(queries.contiguous(), one_each), x)
        return self.head(pooled.values(), features)


@records_config
class NaViT(NestedNaViTBase):
    """NaViT (Dehghani et al., 2023) on jagged nested tensors: images of any resolution, no padding.

    ``forward(images)`` takes a list of images ``(channels, h, w)`` with sides up to ``image_size``
    and divisible by ``patch_size``; returns ``(len(images), num_classes)``. Same constructor, weights
    and logits as :class:`vit_torch.na_vit.NaViT`; ``keep`` and token dropout work the same way.
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
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        token_dropout_prob: TokenDropout = None,
    ) -> None:
        super().__init__(
            max_size=as_tuple(image_size, 2, "image_size"), patch_size=as_tuple(patch_size, 2, "patch_size"),
            axis_names=("height", "width"), num_classes=num_classes, dim=dim, depth=depth, heads=heads,
            mlp_dim=mlp_dim, channels=channels, dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
            token_dropout_prob=token_dropout_prob,
        )  # fmt: skip
