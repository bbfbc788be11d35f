"""ATS-ViT: "ATS: Adaptive Token Sampling For Efficient Vision Transformers" (Fayyaz et al., 2021).

A ViT whose layers keep fewer and fewer patch tokens. A layer that reads more tokens than its budget ``k``
scores them by the class token's attention weighted by the norms of the values (summed over heads, normalized
to a distribution), draws ``k`` tokens from that distribution (Gumbel-max on the logarithm of the scores, ``k``
independent draws) and keeps each drawn token once: an image keeps between one and ``k`` tokens, in their
original order, and the rest of the ``k`` places is padding under a mask that the later attention layers read.
The widths are static (``k + 1`` tokens with the class token), so nothing in the forward pass depends on the
data's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import ats_vit as facts
from vit_parity.core.features import Features, block_label
from vit_parity.core.validate import check_input, image_geometry
from vit_torch.layers import (
    Attention,
    Block,
    Linear,
    PatchEmbed,
    attention_weights,
    crop_grid,
    make_norm,
    with_features,
)

__all__ = ["ViT"]

IMAGE_AXES = ("height", "width")
MASKED = -torch.finfo(torch.float32).max / 2  # the pseudo-logit of a padding token: never drawn


def significance(attn: Attention, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """The pseudo-logits ``(b, n - 1)`` of the patch tokens of ``x`` ``(b, n, dim)`` (class token first, already
    normalized), as ``attn`` would attend over them: ``log(s / (sum(s) + eps) + eps)`` with ``s`` the class token's
    attention to each patch token times the norm of its value, summed over the heads. ``mask`` (``(b, 1, 1, n)``,
    True where a key is a real token) keeps padding out. Computed in float32 and without gradient: it only chooses
    which tokens stay."""
    weight = attn.to_qkv.weight.detach().float()
    bias = attn.to_qkv.bias
    x = x.detach().float()
    wq, wk, wv = weight.chunk(3)
    bq, bk, bv = (None,) * 3 if bias is None else bias.detach().float().chunk(3)
    q = F.linear(x[:, :1], wq, bq)
    k, v = F.linear(x, wk, bk), F.linear(x, wv, bv)
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (b, h, n, d)
    cls_attn = attention_weights(q, k, mask)[:, :, 0, 1:]
    scores = (cls_attn * v[:, :, 1:].norm(dim=-1)).sum(dim=1)
    normed = scores / (scores.sum(dim=-1, keepdim=True) + facts.EPS)
    return torch.log(normed + facts.EPS)


def gumbel(u: Tensor) -> Tensor:
    """Gumbel noise from uniform draws ``u`` in [0, 1): ``-log(-log(u + eps) + eps)`` (the reference's transform)."""
    return -torch.log(-torch.log(u + facts.EPS) + facts.EPS)


class AdaptiveTokenSampling(nn.Module):
    """Which of ``n`` patch tokens a layer keeps, at most ``max_tokens`` of them (ATS, Fayyaz et al., 2021).

    ``forward(logits, valid, noise)`` takes the tokens' pseudo-logits ``(b, n)`` (:func:`significance`), which of
    them are real (``(b, n)`` bool, None: all) and an optional draw ``noise`` of uniform numbers ``(b, k, n)``, and
    returns the positions of the kept tokens ``(b, k)`` (ascending, padding last) and whether each place holds a
    kept token ``(b, k)``. In training, or with an explicit draw in either mode, each of the ``k`` rows of the draw
    picks one token by Gumbel-max (a draw from the normalized scores), and every token picked at least once is
    kept; without a draw, training draws from torch's generator. Eval mode draws nothing: the ``k`` tokens with the
    largest pseudo-logits are kept (the ranking that Gumbel-max follows without noise). An image with at most ``k``
    real tokens keeps them all.
    """

    def __init__(self, max_tokens: int) -> None:
        super().__init__()
        self.max_tokens = max_tokens

    def forward(
        self, logits: Tensor, valid: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        b, n = logits.shape
        k = self.max_tokens
        positions = torch.arange(n, device=logits.device)
        if valid is not None:
            logits = logits.masked_fill(~valid, MASKED)
        if noise is None and not self.training:
            rank = logits.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
            chosen = rank < k
        else:
            u = torch.rand(b, k, n, device=logits.device) if noise is None else noise.to(logits)
            drawn = (logits[:, None, :] + gumbel(u)).argmax(dim=-1)  # (b, k)
            chosen = (drawn[..., None] == positions).any(dim=1)
        if valid is not None:
            fits = valid.sum(dim=-1, keepdim=True) <= k
            chosen = torch.where(fits, valid, chosen & valid)
        order = torch.where(chosen, positions, positions + n).argsort(dim=-1)[:, :k]
        return order, chosen.gather(1, order)


class ATSBlock(Block):
    """A pre-norm :class:`~vit_torch.layers.Block` that samples its tokens between attention and feed-forward (ATS,
    Fayyaz et al., 2021).

    ``forward(x, valid, noise=...)`` takes tokens ``(b, 1 + n, dim)`` (class token first) and which are real
    (``(b, 1 + n)`` bool, None: all). When ``n`` exceeds ``max_tokens``, the attention output (and the residual) of
    the kept tokens only (:class:`AdaptiveTokenSampling`, ``ats``) go on to the feed-forward: ``1 + max_tokens``
    tokens leave the block. The attention reads the real tokens only (its key mask). Returns the tokens (padding
    set to zero), their mask (None while there is no padding), the positions of the kept patch tokens among the
    ``n`` (``(b, max_tokens)``, None when the block keeps all) and the attention weights (with ``return_attn``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        max_tokens: int,
        **options: Any,
    ) -> None:
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, **options)
        self.ats = AdaptiveTokenSampling(max_tokens)

    def forward(  # type: ignore[override]
        self, x: Tensor, valid: Tensor | None = None, *, noise: Tensor | None = None, return_attn: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        h = self.norm1(x)
        mask = None if valid is None else valid[:, None, None, :]
        kept = None
        if x.shape[1] - 1 > self.ats.max_tokens:
            patches = None if valid is None else valid[:, 1:]
            kept, kept_valid = self.ats(significance(self.attn, h, mask), patches, noise)
        y = self.attn(h, mask, return_attn=return_attn)
        y, attn = y if return_attn else (y, None)
        x = x + self.drop_path(self.ls1(y))
        if kept is not None:
            index = kept[..., None].expand(-1, -1, x.shape[-1])
            x = torch.cat((x[:, :1], x[:, 1:].gather(1, index)), dim=1)
            valid = F.pad(kept_valid, (1, 0), value=True)
        x = x + self.drop_path(self.ls2(self.ff(self.norm2(x))))
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)
        return x, valid, kept, attn


class ATSTransformer(nn.Module):
    """A stack of :class:`ATSBlock` s, one per token budget, and a final norm (ATS-ViT, Fayyaz et al., 2021).

    ``forward(x, noise=..., features=f)`` returns the normalized tokens and the ids of the patch tokens that are
    left ``(b, m)`` (their index in the image's patch grid, row-major; -1 for padding), and records ``block00`` ...
    (each block's tokens, padding included and zero) in ``f``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        max_tokens_per_depth: Sequence[int],
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        budgets = facts.check_max_tokens(max_tokens_per_depth, depth)
        self.blocks = nn.ModuleList(ATSBlock(dim, heads, dim_head, mlp_dim, dropout, max_tokens=k) for k in budgets)
        self.norm = make_norm("layernorm", dim)

    def forward(
        self, x: Tensor, *, noise: Sequence[Tensor | None] | None = None, features: Features | None = None
    ) -> tuple[Tensor, Tensor]:
        b, width = x.shape[:2]
        ids = torch.arange(width - 1, device=x.device).expand(b, -1)
        valid = None
        record_attn = features is not None and features.attn
        for i, block in enumerate(self.blocks):
            draw = None if noise is None else noise[i]
            x, valid, kept, attn = block(x, valid, noise=draw, return_attn=record_attn)
            if kept is not None:
                ids = ids.gather(1, kept).masked_fill(~valid[:, 1:], -1)
            if features is not None:
                if record_attn:
                    features.add_attn(block_label(i), attn)
                features.add(block_label(i), x)
        return self.norm(x), ids


@records_config
class ViT(nn.Module):
    """ATS-ViT (Fayyaz et al., 2021): a ViT whose layer ``i`` keeps at most ``max_tokens_per_depth[i]`` patch tokens,
    sampled from the class token's value-weighted attention (see :class:`AdaptiveTokenSampling`).

    Takes ``img`` of shape ``(b, channels, h, w)`` with ``h, w`` at most ``image_size`` and divisible by
    ``patch_size``; smaller images use the top-left part of the position grid. ``forward(img,
    return_sampled_token_ids=True)`` returns ``(logits, token_ids)``: the patch ids the last layer kept, ``(b, m)``
    with ``m`` the smallest of the budgets and the patch count, -1 for padding. ``noise=`` gives the sampling draw
    explicitly: one entry per layer, uniform numbers in [0, 1) of the shape :meth:`noise_shapes` gives, or None
    (the mode decides: training draws from torch's generator, eval keeps the highest-scoring tokens).
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        max_tokens_per_depth: Sequence[int],
        heads: int,
        mlp_dim: int,
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.size, self.patch_size = image_geometry(image_size, patch_size)
        self.max_tokens = facts.check_max_tokens(max_tokens_per_depth, depth)
        self.channels = channels
        self.grid = tuple(s // p for s, p in zip(self.size, self.patch_size))

        self.to_patch_embedding = PatchEmbed(self.patch_size, channels, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, math.prod(self.grid) + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = ATSTransformer(dim, depth, self.max_tokens, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = Linear(dim, num_classes)

    def _num_patches(self, shape: Sequence[int]) -> int:
        spatial = check_input(
            shape, name="img", channels_last=False, channels=self.channels, max_size=self.size,
            patch=self.patch_size, axis_names=IMAGE_AXES,
        )  # fmt: skip
        (h, w), (ph, pw) = spatial, self.patch_size
        return (h // ph) * (w // pw)

    def noise_shapes(self, img_shape: Sequence[int]) -> tuple[tuple[int, int, int] | None, ...]:
        """The shape of each layer's explicit draw for images of ``img_shape`` ``(b, c, h, w)``: ``(b, k, n)`` for
        a layer that samples (it reads ``n`` patch tokens, more than its budget ``k``), None for one that does not."""
        return facts.noise_shapes(img_shape[0], self._num_patches(img_shape), self.max_tokens)

    def forward(
        self,
        img: Tensor,
        return_sampled_token_ids: bool = False,
        *,
        noise: Sequence[Tensor | None] | None = None,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Any:
        features = Features.request(return_features, return_attn)
        num_patches = self._num_patches(img.shape)
        if noise is not None:
            if isinstance(noise, (list, tuple)):
                noise = [None if u is None else torch.as_tensor(u, device=img.device) for u in noise]
            facts.check_noise(noise, img.shape[0], num_patches, self.max_tokens)
        x, grid = self.to_patch_embedding(img)
        x = x + crop_grid(self.pos_embedding[:, 1:], self.grid, grid)
        cls = (self.cls_token + self.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        x = self.dropout(torch.cat((cls, x), dim=1))
        x, token_ids = self.transformer(x, noise=noise, features=features)
        x = x[:, 0]
        if features is not None:
            features.add("pre_logits", x)
        logits = self.mlp_head(x)
        return with_features((logits, token_ids) if return_sampled_token_ids else logits, features)
