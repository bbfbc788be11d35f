"""Attention variants of the deeper ViTs, composed into :class:`~vit_flax.layers.Block` as its ``attn``.

Mirrors ``vit_torch.attention_variants``: same classes, arguments and attribute paths.

- :class:`TalkingHeadsAttention`: attention whose heads are mixed by learned ``(heads, heads)`` matrices before
  the softmax and after it ("Talking-Heads Attention", Shazeer et al., 2020; CaiT). With only the
  post-softmax mixing and a LayerNorm over the heads it is DeepViT's re-attention (Zhou et al., 2021).
- :class:`ClassAttention`: the class token(s) query, the keys and values are the class token(s) and the patches
  (CaiT's class-attention stage, XCiT).
- :class:`TalkingHeadsBlock`: a ``Block`` built with one of these as its attention, so that a
  :class:`~vit_flax.layers.Transformer` stacks it (``block=TalkingHeadsBlock``, options through the stack).
- :class:`LayerDropout` draws which blocks of a stack run in a training call ("Reducing Transformer Depth on
  Demand with Structured Dropout", Fan et al., 2019); :class:`LayerDropTransformer` is a stack that applies
  that draw, and passes a ``context`` (and any other keyword, e.g. XCiT's patch ``grid``) to its blocks.
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

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.attention import attend
from vit_flax.layers import Block, Transformer, layer_norm, project_qkv
from vit_parity.core.features import Features, block_label

Array = jax.Array


def mix_heads(attn: Array, weight: Array) -> Array:
    """Attention maps ``(b, h, i, j)`` mixed across heads: ``out[:, g] = sum_h attn[:, h] * weight[h, g]``."""
    return jnp.einsum("bhij,hg->bgij", attn, weight.astype(attn.dtype))


class TalkingHeadsAttention(nnx.Module):
    """Multi-head attention with head mixing ("Talking-Heads Attention", Shazeer et al., 2020), as CaiT uses it.

    The logits ``q k^T / sqrt(dim_head)`` are mixed across heads by ``mix_heads_pre_attn`` (``pre_mix``), the
    softmax weights (after attention dropout) by ``mix_heads_post_attn`` (``post_mix``), then optionally normalized
    over the heads by ``head_norm`` (a LayerNorm of width ``heads``). ``pre_mix=False, head_norm=True`` is DeepViT's
    re-attention ("DeepViT: Towards Deeper Vision Transformer", Zhou et al., 2021).

    The mixing matrices start standard normal, as the reference's (the constructor draws them from the 'params'
    stream; the shared initializer's rule is ``("normal", 1.0)``). On digits (CaiT of 4 + 2 blocks with 4 and 8
    heads, DeepViT of 4 blocks) that start trained to about the same held-out accuracy as the identity and as a
    normal of std ``1/sqrt(heads)``.
    The identity would starve re-attention's head norm: it would normalize the heads' softmax maps themselves, which
    differ across heads by less than the norm's ``sqrt(eps)`` on long sequences (variance 6e-6 at 197 tokens,
    against 2e-4 after a standard normal mixing), so the norm would start dominated by its eps.

    ``__call__(x, mask, context=c)`` is cross-attention: queries from ``x``, keys and values from ``c`` through the
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nnx.Linear(dim, inner * 3, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        normal = jax.random.normal
        self.mix_heads_pre_attn = nnx.Param(normal(rngs.params(), (heads, heads))) if pre_mix else None
        self.mix_heads_post_attn = nnx.Param(normal(rngs.params(), (heads, heads))) if post_mix else None
        self.head_norm = layer_norm(heads, eps, rngs, dtype) if head_norm else None
        self.attn_drop = nnx.Dropout(dropout if attn_dropout is None else attn_dropout, rngs=rngs)
        self.to_out = nnx.Linear(inner, dim, dtype=dtype, rngs=rngs)
        self.out_drop = nnx.Dropout(dropout, rngs=rngs)

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): the mixing matrices start standard normal."""
        names = [n for n in ("mix_heads_pre_attn", "mix_heads_post_attn") if getattr(self, n) is not None]
        return {n: ("normal", 1.0) for n in names}

    def __call__(
        self, x: Array, mask: Array | None = None, *, context: Array | None = None, return_attn: bool = False
    ) -> Array | tuple[Array, Array]:
        b, n, _ = x.shape
        q, k, v = project_qkv(self.to_qkv, x, self.heads, context)
        probs = self.probabilities(q, k, mask)
        out = (self.mix(probs) @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
        out = self.out_drop(self.to_out(out))
        return (out, probs) if return_attn else out

    def probabilities(self, q: Array, k: Array, mask: Array | None = None) -> Array:
        """The softmax's probabilities ``(b, h, n_q, n_k)`` of the (pre-mixed) logits of ``(b, h, n, d)`` queries
        and keys."""
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
        if self.mix_heads_pre_attn is not None:
            logits = mix_heads(logits, self.mix_heads_pre_attn[...])
        if mask is not None:  # after the mixing: a masked key gets no weight in any head
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        return jax.nn.softmax(logits, axis=-1)

    def mix(self, probs: Array) -> Array:
        """The weights that multiply the values: attention dropout, the post-softmax mixing, the head norm."""
        attn = self.attn_drop(probs)
        if self.mix_heads_post_attn is not None:
            attn = mix_heads(attn, self.mix_heads_post_attn[...])
        if self.head_norm is not None:
            attn = jnp.moveaxis(self.head_norm(jnp.moveaxis(attn, 1, -1)), -1, 1)
        return attn


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
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        super().__init__(dim, heads, dim_head, dropout, pre_mix=pre_mix, post_mix=post_mix, rngs=rngs, **options)

    def __call__(
        self, x: Array, mask: Array | None = None, *, context: Array | None = None, return_attn: bool = False
    ) -> Array | tuple[Array, Array]:
        if context is None:
            raise ValueError("ClassAttention needs context=: the patch tokens (b, n, dim) the class token reads")
        context = jnp.concatenate((x, context.astype(x.dtype)), axis=1)
        return super().__call__(x, mask, context=context, return_attn=return_attn)


class TalkingHeadsBlock(Block):
    """A :class:`~vit_flax.layers.Block` whose attention is a :class:`TalkingHeadsAttention` (``pre_mix``,
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        attn = (ClassAttention if class_attention else TalkingHeadsAttention)(
            dim, heads, dim_head, dropout, pre_mix=pre_mix, post_mix=post_mix, head_norm=head_norm,
            qkv_bias=qkv_bias, attn_dropout=attn_dropout, eps=eps, dtype=dtype, rngs=rngs,
        )  # fmt: skip
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, eps=eps, attn=attn, dtype=dtype, rngs=rngs, **options)


