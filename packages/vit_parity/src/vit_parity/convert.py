"""Weight conversion between the torch and flax layouts, chosen by module type, never by tensor rank.

Both backends describe a model as ``{module_path: kind}`` (see ``module_kinds`` in each backend's
``checkpoint`` module). Paths are dotted and identical in both backends; only the leaf names and
the tensor layouts differ, by the rule of the module's kind.
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


def _same(w: Array) -> Array:
    return w


# kind -> [(torch leaf, flax leaf, torch->flax, flax->torch)]; a leaf of "" is the path itself.
Rule = tuple[str, str, Callable[[Array], Array], Callable[[Array], Array]]
RULES: dict[str, list[Rule]] = {
    "linear": [("weight", "kernel", _linear_to_flax, _linear_to_flax), ("bias", "bias", _same, _same)],
    "conv": [("weight", "kernel", _conv_to_flax, _conv_to_torch), ("bias", "bias", _same, _same)],
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
}
# torch-only bookkeeping with no flax counterpart: dropped going to flax, recreated coming back.
TORCH_ONLY = {"batchnorm": {"num_batches_tracked": lambda: np.zeros((), np.int64)}}

LAYOUTS = ("torch", "flax")


class ConversionError(ValueError):
    """Raised when tensors and module kinds do not match; lists every offending key."""


def _key(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path and leaf else path or leaf


def convert(tensors: Mapping[str, Array], kinds: Mapping[str, str], *, source: str, target: str) -> dict[str, Array]:
    """Convert ``tensors`` from the ``source`` layout to the ``target`` layout ('torch' or 'flax').

    Every tensor must be consumed by a rule and every rule's tensor present (a bias may be absent
    when the module has none); otherwise :class:`ConversionError` lists the unexpected and missing keys.
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
        for rule in RULES[kind]:
            src_key, dst_key = _key(path, rule[src_i]), _key(path, rule[dst_i])
            fn = rule[2] if source == "torch" else rule[3]
            if src_key in tensors:
                out[dst_key] = fn(np.asarray(tensors[src_key])) if source != target else tensors[src_key]
                consumed.add(src_key)
            elif rule[0] != "bias":
                missing.append(src_key)
        for leaf, make in TORCH_ONLY.get(kind, {}).items():
            key = _key(path, leaf)
            if source == "torch":
                consumed.add(key)
                if target == "torch" and key in tensors:
                    out[key] = tensors[key]
            elif target == "torch":
                out[key] = make()
    unexpected = sorted(set(tensors) - consumed)
    if missing or unexpected:
        raise ConversionError(
            f"cannot convert {source} -> {target}: missing keys {sorted(missing)}, unexpected keys {unexpected}"
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
