"""Reference tables: navit, navit_nested, navit_nested_3d."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vit_parity.tools.reference.common import concat_rows, depth
from vit_parity.tools.reference.importer import Config, Derived, Only, ReferenceImportError, Rule, Table


def _navit_patch(config: Config) -> tuple[int, ...]:
    side = config["patch_size"]
    side = tuple(side) if isinstance(side, (tuple, list)) else (side, side)
    return (config["frame_patch_size"], *side) if "frame_patch_size" in config else side


def _patch_order(config: Config) -> np.ndarray:
    """Index of our patch features ``(*patch, c)`` in the reference NaViTs' ``(c, *patch)`` order."""
    c, p = config["channels"], int(np.prod(_navit_patch(config)))
    return np.arange(c * p).reshape(c, p).T.reshape(-1)


def _reorder_norm(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    return arrays[0][_patch_order(config)]


def _reorder_proj(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    return arrays[0][:, _patch_order(config)] if leaf == "weight" else arrays[0]


def _shared_head_scale(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """The masked NaViT's query/key RMSNorm scale ``(heads, 1, dim_head)`` as our one ``(dim_head,)`` scale.

    Its attention runs at scale 1 on normalized queries and keys; ours at ``dim_head ** -0.5``: the two scales
    each take a factor ``dim_head ** 0.25``. Ours shares the scale across heads, so the heads' must be equal.
    """
    a = arrays[0]
    if not np.all(a == a[:1]):
        raise ReferenceImportError(
            "the query/key norm scales differ between heads; this NaViT shares one scale across heads"
        )
    return a.reshape(a.shape[0], -1)[0] * float(config["dim_head"]) ** 0.25


def _centred_qkv(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """The nested-tensor NaViTs' ``to_queries``, ``to_keys``, ``to_values`` as one ``to_qkv``.

    The reference normalizes queries and keys with a LayerNorm, this library with an RMSNorm. A LayerNorm only
    sees its input less its mean, and the mean over a head of ``W x`` is ``mean_rows(W) x``: with each head's
    rows less their mean, the RMSNorm sees exactly what the LayerNorm saw (same weight, same eps).
    """
    heads, dim_head = config["heads"], config["dim_head"]

    def centred(w: np.ndarray) -> np.ndarray:
        per_head = w.reshape(heads, dim_head, -1)
        return (per_head - per_head.mean(axis=1, keepdims=True)).reshape(w.shape)

    q, k, v = arrays
    return np.concatenate([centred(q), centred(k), v], axis=0)


def _navit_masked_attention(src: str, dst: str) -> tuple:
    """The masked NaViT's attention (``norm`` with ``gamma`` and a ``beta`` buffer, per-head qk RMSNorm scales,
    ``to_q`` and ``to_kv``, a bias-free ``to_out.0``) as our ``attn`` (its input norm is a rule of its own)."""
    return (
        Rule((f"{src}.to_q", f"{src}.to_kv"), f"{dst}.to_qkv", "linear", leaves=("weight",), fn=concat_rows),
        Rule(f"{src}.q_norm", f"{dst}.q_norm", "rmsnorm", leaves={"gamma": "weight"}, fn=_shared_head_scale),
        Rule(f"{src}.k_norm", f"{dst}.k_norm", "rmsnorm", leaves={"gamma": "weight"}, fn=_shared_head_scale),
        Rule(f"{src}.to_out.0", f"{dst}.to_out", "linear", leaves=("weight",)),
    )


def _navit_nested_attention(src: str, dst: str) -> tuple:
    """The nested-tensor NaViTs' attention (bias-free projections, LayerNorm qk norms) as our ``attn``."""
    return (
        Rule(
            (f"{src}.to_queries", f"{src}.to_keys", f"{src}.to_values"),
            f"{dst}.to_qkv",
            "linear",
            leaves=("weight",),
            fn=_centred_qkv,
        ),
        Rule(f"{src}.query_norm", f"{dst}.q_norm", "rmsnorm", leaves=("weight",)),
        Rule(f"{src}.key_norm", f"{dst}.k_norm", "rmsnorm", leaves=("weight",)),
        Rule(f"{src}.to_out", f"{dst}.to_out", "linear", leaves=("weight",)),
    )


def _pooled_query(arrays: Sequence[np.ndarray], config: Config) -> dict[str, np.ndarray]:
    """The normalized pooling query of the nested-tensor NaViTs, as the bias of a norm that sees zeros."""
    query, weight = (a.astype(np.float64) for a in arrays)
    centred = query - query.mean()
    normalized = centred / np.sqrt((centred**2).mean() + 1e-5) * weight  # torch's LayerNorm, eps 1e-5
    return {"weight": np.ones_like(arrays[1]), "bias": normalized.astype(arrays[1].dtype)}


def _pool_without_residual() -> tuple:
    """The nested-tensor NaViTs pool without adding the query back (the masked one and this library add it).

    Here the query is zero and its norm's bias is the reference's normalized query: a LayerNorm of zeros is its
    bias, so the attention sees the reference's query, and the residual adds zeros.
    """
    return (
        Derived(("attn_pool_queries",), "attn_pool_queries", "param", ("",), lambda a, c: {"": np.zeros_like(a[0])}),
        Derived(("attn_pool_queries", "attn_pool.norm.weight"), "attn_pool_norm", "layernorm", ("weight", "bias"),
                _pooled_query),
    )  # fmt: skip


def _navit_rules(*, nested: bool, axes: tuple[str, ...]) -> tuple:
    # the masked model's LayerNorm has a learned gamma and a zero beta buffer; the nested ones' have no bias
    norm = {"leaves": ("weight",), "fill": ("bias",)} if nested else {"leaves": {"gamma": "weight", "beta": "bias"}}
    attention = _navit_nested_attention if nested else _navit_masked_attention
    layer, block = "transformer.layers.{i}", "transformer.blocks.{i}"
    pre = {"leaves": None} if nested else norm  # the nested models' patch norms are torch's, with bias
    return (
        *(Rule(f"pos_embed_{a}", f"pos_embed_{a}") for a in axes),
        *(_pool_without_residual() if nested else (Rule("attn_pool_queries", "attn_pool_queries"),)),
        Rule("to_patch_embedding.0", "to_patch_embedding.pre_norm", "layernorm", fn=_reorder_norm, **pre),
        Rule("to_patch_embedding.1", "to_patch_embedding.proj", "linear", fn=_reorder_proj),
        Rule("to_patch_embedding.2", "to_patch_embedding.post_norm", "layernorm", **pre),
        Rule(f"{layer}.0.norm", f"{block}.norm1", "layernorm", **norm),
        *attention(f"{layer}.0", f"{block}.attn"),
        Rule(f"{layer}.1.0", f"{block}.norm2", "layernorm", **norm),
        Rule(f"{layer}.1.1", f"{block}.ff.fc1", "linear"),
        Rule(f"{layer}.1.4", f"{block}.ff.fc2", "linear"),
        Rule("transformer.norm", "transformer.norm", "layernorm", **norm),
        *(() if nested else (Rule("attn_pool.norm", "attn_pool_norm", "layernorm", **norm),)),
        *attention("attn_pool", "attn_pool"),
        Rule("mlp_head.0", "head_norm", "layernorm", **norm),
        Rule("mlp_head.1", "mlp_head", "linear", leaves=("weight",)),
    )


_QK_NORM = Only(
    True, True, "this NaViT always normalizes queries and keys (the reference applies a LayerNorm despite the name)"
)


TABLES: dict[str, Table] = {
    "navit": Table(
        reference="vit_pytorch.na_vit:NaViT",
        rules=_navit_rules(nested=False, axes=("height", "width")),
        counts=depth,
    ),
    "navit_nested": Table(
        reference="vit_pytorch.na_vit_nested_tensor:NaViT",
        rules=_navit_rules(nested=True, axes=("height", "width")),
        counts=depth,
        reference_only={"qk_rmsnorm": _QK_NORM},
    ),
    "navit_nested_3d": Table(
        reference="vit_pytorch.na_vit_nested_tensor_3d:NaViT",
        rules=(
            *_navit_rules(nested=True, axes=("frame", "height", "width")),
            Rule("register_tokens", None),  # empty: num_registers=0
        ),
        counts=depth,
        reference_only={
            "qk_rmsnorm": _QK_NORM,
            "num_registers": Only(4, 0, "this NaViT has no register tokens"),
        },
    ),
}