class LayerDropout(nnx.Module):
    """Which blocks of a stack run this call (layer dropout, Fan et al., 2019, as CaiT's reference uses it).

    ``__call__(n)`` in training draws from the 'dropout' stream: each of the ``n`` blocks is dropped with
    probability ``prob``, and when all are, one drawn at random runs anyway. It returns a boolean array ``(n,)``,
    or None (every block runs: eval mode, or ``prob == 0``, draws nothing). ``__call__(n, keep)`` returns the
    explicit draw ``keep`` (one boolean per block) instead, in either mode. The draw is an array, not a Python
    value: a compiled step is traced once whichever blocks it keeps. Follows ``model.train()`` / ``model.eval()``.
    """

    def __init__(self, prob: float = 0.0, *, rngs: nnx.Rngs) -> None:
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"layer dropout probability must be in [0, 1), got {prob!r}")
        self.prob = float(prob)
        self.deterministic = False
        self.rngs = rngs["dropout"].fork()

    def __call__(self, n: int, keep: Sequence[bool] | Array | None = None) -> Array | None:
        if keep is not None:
            flags = jnp.asarray(keep).astype(bool)
            if flags.shape != (n,):
                raise ValueError(f"keep must hold one boolean per block, shape ({n},), got shape {tuple(flags.shape)}")
            return flags
        if self.deterministic or self.prob == 0.0 or n == 0:
            return None
        drop = jax.random.uniform(self.rngs(), (n,)) < self.prob
        rescued = jax.random.randint(self.rngs(), (), 0, n)
        return ~drop | (jnp.all(drop) & (jnp.arange(n) == rescued))


def _batch_stats(module: nnx.Module) -> list[nnx.BatchStat]:
    """The batch-statistics variables (BatchNorm's running mean and variance) held anywhere in ``module``."""
    return [node for _, node in nnx.iter_graph(module) if isinstance(node, nnx.BatchStat)]


