"""Efficient attention: the ViT around a transformer of one's choice ("An Image is Worth 16x16 Words", Dosovitskiy
et al., 2020, with a pluggable transformer such as the Nystromformer of Xiong et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import efficient as facts
from vit_parity.core.features import Features
from vit_parity.core.validate import check_input, image_geometry
from vit_torch import layers
from vit_torch.layers import Head, PatchEmbed, crop_grid, with_features
from vit_torch.vit import IMAGE_AXES

__all__ = ["Transformer", "ViT"]


@records_config
class Transformer(layers.Transformer):
    """This library's pre-norm transformer ("Attention Is All You Need", Vaswani et al., 2017): ``depth`` blocks of
    softmax attention and feed-forward, then a final LayerNorm, as a model of its own for :class:`ViT`'s
    ``transformer``.

    A :class:`vit_torch.layers.Transformer` that records its constructor arguments (those of vit-pytorch's
    ``vit.Transformer``), so that a :class:`ViT` around it saves and loads in either backend. ``forward(x)`` maps
    ``(b, n, dim)`` tokens to ``(b, n, dim)``; with ``return_features``/``return_attn`` it returns ``(tokens,
    features)``: ``block00`` ... and ``pre_logits`` (its output, what a head reads).
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.dim = dim

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        features: Features | None = None,
        prefix: str = "",
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        facts.check_tokens(x.shape, self.dim)
        own = Features.request(return_features, return_attn)
        if own is None:  # a model's call, recording into its features (or none)
            return super().forward(x, mask, features=features, prefix=prefix)
        if features is not None:
            raise ValueError("give features= (a model's collector) or return_features/return_attn, not both")
        x = super().forward(x, mask, features=own, prefix=prefix)
        own.add("pre_logits", x)
        return with_features(x, own)


def transformer_width(transformer: nn.Module) -> int | None:
    """The token width of one of this library's transformers, known without running it (None for another module)."""
    if isinstance(transformer, Transformer):
        return transformer.dim
    if isinstance(transformer, layers.Transformer) and isinstance(transformer.norm, (nn.LayerNorm, nn.RMSNorm)):
        return transformer.norm.normalized_shape[-1]
    return None


@records_config
class ViT(nn.Module):
    """The Vision Transformer (Dosovitskiy et al., 2020) around a transformer of one's choice: patches, a class
    token, learned positions, ``transformer`` and a head (LayerNorm, Linear).

    ``transformer`` is any module mapping ``(b, n, dim)`` tokens to ``(b, n, dim)``: an efficient-attention one (the
    Nystromformer of ``nystrom-attention``), x-transformers' ``Encoder``, or :class:`Transformer` (this library's,
    which also records its blocks and saves with the model). Its output width is checked on every call (at
    construction too for this library's transformers). The head normalizes the pooled token, since the transformer
    need not end with a norm. Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size``
    and divisible by ``patch_size``; smaller images use the top-left part of the position grid.

    The forward pass is built from :meth:`tokens`, :meth:`encode` and :meth:`pool_tokens` (as ``vit.ViT``'s), so
    that a subclass can insert a token between them (``distill.DistillableEfficientViT``).
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        transformer: nn.Module,
        pool: str = "cls",
        channels: int = 3,
    ) -> None:
        super().__init__()
        size, patch = image_geometry(image_size, patch_size)
        facts.check_arguments(
            transformer=transformer, module_type=nn.Module, module_name="torch.nn.Module", dim=dim, pool=pool,
            width=transformer_width(transformer) if isinstance(transformer, nn.Module) else None,
        )  # fmt: skip
        self.size, self.patch_size, self.grid = size, patch, tuple(s // p for s, p in zip(size, patch))
        self.dim, self.pool, self.channels = dim, pool, channels

        self.to_patch_embedding = PatchEmbed(patch, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = transformer
        self.mlp_head = Head(dim, num_classes)

    def tokens(self, img: Tensor, features: Features | None = None) -> Tensor:
        """Check ``img``, embed its patches, add the positions and prepend the class token: ``(b, 1 + n, dim)``.
        ``features`` is unused (the hooks take it alike)."""
        check_input(
            img.shape, name="img", channels_last=False, channels=self.channels, max_size=self.size,
            patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        x, grid = self.to_patch_embedding(img)
        x = x + crop_grid(self.pos_embedding[:, 1:], self.grid, grid)
        cls = (self.cls_token + self.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat((cls, x), dim=1)

    def encode(self, x: Tensor, features: Features | None = None) -> Tensor:
        """The transformer on a token sequence ``(b, n, dim)`` (recording its blocks when it is a library one); its
        output must have the same shape."""
        if isinstance(self.transformer, layers.Transformer):
            out = self.transformer(x, features=features)
        else:
            out = self.transformer(x)
        facts.check_output(x.shape, out.shape if isinstance(out, Tensor) else None, self.dim)
        return out

    def pool_tokens(self, x: Tensor) -> Tensor:
        """What the head reads: the class token (``pool='cls'``) or the mean of every token."""
        return x[:, 0] if self.pool == "cls" else x.mean(dim=1)

    def forward(
        self, img: Tensor, *, return_features: bool | Sequence[str | int] = False, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        features = Features.request(return_features, return_attn)
        x = self.pool_tokens(self.encode(self.tokens(img, features), features))
        if features is not None:
            features.add("pre_logits", x)
        return with_features(self.mlp_head(x), features)
