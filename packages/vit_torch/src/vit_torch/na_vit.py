"""NaViT: "Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution" (Dehghani et al., 2023).

Images keep their resolution and aspect ratio: each becomes a sequence of patches, several share one
packed sequence, and a block-diagonal attention mask keeps them from seeing each other. Factorized
positional embeddings (one table per axis), query-key normalization, attention pooling per image
with a learned query, and token dropout during training.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vit_parity.core import packing
from vit_parity.core.config import records_config
from vit_parity.core.features import Features
from vit_parity.core.validate import as_tuple, check_divisible
from vit_torch.layers import Attention, Linear, PatchEmbed, Transformer, patchify, with_features

__all__ = ["NaViT"]

TokenDropout = float | Callable[..., float] | None
_POS_NAMES = {"frames": "pos_embed_frame", "height": "pos_embed_height", "width": "pos_embed_width"}


class NaViTBase(nn.Module):
    """The parameters and the input preparation that every NaViT shares (any number of axes).

    Submodules: ``to_patch_embedding``, one positional table per axis (``pos_embed_height``,
    ``pos_embed_width`` and, for videos, ``pos_embed_frame``), ``transformer`` (query-key normalized),
    ``attn_pool_queries`` and ``attn_pool`` (attention pooling), ``head_norm`` and ``mlp_head``.
    """

    def __init__(
        self,
        *,
        max_size: tuple[int, ...],
        patch_size: tuple[int, ...],
        axis_names: tuple[str, ...],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        channels: int,
        dim_head: int,
        dropout: float,
        emb_dropout: float,
        token_dropout_prob: TokenDropout,
    ) -> None:
        super().__init__()
        check_divisible(max_size, patch_size, "image size", "patch size")
        self.max_size, self.patch_size, self.axis_names = max_size, patch_size, axis_names
        self.channels = channels
        self.token_dropout = packing.token_dropout_fn(token_dropout_prob)
        self.grid = tuple(s // p for s, p in zip(max_size, patch_size))

        self.to_patch_embedding = PatchEmbed(patch_size, channels, dim)
        for axis, g in zip(axis_names, self.grid):
            setattr(self, _POS_NAMES[axis], nn.Parameter(torch.randn(g, dim)))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, out_bias=False, qk_norm=True)
        self.attn_pool_queries = nn.Parameter(torch.randn(dim))
        self.attn_pool_norm = nn.LayerNorm(dim)
        self.attn_pool = Attention(dim, heads, dim_head, out_bias=False, qk_norm=True)
        self.head_norm = nn.LayerNorm(dim)
        self.mlp_head = Linear(dim, num_classes, bias=False)

    def tokens(self, images: Sequence[Tensor], keep: Sequence[Any] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Every image's patches ``(n_i, prod(patch) * c)`` and patch coordinates ``(n_i, n_axes)``.

        Tokens go in grid order; ``keep`` (one boolean mask of the image's patch grid per image)
        drops tokens, and so does token dropout in training when ``keep`` is not given.
        """
        for i, image in enumerate(images):
            if not isinstance(image, Tensor):
                raise TypeError(f"images[{i}] must be a torch.Tensor, got {type(image).__name__}")
        sides = packing.check_images(
            [tuple(image.shape) for image in images], channels=self.channels, channels_last=False,
            max_size=self.max_size, patch=self.patch_size, axis_names=self.axis_names,
        )  # fmt: skip
        if keep is not None and len(keep) != len(images):
            raise ValueError(f"keep must hold one mask per image: {len(keep)} masks for {len(images)} images")
        patches, coords = [], []
        for i, (image, side) in enumerate(zip(images, sides)):
            grid = tuple(s // p for s, p in zip(side, self.patch_size))
            tok = patchify(image[None], self.patch_size)[0]
            pos = _coords(grid, image.device)
            select = self._kept(i, grid, side, None if keep is None else keep[i], image.device)
            patches.append(tok if select is None else tok[select])
            coords.append(pos if select is None else pos[select])
        return patches, coords

    def _kept(
        self, i: int, grid: tuple[int, ...], side: tuple[int, ...], mask: Any, device: torch.device
    ) -> Tensor | None:
        """Indices of the tokens image ``i`` keeps, or None for all of them."""
        n = math.prod(grid)
        if mask is not None:
            mask = torch.as_tensor(mask, device=device)
            if tuple(mask.shape) != grid or mask.dtype != torch.bool:
                raise ValueError(
                    f"keep[{i}] must be a boolean array of the image's patch grid {grid}, got {mask.dtype} "
                    f"{tuple(mask.shape)}"
                )
            if not mask.any():
                raise ValueError(f"keep[{i}] drops every token of images[{i}]; keep at least one")
            return mask.reshape(-1).nonzero().squeeze(-1)
        if self.training and self.token_dropout is not None:
            k = packing.num_keep(n, self.token_dropout(*side))
            return torch.randperm(n, device=device)[:k].sort().values
        return None

    def embed(self, patches: list[Tensor], coords: list[Tensor]) -> Tensor:
        """Concatenated token embeddings ``(sum n_i, dim)``: patch embedding plus factorized positions."""
        x = self.to_patch_embedding.embed(torch.cat(patches))
        pos = torch.cat(coords)
        for a, axis in enumerate(self.axis_names):
            x = x + getattr(self, _POS_NAMES[axis])[pos[:, a]]
        return x

    def pool(self, queries: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention pooling: the normalized learned ``queries`` attend to ``tokens``, plus a residual."""
        return self.attn_pool(self.attn_pool_norm(queries), mask, context=tokens) + queries

    def head(self, pooled: Tensor, features: Features | None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if features is not None:
            features.add("pre_logits", pooled)
        return with_features(self.mlp_head(self.head_norm(pooled)), features)


def _coords(grid: tuple[int, ...], device: torch.device) -> Tensor:
    mesh = torch.meshgrid(*[torch.arange(g, device=device) for g in grid], indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(grid))


@records_config
class NaViT(NaViTBase):
    """NaViT (Dehghani et al., 2023) on packed sequences with a block-diagonal attention mask.

    ``forward(batched_images)`` takes a list of lists of images ``(channels, h, w)``: each inner list
    is packed into one sequence. With ``group_images=True`` it takes a flat list and packs it itself
    (first-fit decreasing, at most ``group_max_seq_len`` tokens a sequence). Sides may differ from
    image to image, up to ``image_size`` and divisible by ``patch_size``. Returns
    ``(number of images, num_classes)``, images in input order.

    ``token_dropout_prob`` (a number, or a function of an image's height and width) drops that
    fraction of each image's tokens in training; ``keep`` (boolean masks of each image's patch grid,
    nested like the images) chooses the kept tokens explicitly, in any mode.
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

    def forward(
        self,
        batched_images: Sequence[Sequence[Tensor]] | Sequence[Tensor],
        group_images: bool = False,
        group_max_seq_len: int = 2048,
        *,
        keep: Sequence[Any] | None = None,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if group_images:
            images, flat_keep = list(batched_images), keep
        else:
            groups = _check_groups(batched_images)
            images = [image for group in groups for image in group]
            flat_keep = None if keep is None else [k for group in _check_groups(keep, "keep") for k in group]
        patches, coords = self.tokens(images, flat_keep)
        lengths = [len(p) for p in patches]
        if group_images:
            layout = packing.pack(lengths, group_max_seq_len)
        else:
            starts = itertools.accumulate((len(g) for g in groups), initial=0)
            layout = packing.grouped([range(a, b) for a, b in itertools.pairwise(starts)], lengths)
        features = Features.request(return_features, return_attn)
        return self.packed(self.embed(patches, coords), layout, features)

    def packed(
        self, tokens: Tensor, layout: packing.Packing, features: Features | None = None
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits of the images whose embedded tokens ``(sum n_i, dim)`` (input order) ``layout`` packs."""
        device = tokens.device
        s, n, m = len(layout.groups), layout.longest, layout.max_images
        index = torch.from_numpy(layout.token_index(n)).to(device)
        x = tokens.new_zeros(s * n, tokens.shape[-1]).index_copy(0, index, tokens).view(s, n, -1)
        segment = torch.from_numpy(layout.segment_ids(n)).to(device)
        x = self.dropout(x)
        # a token attends to the tokens of its own image (padding to padding: no empty rows)
        x = self.transformer(x, segment[:, None, :, None] == segment[:, None, None, :], features=features)
        slots = torch.arange(1, m + 1, device=device)
        pool_mask = slots[None, :, None] == segment[:, None, :]
        pool_mask = pool_mask | ~pool_mask.any(-1, keepdim=True)  # empty slots: finite, then dropped
        queries = self.attn_pool_queries.expand(s, m, -1)
        pooled = self.pool(queries, x, pool_mask[:, None])
        seq, slot = (torch.from_numpy(a).to(device) for a in layout.slots())
        return self.head(pooled[seq, slot], features)


def _check_groups(batched: Any, name: str = "batched_images") -> list[list[Any]]:
    if isinstance(batched, Tensor) or not isinstance(batched, Sequence):
        raise TypeError(
            f"{name} must be a list of lists of images (c, h, w), one inner list per packed sequence; "
            "or pass group_images=True with a flat list"
        )
    if len(batched) == 0:
        raise ValueError(f"{name} is empty: give at least one image")
    groups = []
    for s, group in enumerate(batched):
        if isinstance(group, Tensor) or not isinstance(group, Sequence):
            raise TypeError(
                f"{name}[{s}] must be a list of images packed in one sequence, got {type(group).__name__}; "
                "pass group_images=True to give a flat list of images"
            )
        if len(group) == 0:
            raise ValueError(f"{name}[{s}] is empty: every packed sequence needs at least one image")
        groups.append(list(group))
    return groups