class LayerDropTransformer(Transformer):
    """A :class:`~vit_flax.layers.Transformer` whose blocks are dropped at random in training (``layer_dropout``,
    see :class:`LayerDropout`) and read a ``context`` (class attention's patches).

    ``__call__(x, keep=..., context=..., features=f, prefix=...)``: ``keep`` (one boolean per block) is an explicit
    draw. A dropped block's output is its input (``jnp.where`` on the block's output: every block is computed and
    the shapes do not depend on the draw), and with ``return_attn`` its attention maps are zeros (it attended to
    nothing), so the labels are the same whichever blocks ran. A dropped block's batch statistics (BatchNorm's
    running mean and variance) are put back as they were, as if it had not run (torch's stack skips it). Other
    keyword arguments (``grid=`` for XCiT's block) go to every block unchanged.
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
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        super().__init__(dim, depth, heads, dim_head, mlp_dim, dropout, rngs=rngs, **options)
        self.layer_dropout = LayerDropout(layer_dropout, rngs=rngs)

    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        *,
        keep: Sequence[bool] | Array | None = None,
        context: Array | None = None,
        features: Features | None = None,
        prefix: str = "",
        **block_options: Any,
    ) -> Array:
        flags = self.layer_dropout(len(self.blocks), keep)
        extra = block_options if context is None else {**block_options, "context": context}
        record_attn = features is not None and features.attn
        for i, block in enumerate(self.blocks):
            label = block_label(i, prefix)
            stats = _batch_stats(block) if flags is not None else []
            before = [v[...] for v in stats]
            out = block(x, mask, return_attn=record_attn, **extra)
            y, attn = out if record_attn else (out, None)
            if flags is not None:
                y = jnp.where(flags[i], y, x)
                attn = None if attn is None else jnp.where(flags[i], attn, jnp.zeros_like(attn))
                for v, old in zip(stats, before):
                    v[...] = jnp.where(flags[i], v[...], old)
            x = y
            if record_attn:
                features.add_attn(label, attn)
            if features is not None:
                features.add(label, x)
        return x if self.norm is None else self.norm(x)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """``x`` divided by its L2 norm over the last axis (at least ``eps``), as torch's ``F.normalize``."""
    return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)), eps)


class CrossCovarianceAttention(nnx.Module):
    """Cross-covariance attention ("XCiT: Cross-Covariance Image Transformers", El-Nouby et al., 2021).

    Attention over the feature axis instead of the tokens: for each head, the queries and keys ``(d, n)`` (features
    by tokens) are L2-normalized along the tokens, their ``(d, d)`` cosine similarities are scaled by
    ``exp(temperature)`` (a learned ``(heads, 1, 1)`` parameter starting at ones, so the logits start scaled by
    ``e``; imported weights keep that meaning), softmaxed over the last axis, dropped out, and mix the value
    features at every token; then ``to_out``. Cost is linear in the number of tokens.

    Plugs into :class:`~vit_flax.layers.Block` as its ``attn``: ``__call__(x, mask=None, return_attn=...)`` on
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_qkv = nnx.Linear(dim, inner * 3, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.temperature = nnx.Param(jnp.ones((heads, 1, 1), jnp.float32))
        self.attn_drop = nnx.Dropout(dropout if attn_dropout is None else attn_dropout, rngs=rngs)
        self.to_out = nnx.Linear(inner, dim, dtype=dtype, rngs=rngs)
        self.out_drop = nnx.Dropout(dropout, rngs=rngs)

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): ``temperature`` starts at ones (a scale of ``e``)."""
        return {"temperature": ("ones",)}

    def __call__(
        self, x: Array, mask: Array | None = None, *, return_attn: bool = False
    ) -> Array | tuple[Array, Array]:
        if mask is not None:
            raise ValueError("CrossCovarianceAttention takes no mask: it attends over features, not between tokens")
        b, n, _ = x.shape
        # (b, n, 3 * h * d) to three (b, h, d, n): features by tokens, in one transpose
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, -1).transpose(2, 0, 3, 4, 1)
        q, k = l2_normalize(q), l2_normalize(k)
        logits = jnp.einsum("bhin,bhjn->bhij", q, k) * jnp.exp(self.temperature[...]).astype(q.dtype)
        probs = jax.nn.softmax(logits, axis=-1)
        out = self.attn_drop(probs) @ v  # (b, h, d, n)
        out = self.out_drop(self.to_out(out.transpose(0, 3, 1, 2).reshape(b, n, -1)))
        return (out, probs) if return_attn else out


