"""Attention variants of the deeper ViTs, composed into :class:`~vit_torch.layers.Block` as its ``attn``.

- :class:`TalkingHeadsAttention`: attention whose heads are mixed by learned ``(heads, heads)`` matrices before
  the softmax and after it ("Talking-Heads Attention", Shazeer et al., 2020; CaiT). With only the
  post-softmax mixing and a LayerNorm over the heads it is DeepViT's re-attention (Zhou et al., 2021).
- :class:`ClassAttention`: the class token(s) query, the keys and values are the class token(s) and the patches
  (CaiT's class-attention stage, XCiT).
- :class:`TalkingHeadsBlock`: a ``Block`` built with one of these as its attention, so that a
  :class:`~vit_torch.layers.Transformer` stacks it (``block=TalkingHeadsBlock``, options through the stack).
- :class:`LayerDropout` draws which blocks of a stack run in a training call ("Reducing Transformer Depth on
  Demand with Structured Dropout", Fan et al., 2019); :class:`LayerDropTransformer` is a stack that runs only
  those, and passes a ``context`` (and any other keyword, e.g. XCiT's patch ``grid``) to its blocks.
- :class:`CrossCovarianceAttention`: attention over the feature axis (XCiT's cross-covariance attention,
  El-Nouby et al., 2021): each head's ``(dim_head, dim_head)`` map from L2-normalized queries and keys.
- :class:`LocalitySelfAttention`: attention with a learned temperature whose tokens do not attend to themselves
  (locality self-attention of the ViT for small datasets, Lee et al., 2021); :class:`LocalityBlock` is a ``Block``
  built with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.core.features import Features, block_label
from vit_torch.layers import Block, Linear, Transformer, project_qkv


def mix_heads(attn: Tensor, weight: Tensor) -> Tensor:
    """Attention maps ``(b, h, i, j)`` mixed across heads: ``out[:, g] = sum_h attn[:, h] * weight[h, g]``."""
    return torch.einsum("bhij,hg->bgij", attn, weight)


class TalkingHeadsAttention(nn.Module):
    """Multi-head attention with head mixing ("Talking-Heads Attention", Shazeer et al., 2020), as CaiT uses it.

    The logits ``q k^T / sqrt(dim_head)`` are mixed across heads by ``mix_heads_pre_attn`` (``pre_mix``), the
    softmax weights (after attention dropout) by ``mix_heads_post_attn`` (``post_mix``), then optionally normalized
    over the heads by ``head_norm`` (a LayerNorm of width ``heads``). ``pre_mix=False, head_norm=True`` is DeepViT's
    re-attention ("DeepViT: Towards Deeper Vision Transformer", Zhou et al., 2021).

    The mixing matrices start standard normal, as the reference's (the constructor draws them from torch's
    generator; the shared initializer's rule is ``("normal", 1.0)``). On digits (CaiT of 4 + 2 blocks with 4 and 8
    heads, DeepViT of 4 blocks) that start trained to about the same held-out accuracy as the identity and as a
    normal of std ``1/sqrt(heads)``.
    The identity would starve re-attention's head norm: it would normalize the heads' softmax maps themselves, which
    differ across heads by less than the norm's ``sqrt(eps)`` on long sequences (variance 6e-6 at 197 tokens,
    against 2e-4 after a standard normal mixing), so the norm would start dominated by its eps.

    ``forward(x, mask, context=c)`` is cross-attention: queries from ``x``, keys and values from ``c`` through the
    same ``to_qkv`` weights. ``return_attn=True`` also returns the attention maps ``(b, heads, n_q, n_k)``: the
    softmax's probabilities (after the pre-softmax mixing, before the post-softmax one and the head norm), as the
    reference's ``Recorder`` reads them; each row sums to one.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        *,
        pre_mix: bool = True,
        post_mix: bool = True,
        head_norm: bool = False,
        qkv_bias: bool = False,
        attn_dropout: float | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = Linear(dim, inner * 3, bias=qkv_bias)
        self.mix_heads_pre_attn = nn.Parameter(torch.randn(heads, heads)) if pre_mix else None
        self.mix_heads_post_attn = nn.Parameter(torch.randn(heads, heads)) if post_mix else None
        self.head_norm = nn.LayerNorm(heads, eps=eps) if head_norm else None
        self.attn_drop = nn.Dropout(dropout if attn_dropout is None else attn_dropout)
        self.to_out = Linear(inner, dim)
        self.out_drop = nn.Dropout(dropout)

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): the mixing matrices start standard normal."""
        names = [n for n in ("mix_heads_pre_attn", "mix_heads_post_attn") if getattr(self, n) is not None]
        return {n: ("normal", 1.0) for n in names}

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, context: Tensor | None = None, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in project_qkv(self.to_qkv, x, context))
        probs = self.probabilities(q, k, mask)
        weights = self.mix(probs)
        out = self.out_drop(self.to_out((weights @ v).transpose(1, 2).flatten(-2)))
        return (out, probs) if return_attn else out

    def probabilities(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """The softmax's probabilities ``(b, h, n_q, n_k)`` of the (pre-mixed) logits of ``(b, h, n, d)`` queries
        and keys."""
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if self.mix_heads_pre_attn is not None:
            logits = mix_heads(logits, self.mix_heads_pre_attn)
        if mask is not None:  # after the mixing: a masked key gets no weight in any head
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1)

    def mix(self, probs: Tensor) -> Tensor:
        """The weights that multiply the values: attention dropout, the post-softmax mixing, the head norm."""
        attn = self.attn_drop(probs)
        if self.mix_heads_post_attn is not None:
            attn = mix_heads(attn, self.mix_heads_post_attn)
        if self.head_norm is not None:
            attn = self.head_norm(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return attn

    def attn_shape(self, x: Tensor, context: Tensor | None = None) -> tuple[int, int, int, int]:
        """The shape of the attention maps that ``forward(x, context=context, return_attn=True)`` returns."""
        keys = x if context is None else context
        return (x.shape[0], self.heads, x.shape[1], keys.shape[1])


class ClassAttention(TalkingHeadsAttention):
    """Class attention ("Going deeper with Image Transformers", Touvron et al., 2021): only the class token(s)
    ``x`` query; the keys and values are ``[x, context]``, the class token(s) followed by the patches.

    The patches ``context`` are read as given (the block normalizes only its own stream ``x``), as the reference
    does. Head mixing is off unless asked for (``pre_mix``, ``post_mix``: CaiT's class attention talks too).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        *,
        pre_mix: bool = False,
        post_mix: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(dim, heads, dim_head, dropout, pre_mix=pre_mix, post_mix=post_mix, **options)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, context: Tensor | None = None, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("ClassAttention needs context=: the patch tokens (b, n, dim) the class token reads")
        return super().forward(x, mask, context=torch.cat((x, context), dim=1), return_attn=return_attn)

    def attn_shape(self, x: Tensor, context: Tensor | None = None) -> tuple[int, int, int, int]:
        n = x.shape[1] + (0 if context is None else context.shape[1])
        return (x.shape[0], self.heads, x.shape[1], n)


class TalkingHeadsBlock(Block):
    """A :class:`~vit_torch.layers.Block` whose attention is a :class:`TalkingHeadsAttention` (``pre_mix``,
    ``post_mix``, ``head_norm``), or a :class:`ClassAttention` with ``class_attention=True``; every other option
    (``layer_scale``, ``drop_path``, ``eps`` ...) is the block's."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        *,
        pre_mix: bool = True,
        post_mix: bool = True,
        head_norm: bool = False,
        class_attention: bool = False,
        qkv_bias: bool = False,
        attn_dropout: float | None = None,
        eps: float = 1e-5,
        **options: Any,
    ) -> None:
        attn = (ClassAttention if class_attention else TalkingHeadsAttention)(
            dim, heads, dim_head, dropout, pre_mix=pre_mix, post_mix=post_mix, head_norm=head_norm,
            qkv_bias=qkv_bias, attn_dropout=attn_dropout, eps=eps,
        )  # fmt: skip
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, eps=eps, attn=attn, **options)


class LayerDropout(nn.Module):
    """Which blocks of a stack run this call (layer dropout, Fan et al., 2019, as CaiT's reference uses it).

    ``forward(n)`` in training draws from torch's RNG: each of the ``n`` blocks is dropped with probability
    ``prob``, and when all are, one drawn at random runs anyway. It returns one bool per block, or None (every
    block runs: eval mode, or ``prob == 0``, draws nothing). ``forward(n, keep)`` returns the explicit draw
    ``keep`` (one boolean per block) instead, in either mode.
    """

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"layer dropout probability must be in [0, 1), got {prob!r}")
        self.prob = float(prob)

    def forward(self, n: int, keep: Sequence[bool] | Tensor | None = None) -> list[bool] | None:
        if keep is not None:
            flags = torch.as_tensor(keep, dtype=torch.bool)
            if flags.shape != (n,):
                raise ValueError(f"keep must hold one boolean per block, shape ({n},), got shape {tuple(flags.shape)}")
            return flags.tolist()
        if not self.training or self.prob == 0.0 or n == 0:
            return None
        drop = torch.rand(n) < self.prob
        if bool(drop.all()):
            drop[int(torch.randint(n, ()))] = False
        return (~drop).tolist()


class LayerDropTransformer(Transformer):
    """A :class:`~vit_torch.layers.Transformer` whose blocks are dropped at random in training (``layer_dropout``,
    see :class:`LayerDropout`) and read a ``context`` (class attention's patches).

    ``forward(x, keep=..., context=..., features=f, prefix=...)``: ``keep`` (one boolean per block) is an explicit
    draw; a dropped block's output is its input, and with ``return_attn`` its attention maps are zeros (it attended
    to nothing; their shape comes from the attention's ``attn_shape``), so the labels are the same whichever blocks
    ran. Other keyword arguments (``grid=`` for XCiT's block) go to every block unchanged.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        layer_dropout: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(dim, depth, heads, dim_head, mlp_dim, dropout, **options)
        self.layer_dropout = LayerDropout(layer_dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        keep: Sequence[bool] | Tensor | None = None,
        context: Tensor | None = None,
        features: Features | None = None,
        prefix: str = "",
        **block_options: Any,
    ) -> Tensor:
        flags = self.layer_dropout(len(self.blocks), keep)
        extra = block_options if context is None else {**block_options, "context": context}
        for i, block in enumerate(self.blocks):
            label = block_label(i, prefix)
            if flags is not None and not flags[i]:
                if features is not None and features.attn:
                    shape = block.attn.attn_shape(x, context)
                    features.add_attn(label, x.new_zeros(shape))
            elif features is not None and features.attn:
                x, attn = block(x, mask, return_attn=True, **extra)
                features.add_attn(label, attn)
            else:
                x = block(x, mask, **extra)
            if features is not None:
                features.add(label, x)
        return self.norm(x)


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x`` divided by its L2 norm over the last axis (at least ``eps``), as ``F.normalize``."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


class CrossCovarianceAttention(nn.Module):
    """Cross-covariance attention ("XCiT: Cross-Covariance Image Transformers", El-Nouby et al., 2021).

    Attention over the feature axis instead of the tokens: for each head, the queries and keys ``(d, n)`` (features
    by tokens) are L2-normalized along the tokens, their ``(d, d)`` cosine similarities are scaled by
    ``exp(temperature)`` (a learned ``(heads, 1, 1)`` parameter starting at ones, so the logits start scaled by
    ``e``; imported weights keep that meaning), softmaxed over the last axis, dropped out, and mix the value
    features at every token; then ``to_out``. Cost is linear in the number of tokens.

    Plugs into :class:`~vit_torch.layers.Block` as its ``attn``: ``forward(x, mask=None, return_attn=...)`` on
    ``(b, n, dim)``; ``return_attn=True`` also returns the softmax's maps ``(b, heads, dim_head, dim_head)``, each row
    summing to one. A token mask has no meaning here (no token attends to another) and is refused.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        *,
        qkv_bias: bool = False,
        attn_dropout: float | None = None,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_qkv = Linear(dim, inner * 3, bias=qkv_bias)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.attn_drop = nn.Dropout(dropout if attn_dropout is None else attn_dropout)
        self.to_out = Linear(inner, dim)
        self.out_drop = nn.Dropout(dropout)

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): ``temperature`` starts at ones (a scale of ``e``)."""
        return {"temperature": ("ones",)}

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        if mask is not None:
            raise ValueError("CrossCovarianceAttention takes no mask: it attends over features, not between tokens")
        # (b, n, h * d) to (b, h, d, n): features by tokens
        q, k, v = (t.unflatten(-1, (self.heads, -1)).permute(0, 2, 3, 1) for t in self.to_qkv(x).chunk(3, dim=-1))
        q, k = l2_normalize(q), l2_normalize(k)
        probs = ((q @ k.transpose(-2, -1)) * self.temperature.exp()).softmax(dim=-1)
        out = self.attn_drop(probs) @ v  # (b, h, d, n)
        out = self.out_drop(self.to_out(out.permute(0, 3, 1, 2).flatten(-2)))
        return (out, probs) if return_attn else out

    def attn_shape(self, x: Tensor, context: Tensor | None = None) -> tuple[int, int, int, int]:
        """The shape of the maps ``forward(x, return_attn=True)`` returns: ``(b, heads, dim_head, dim_head)``."""
        return (x.shape[0], self.heads, self.dim_head, self.dim_head)


def locality_mask(n: int, mask: Tensor | None = None, device: torch.device | None = None) -> Tensor:
    """Where a query may attend in locality self-attention: to every token but itself (a lone token attends to
    itself, the only key there is), and only where ``mask`` (broadcastable to ``(b, heads, n, n)``) allows."""
    allowed = torch.eye(n, dtype=torch.bool, device=device)
    allowed = allowed if n == 1 else ~allowed
    return allowed if mask is None else allowed & mask


class LocalitySelfAttention(nn.Module):
    """Locality self-attention, LSA ("Vision Transformer for Small-Size Datasets", Lee, Lee and Song, 2021).

    Softmax attention with two changes that sharpen its maps: the logits ``q k^T`` are multiplied by a learned
    ``exp(temperature)`` instead of ``1 / sqrt(dim_head)`` (``temperature`` is a scalar holding the logarithm of the
    scale, starting at ``log(dim_head ** -0.5)``: the layer starts as plain attention; imported weights keep that
    meaning), and a token does not attend to itself (the diagonal of the logits is masked; see
    :func:`locality_mask`). Then the softmax, attention dropout, the values, ``to_out`` and its dropout.

    Plugs into :class:`~vit_torch.layers.Block` as its ``attn`` (:class:`LocalityBlock`): ``forward(x, mask,
    return_attn=...)`` on ``(b, n, dim)``, with an optional boolean ``mask`` broadcastable to ``(b, heads, n, n)``,
    True where a query may attend to a key. ``return_attn=True`` also returns the softmax's maps
    ``(b, heads, n, n)``, whose diagonal is zero.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        *,
        qkv_bias: bool = False,
        attn_dropout: float | None = None,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_qkv = Linear(dim, inner * 3, bias=qkv_bias)
        self.temperature = nn.Parameter(torch.tensor(self.temperature_init))
        self.attn_drop = nn.Dropout(dropout if attn_dropout is None else attn_dropout)
        self.to_out = Linear(inner, dim)
        self.out_drop = nn.Dropout(dropout)

    @property
    def temperature_init(self) -> float:
        """Where ``temperature`` starts: ``log(dim_head ** -0.5)``, the logarithm of the usual scale."""
        return math.log(self.dim_head**-0.5)

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): ``temperature`` starts at :attr:`temperature_init`."""
        return {"temperature": ("constant", self.temperature_init)}

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        allowed = locality_mask(x.shape[1], mask, x.device)
        scale = self.temperature.exp()
        if return_attn:
            logits = (q @ k.transpose(-2, -1)) * scale
            probs = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min).softmax(dim=-1)
            out = self.attn_drop(probs) @ v
        else:  # fused: the learned scale goes into the queries
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q * scale.to(q.dtype), k, v, attn_mask=allowed, dropout_p=p, scale=1.0)
        out = self.out_drop(self.to_out(out.transpose(1, 2).flatten(-2)))
        return (out, probs) if return_attn else out

    def attn_shape(self, x: Tensor, context: Tensor | None = None) -> tuple[int, int, int, int]:
        """The shape of the maps ``forward(x, return_attn=True)`` returns: ``(b, heads, n, n)``."""
        return (x.shape[0], self.heads, x.shape[1], x.shape[1])


class LocalityBlock(Block):
    """A :class:`~vit_torch.layers.Block` whose attention is a :class:`LocalitySelfAttention`, so that a
    :class:`~vit_torch.layers.Transformer` stacks it (``block=LocalityBlock``); every other option (``drop_path``,
    ``layer_scale``, ``eps`` ...) is the block's."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        *,
        qkv_bias: bool = False,
        attn_dropout: float | None = None,
        **options: Any,
    ) -> None:
        attn = LocalitySelfAttention(dim, heads, dim_head, dropout, qkv_bias=qkv_bias, attn_dropout=attn_dropout)
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, attn=attn, **options)
