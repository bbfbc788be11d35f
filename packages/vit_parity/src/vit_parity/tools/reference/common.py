"""Rules the tables share: the reference's usual transformer layers, attention and feed-forward, patch embedding,
and the differences several architectures have."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from vit_parity.tools.reference.importer import Config, Difference, Rule


def add_batch_axis(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """``(n, d)`` to ``(1, n, d)``: the reference's ViT keeps its class token and positions without a batch axis."""
    return arrays[0][None]


def flatten_grid(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """``(1, frames, patches, d)`` to ``(1, frames * patches, d)``: ViViT's positions over the tubelet grid."""
    a = arrays[0]
    return a.reshape(1, -1, a.shape[-1])


def concat_rows(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """Separate query and key-value projections (output rows) into one ``to_qkv``."""
    return np.concatenate(arrays, axis=0)


def project_out(config: Config) -> bool:
    """Whether the attention has an output projection: not with one head as wide as the model (both libraries)."""
    return not (config["heads"] == 1 and config["dim_head"] == config["dim"])


def attention(src: str, dst: str, *, out: str, out_bias: bool, when: Callable[[Config], bool] | None) -> tuple:
    """The reference's usual attention (a LayerNorm ``norm`` inside it, a bias-free ``to_qkv``, ``out`` the
    output projection) as our block's ``norm1`` and ``attn``."""
    return (
        Rule(f"{src}.norm", f"{dst}.norm1", "layernorm"),
        Rule(f"{src}.to_qkv", f"{dst}.attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{src}.{out}", f"{dst}.attn.to_out", "linear", leaves=None if out_bias else ("weight",), when=when),
    )


def feedforward(src: str, dst: str, *, out: int) -> tuple:
    """The reference's feed-forward ``Sequential(LayerNorm, Linear, GELU, [Dropout,] Linear ...)`` as our block's
    ``norm2`` and ``ff`` (``out``: the index of the second Linear)."""
    return (
        Rule(f"{src}.0", f"{dst}.norm2", "layernorm"),
        Rule(f"{src}.1", f"{dst}.ff.fc1", "linear"),
        Rule(f"{src}.{out}", f"{dst}.ff.fc2", "linear"),
    )


def layers(src: str, dst: str, n: str = "i", *, simple: bool = False) -> tuple:
    """``{src}.layers.{n}``: the reference's pre-norm transformer layers (ViT's, or SimpleViT's with a bias-free
    output projection that is always there and no dropout) as ``{dst}.blocks.{n}``; plus the final norm."""
    layer, block = f"{src}.layers.{{{n}}}", f"{dst}.blocks.{{{n}}}"
    attn = attention(
        f"{layer}.0", block, out="to_out" if simple else "to_out.0", out_bias=not simple,
        when=None if simple else project_out,
    )  # fmt: skip
    return (*attn, *feedforward(f"{layer}.1.net", block, out=3 if simple else 4))


def patch_embedding(src: str = "to_patch_embedding", first: int = 1) -> tuple:
    """``Sequential([Rearrange,] LayerNorm, Linear, LayerNorm)`` as our ``PatchEmbed`` (same patch layout)."""
    return (
        Rule(f"{src}.{first}", "to_patch_embedding.pre_norm", "layernorm"),
        Rule(f"{src}.{first + 1}", "to_patch_embedding.proj", "linear"),
        Rule(f"{src}.{first + 2}", "to_patch_embedding.post_norm", "layernorm"),
    )


def depth(config: Config) -> dict[str, int]:
    return {"i": config["depth"]}


def only_when(condition: Callable[[Config], bool], *rules: Rule) -> tuple:
    """``rules``, each kept to the configs where ``condition`` (and its own ``when``) holds."""

    def both(rule: Rule) -> Callable[[Config], bool]:
        own = rule.when
        return condition if own is None else (lambda c: condition(c) and own(c))

    return tuple(replace(r, when=both(r)) for r in rules)


MEAN_POOL_VIT = Difference(
    "with pool='mean' the reference builds no class token and averages the patch tokens; this ViT keeps its "
    "class token and averages it with them",
    lambda c: c["pool"] == "mean",
)


NO_HEAD = Difference(
    "with num_classes=0 the reference has no head and returns the tokens",
    lambda c: c["num_classes"] < 1,
)


ONE_WIDE_HEAD = Difference(
    "with one head as wide as the model (heads=1, dim_head=dim) this library's attention has no output "
    "projection; the reference's SimpleViT keeps a bias-free one",
    lambda c: not project_out(c),
)


SQUARE_ONLY = Difference(
    "vit-pytorch's model takes a square image_size and patch_size (ints); this one also takes (h, w)",
    lambda c: not (isinstance(c["image_size"], int) and isinstance(c.get("patch_size", 0), int)),
)


def split_q_kv(src: str, dst: str) -> Rule:
    """The reference's bias-free ``to_q`` and ``to_kv`` as our one ``to_qkv`` (rows q, then k, then v)."""
    return Rule((f"{src}.to_q", f"{src}.to_kv"), dst, "linear", leaves=("weight",), fn=concat_rows)


VIT_RULES = (
    Rule("cls_token", "cls_token", fn=add_batch_axis),
    Rule("pos_embedding", "pos_embedding", fn=add_batch_axis),
    *patch_embedding(),
    *layers("transformer", "transformer"),
    Rule("transformer.norm", "transformer.norm", "layernorm"),
    Rule("mlp_head", "mlp_head", "linear"),
)


def under(prefix: str, rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """``rules`` reading the reference's keys under ``prefix`` (a wrapper's ``student.``)."""
    return tuple(replace(r, src=tuple(f"{prefix}{s}" for s in r.sources)) for r in rules)


def as_token(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """A token saved as ``(dim,)`` or ``(1, dim)`` (XCiT's class token, the distillation token) as ours
    ``(1, 1, dim)``."""
    return arrays[0].reshape(1, 1, -1)


def flat_scale(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """A layer scale saved as ``(1, 1, dim)`` (CaiT's) or ``(dim,)`` (XCiT's) as our ``gamma`` ``(dim,)``."""
    return arrays[0].reshape(-1)


def cait_stack(src: str, dst: str, n: str, *, mix: bool = True) -> tuple:
    """A CaiT stack: each layer a layer-scaled attention (0), talking-heads with ``mix`` (CaiT's; XCiT's class
    stack has none), and feed-forward (1)."""
    layer, block = f"{src}.layers.{{{n}}}", f"{dst}.blocks.{{{n}}}"
    attn = f"{layer}.0.fn"
    mixing = (
        Rule(f"{attn}.mix_heads_pre_attn", f"{block}.attn.mix_heads_pre_attn"),
        Rule(f"{attn}.mix_heads_post_attn", f"{block}.attn.mix_heads_post_attn"),
    )
    return (
        Rule(f"{attn}.norm", f"{block}.norm1", "layernorm"),
        split_q_kv(attn, f"{block}.attn.to_qkv"),
        *(mixing if mix else ()),
        Rule(f"{attn}.to_out.0", f"{block}.attn.to_out", "linear"),
        Rule(f"{layer}.0.scale", f"{block}.ls1.gamma", fn=flat_scale),
        *feedforward(f"{layer}.1.fn.net", block, out=4),
        Rule(f"{layer}.1.scale", f"{block}.ls2.gamma", fn=flat_scale),
    )
