"""Weight conversion between the torch and flax layouts, chosen by module type, never by tensor rank.

Both backends describe a model as ``{module_path: kind}`` (see ``module_kinds`` in each backend's
``checkpoint`` module). Paths are dotted and identical in both backends; only the leaf names and
the tensor layouts differ, by the rule of the module's kind. A module holding no parameters or
state (a LayerNorm without affine parameters, a Dropout) is not listed.

==============  =============================  ===============================  ===============================
kind            torch                          flax                             torch to flax
==============  =============================  ===============================  ===============================
linear          Linear weight (O, I), bias     Linear kernel (I, O), bias       ``W.T``
conv            Conv{1,2,3}d weight            Conv kernel (*k, I/g, O)         O and I moved to the end
                (O, I/g, *k), bias
conv_transpose  ConvTranspose{1,2,3}d weight   ConvTranspose kernel (*k, I, O)  spatial axes reversed, I and O
                (I, O, *k), groups=1, bias     (transpose_kernel=False), bias   moved to the end
layernorm       LayerNorm weight, bias         LayerNorm scale, bias            identity
groupnorm       GroupNorm weight, bias         GroupNorm scale, bias            identity
rmsnorm         RMSNorm weight                 RMSNorm scale                    identity
batchnorm       BatchNorm weight, bias,        BatchNorm scale, bias, mean,     identity; num_batches_tracked
                running_mean, running_var      var                              dropped
embedding       Embedding weight (N, D)        Embed embedding (N, D)           identity
param           a bare parameter               a bare nnx.Param                 identity
buffer          a bare persistent buffer       any other bare variable          identity
                                               (nnx.BatchStat, custom Variable)
==============  =============================  ===============================  ===============================

A bias may be absent, and so may every leaf of a norm (no affine parameters, no running
statistics), as long as a listed module holds at least one tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

Array = np.ndarray


def _linear_to_flax(w: Array) -> Array:
    return np.ascontiguousarray(w.T)


def _conv_to_flax(w: Array) -> Array:  # (O, I, *k) -> (*k, I, O)
    return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))


def _conv_to_torch(w: Array) -> Array:  # (*k, I, O) -> (O, I, *k)
    return np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1)))


def _conv_transpose_to_flax(w: Array) -> Array:  # (I, O, *k) -> (*k, I, O), spatially flipped
    return np.ascontiguousarray(np.moveaxis(np.flip(w, tuple(range(2, w.ndim))), (0, 1), (-2, -1)))


def _conv_transpose_to_torch(w: Array) -> Array:  # (*k, I, O) -> (I, O, *k), spatially flipped
    return np.ascontiguousarray(np.flip(np.moveaxis(w, (-2, -1), (0, 1)), tuple(range(2, w.ndim))))


def _same(w: Array) -> Array:
    return w


# kind -> [(torch leaf, flax leaf, torch->flax, flax->torch)]; a leaf of "" is the path itself.
Rule = tuple[str, str, Callable[[Array], Array], Callable[[Array], Array]]
RULES: dict[str, list[Rule]] = {
    "linear": [("weight", "kernel", _linear_to_flax, _linear_to_flax), ("bias", "bias", _same, _same)],
    "conv": [("weight", "kernel", _conv_to_flax, _conv_to_torch), ("bias", "bias", _same, _same)],
    "conv_transpose": [
        ("weight", "kernel", _conv_transpose_to_flax, _conv_transpose_to_torch),
        ("bias", "bias", _same, _same),
    ],
    "layernorm": [("weight", "scale", _same, _same), ("bias", "bias", _same, _same)],
    "groupnorm": [("weight", "scale", _same, _same), ("bias", "bias", _same, _same)],
    "rmsnorm": [("weight", "scale", _same, _same)],
    "batchnorm": [
        ("weight", "scale", _same, _same),
        ("bias", "bias", _same, _same),
        ("running_mean", "mean", _same, _same),
        ("running_var", "var", _same, _same),
    ],
    "embedding": [("weight", "embedding", _same, _same)],
    "param": [("", "", _same, _same)],
    "buffer": [("", "", _same, _same)],
}
_NORM_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var"})
# torch leaves a module of that kind may lack (any other absent leaf is reported missing)
OPTIONAL: dict[str, frozenset[str]] = {
    kind: _NORM_LEAVES if kind.endswith("norm") else frozenset({"bias"}) for kind in RULES
}
# torch-only bookkeeping with no flax counterpart: dropped going to flax, recreated coming back
# when the torch leaf it goes with (here the running statistics) is there.
TORCH_ONLY = {"batchnorm": {"num_batches_tracked": ("running_mean", lambda: np.zeros((), np.int64))}}

LAYOUTS = ("torch", "flax")


class ConversionError(ValueError):
    """Raised when tensors and module kinds do not match; lists every offending key."""


def _key(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path and leaf else path or leaf


def convert(
    tensors: Mapping[str, Array], kinds: Mapping[str, str], *, source: str, target: str, complete: bool = True
) -> dict[str, Array]:
    """Convert ``tensors`` from the ``source`` layout to the ``target`` layout ('torch' or 'flax').

    Every tensor must be consumed by a rule and every rule's tensor present (but for the optional
    leaves: a bias, a norm's affine parameters or statistics); otherwise :class:`ConversionError`
    lists the unexpected and missing keys. ``complete=False`` converts a part of a model's tensors
    (an optimizer's moments of its trained parameters): absent tensors are then allowed.
    """
    for name, layout in (("source", source), ("target", target)):
        if layout not in LAYOUTS:
            raise ValueError(f"{name} must be one of {LAYOUTS}, got {layout!r}")
    unknown = sorted({k for k in kinds.values() if k not in RULES})
    if unknown:
        raise ConversionError(f"unknown module kinds {unknown}; known kinds are {sorted(RULES)}")
    out: dict[str, Array] = {}
    consumed: set[str] = set()
    missing: list[str] = []
    src_i, dst_i = (0, 1) if source == "torch" else (1, 0)
    for path, kind in kinds.items():
        found, absent = set(), []
        for rule in RULES[kind]:
            src_key, dst_key = _key(path, rule[src_i]), _key(path, rule[dst_i])
            fn = rule[2] if source == "torch" else rule[3]
            if src_key in tensors:
                out[dst_key] = fn(np.asarray(tensors[src_key])) if source != target else tensors[src_key]
                consumed.add(src_key)
                found.add(rule[0])
            elif rule[0] not in OPTIONAL[kind]:
                absent.append(src_key)
        if not found and not absent:  # a listed module holds at least one tensor
            absent.append(_key(path, RULES[kind][0][src_i]))
        missing.extend(absent)
        for leaf, (with_leaf, make) in TORCH_ONLY.get(kind, {}).items():
            key = _key(path, leaf)
            if source == "torch":
                consumed.add(key)
                if target == "torch" and key in tensors:
                    out[key] = tensors[key]
            elif target == "torch" and with_leaf in found and complete:
                out[key] = make()
    unexpected = sorted(set(tensors) - consumed)
    if (missing and complete) or unexpected:
        raise ConversionError(
            f"cannot convert {source} -> {target}: missing keys {sorted(missing) if complete else []}, "
            f"unexpected keys {unexpected}"
        )
    return out


def check_state(
    given: Mapping[str, Array], expected: Mapping[str, tuple[int, ...]], *, what: str = "checkpoint"
) -> None:
    """Raise :class:`ConversionError` listing missing, unexpected and mis-shaped keys of ``given``."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k}: {tuple(np.shape(given[k]))} vs model {tuple(expected[k])}"
        for k in sorted(set(given) & set(expected))
        if tuple(np.shape(given[k])) != tuple(expected[k])
    ]
    if missing or unexpected or mismatched:
        lines = [f"{what} does not match the model:"]
        if missing:
            lines.append(f"  missing keys: {missing}")
        if unexpected:
            lines.append(f"  unexpected keys: {unexpected}")
        if mismatched:
            lines.append(f"  shape mismatches: {mismatched}")
        raise ConversionError("\n".join(lines))