def locality_mask(n: int, mask: Array | None = None) -> Array:
    """Where a query may attend in locality self-attention: to every token but itself (a lone token attends to
    itself, the only key there is), and only where ``mask`` (broadcastable to ``(b, heads, n, n)``) allows."""
    eye = jnp.eye(n, dtype=bool)
    allowed = eye if n == 1 else ~eye
    return allowed if mask is None else allowed & jnp.asarray(mask, bool)


class LocalitySelfAttention(nnx.Module):
    """Locality self-attention, LSA ("Vision Transformer for Small-Size Datasets", Lee, Lee and Song, 2021).

    Softmax attention with two changes that sharpen its maps: the logits ``q k^T`` are multiplied by a learned
    ``exp(temperature)`` instead of ``1 / sqrt(dim_head)`` (``temperature`` is a scalar holding the logarithm of the
    scale, starting at ``log(dim_head ** -0.5)``: the layer starts as plain attention; imported weights keep that
    meaning), and a token does not attend to itself (the diagonal of the logits is masked; see
    :func:`locality_mask`). Then the softmax, attention dropout, the values, ``to_out`` and its dropout.

    Plugs into :class:`~vit_flax.layers.Block` as its ``attn`` (:class:`LocalityBlock`): ``__call__(x, mask,
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_qkv = nnx.Linear(dim, inner * 3, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.temperature = nnx.Param(jnp.asarray(self.temperature_init, jnp.float32))
        self.attn_drop = nnx.Dropout(dropout if attn_dropout is None else attn_dropout, rngs=rngs)
        self.to_out = nnx.Linear(inner, dim, dtype=dtype, rngs=rngs)
        self.out_drop = nnx.Dropout(dropout, rngs=rngs)

    @property
    def temperature_init(self) -> float:
        """Where ``temperature`` starts: ``log(dim_head ** -0.5)``, the logarithm of the usual scale."""
        return math.log(self.dim_head**-0.5)

    @property
    def init_rules(self) -> dict[str, tuple]:
        """For the shared initializer (``vit_parity.core.init``): ``temperature`` starts at :attr:`temperature_init`."""
        return {"temperature": ("constant", self.temperature_init)}

    def __call__(
        self, x: Array, mask: Array | None = None, *, return_attn: bool = False
    ) -> Array | tuple[Array, Array]:
        b, n, _ = x.shape
        # (b, n, 3 * h * d) to three (b, h, n, d), in one transpose
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, -1).transpose(2, 0, 3, 1, 4)
        allowed = locality_mask(n, mask)
        scale = jnp.exp(self.temperature[...])
        probs = None
        if return_attn or not (self.attn_drop.deterministic or self.attn_drop.rate == 0.0):
            logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale.astype(q.dtype)
            probs = jax.nn.softmax(jnp.where(allowed, logits, jnp.finfo(logits.dtype).min), axis=-1)
            out = self.attn_drop(probs) @ v
        else:  # attend scales by 1 / sqrt(dim_head): the learned scale goes into the queries, times sqrt(dim_head)
            out = attend(q * (scale * math.sqrt(q.shape[-1])).astype(q.dtype), k, v, allowed)
        out = self.out_drop(self.to_out(out.transpose(0, 2, 1, 3).reshape(b, n, -1)))
        return (out, probs) if return_attn else out


class LocalityBlock(Block):
    """A :class:`~vit_flax.layers.Block` whose attention is a :class:`LocalitySelfAttention`, so that a
    :class:`~vit_flax.layers.Transformer` stacks it (``block=LocalityBlock``); every other option (``drop_path``,
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        attn = LocalitySelfAttention(
            dim, heads, dim_head, dropout, qkv_bias=qkv_bias, attn_dropout=attn_dropout, dtype=dtype, rngs=rngs
        )
        super().__init__(dim, heads, dim_head, mlp_dim, dropout, attn=attn, dtype=dtype, rngs=rngs, **options)
