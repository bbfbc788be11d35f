"""One initializer for both backends: the same seed gives bit-identical weights in torch and flax.

Tensors are drawn in numpy, in the torch layout, from their names, shapes and module kinds (see
``module_kinds`` in each backend's ``checkpoint`` module); each backend converts them to its own
layout and copies them in (``vit_torch.init.init_weights``, ``vit_flax.init.init_weights``).

Every tensor draws from its own generator, seeded by ``(seed, crc32(key))`` where ``key`` is the
tensor's torch-layout name, so a tensor's value does not depend on which other tensors exist or in
which order they come: adding a block leaves every other tensor as it was.

Rules by module kind (shapes in the torch layout):

============== ===================== ==========================================================
kind           tensor                rule
============== ===================== ==========================================================
linear         weight (O, I)         Xavier uniform: ``U(-a, a)``, ``a = sqrt(6 / (O + I))`` (big_vision's)
               bias                  zeros
conv           weight (O, I/g, *k)   Kaiming normal, fan-in, gain sqrt(2): ``std = sqrt(2 / fan_in)``,
                                     ``fan_in = I/g * prod(k)``
               bias                  zeros
conv_transpose weight (I, O, *k)     Kaiming normal with ``fan_in = I * prod(k)``
               bias                  zeros
layernorm      weight, bias          ones, zeros
groupnorm      weight, bias          ones, zeros
rmsnorm        weight                ones
batchnorm      weight, bias          ones, zeros
               running_mean          zeros
               running_var           ones
               num_batches_tracked   0 (int64)
embedding      weight (N, D)         normal(std=0.02)
param          the tensor itself     trunc_normal(std=0.02), cut at +-2 std (positional
                                     embeddings, class tokens, queries)
buffer         the tensor itself     keep: left as the model built it (a persistent table)
any other kind                       :class:`InitError` naming it
============== ===================== ==========================================================

Dense kernels follow big_vision (Xavier uniform) rather than timm (truncated normal 0.02): at the small
widths this library trains on a CPU, std 0.02 left a 2-block ViViT of width 64 at chance for four epochs
on digits-video, where Xavier's scale trains it (``nox -s demo``).

``trunc_normal(std)`` is a normal of standard deviation ``std`` with the draws beyond ``2 * std``
drawn again, as ``jax.nn.initializers.truncated_normal`` (timm's ``trunc_normal_(std=.02)`` cuts at
+-2 in absolute value, which cuts nothing): the values have a standard deviation of ``0.8796 * std``.

Overrides map glob patterns (:func:`fnmatch.fnmatchcase` on the torch-layout key, e.g.
``"blocks.*.ls.gamma"``; norm weights are ``weight``, not flax's ``scale``) to a rule:

- ``("zeros",)``, ``("ones",)``, ``("constant", value)``
- ``("normal", std)``, ``("trunc_normal", std)`` (cut at +-2 std)
- ``("kaiming_normal",)`` (as for conv: fan-in from the torch layout ``(O, I, *k)``)
- ``("xavier_uniform",)`` (as for linear: fan-in + fan-out of ``(O, I, ...)``)
- ``("identity",)``: the identity matrix on the last two axes, which must be equal (head mixing)
- ``("keep",)``: leave the tensor as the model built it (kept tensors are absent from the result
  of :func:`init_tensors`; the backends leave them alone)

A zero-argument rule may be given as its bare name (``"zeros"``). Where several patterns match a key
the last one wins, so ``{**model_rules, **caller_rules}`` lets the caller decide. A pattern that
matches no key raises (typo protection). Overrides may also name tensors no kind covers.

A model (or any of its submodules) may expose ``init_rules`` (a dict attribute or property of the
same form); the backends gather them with :func:`collect`: a submodule's patterns
are relative to its path, an outer module's rules win over its submodules', and the caller's
``overrides`` win over all.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

Rule = tuple[Any, ...]

EMBED_STD = 0.02
PARAM_STD = 0.02
TRUNCATE = 2.0  # trunc_normal cuts at this many standard deviations

_ZEROS: Rule = ("zeros",)
_ONES: Rule = ("ones",)
_NORM = {"weight": _ONES, "bias": _ZEROS}

# kind -> {torch leaf: rule}; a leaf of "" is the module path itself (a bare parameter).
KIND_RULES: dict[str, dict[str, Rule]] = {
    "linear": {"weight": ("xavier_uniform",), "bias": _ZEROS},
    "conv": {"weight": ("kaiming_normal",), "bias": _ZEROS},
    "conv_transpose": {"weight": ("kaiming_normal_transposed",), "bias": _ZEROS},
    "layernorm": _NORM,
    "groupnorm": _NORM,
    "rmsnorm": {"weight": _ONES},
    "batchnorm": {
        **_NORM,
        "running_mean": _ZEROS,
        "running_var": _ONES,
        "num_batches_tracked": _ZEROS,
    },
    "embedding": {"weight": ("normal", EMBED_STD)},
    "param": {"": ("trunc_normal", PARAM_STD)},
    "buffer": {"": ("keep",)},
}
INT_LEAVES = {"num_batches_tracked"}  # int64 scalars; every other tensor is drawn as float

# rule name -> number of arguments
RULE_ARITY = {
    "zeros": 0,
    "ones": 0,
    "constant": 1,
    "normal": 1,
    "trunc_normal": 1,
    "kaiming_normal": 0,
    "xavier_uniform": 0,
    "identity": 0,
    "keep": 0,
}


class InitError(ValueError):
    """An unknown module kind, a malformed or unmatched override, or a tensor no rule covers."""


def key_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of tensor ``key`` under ``seed``: independent of every other key."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(key.encode("utf-8")),)))


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InitError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_rule(rule: Any, *, what: str = "rule") -> Rule:
    """``rule`` as a tuple ``(name, *args)``, or :class:`InitError` saying what is wrong with it."""
    if isinstance(rule, str):
        rule = (rule,)
    if not isinstance(rule, (tuple, list)) or not rule or not isinstance(rule[0], str):
        raise InitError(f"{what}: a rule is a tuple (name, *args), got {rule!r}")
    name, args = rule[0], tuple(rule[1:])
    if name not in RULE_ARITY:
        raise InitError(f"{what}: unknown rule {name!r}; rules are {sorted(RULE_ARITY)}")
    if len(args) != RULE_ARITY[name]:
        raise InitError(f"{what}: rule {name!r} takes {RULE_ARITY[name]} argument(s), got {rule!r}")
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)) or not math.isfinite(a):
            raise InitError(f"{what}: rule {name!r} takes a finite number, got {a!r}")
    if name in ("normal", "trunc_normal") and not args[0] > 0:
        raise InitError(f"{what}: rule {name!r} needs a positive std, got {args[0]!r}")
    return (name, *(float(a) for a in args))


def _check_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Rule]:
    checked: dict[str, Rule] = {}
    for pattern, rule in (overrides or {}).items():
        if not isinstance(pattern, str) or not pattern:
            raise InitError(f"override patterns are non-empty strings, got {pattern!r}")
        checked[pattern] = check_rule(rule, what=f"override {pattern!r}")
    return checked


def _escape(path: str) -> str:
    """``path`` as an fnmatch pattern matching itself only."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in path)


def scoped(path: str, rules: Mapping[str, Any]) -> dict[str, Any]:
    """The ``init_rules`` of the submodule at ``path``, with their patterns made absolute."""
    if not isinstance(rules, Mapping):
        raise InitError(f"init_rules of {path or 'the model'!r} must be a mapping, got {type(rules).__name__}")
    if not path:
        return dict(rules)
    return {f"{_escape(path)}.{pattern}": rule for pattern, rule in rules.items()}


def merge(*rule_maps: Mapping[str, Any] | None) -> dict[str, Any]:
    """Rules of several sources in one mapping, in the order given: a later source wins on a key.

    A pattern given again moves to the end, so that "last match wins" follows the later source.
    """
    out: dict[str, Any] = {}
    for rules in rule_maps:
        for pattern, rule in (rules or {}).items():
            out.pop(pattern, None)
            out[pattern] = rule
    return out


def collect(modules: Iterable[tuple[str, Any]], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge the ``init_rules`` of ``(path, module)`` pairs and the caller's ``overrides``.

    Deeper modules come first, so an outer module's rules win over its submodules' and the caller's
    over all.
    """
    found = []
    for path, module in modules:
        rules = getattr(module, "init_rules", None)
        if rules is not None:
            found.append((path, rules))
    found.sort(key=lambda pr: -(pr[0].count(".") + 1 if pr[0] else 0))
    return merge(*(scoped(p, r) for p, r in found), overrides)


def _leaf_key(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path and leaf else path or leaf


def resolve(
    shapes: Mapping[str, Sequence[int]], kinds: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> dict[str, tuple[Rule, str]]:
    """``{key: (rule, leaf)}`` for every key of ``shapes``: the kind's rule unless an override matches.

    Raises :class:`InitError` for an unknown kind, an override that matches no key, or a key that
    neither a kind nor an override covers.
    """
    unknown = sorted({k for k in kinds.values() if k not in KIND_RULES})
    if unknown:
        bad = {p: k for p, k in kinds.items() if k in unknown}
        raise InitError(
            f"no initialization rule for module kind(s) {unknown} (modules {bad}); known: {sorted(KIND_RULES)}"
        )
    checked = _check_overrides(overrides)
    by_kind: dict[str, tuple[Rule, str]] = {}
    for path, kind in kinds.items():
        for leaf, rule in KIND_RULES[kind].items():
            key = _leaf_key(path, leaf)
            if key in shapes:
                by_kind[key] = (rule, leaf)
    matched: dict[str, list[str]] = {p: [k for k in shapes if fnmatchcase(k, p)] for p in checked}
    unmatched = sorted(p for p, keys in matched.items() if not keys)
    if unmatched:
        raise InitError(f"init overrides {unmatched} match no tensor; keys are {sorted(shapes)}")
    out: dict[str, tuple[Rule, str]] = dict(by_kind)
    for pattern, rule in checked.items():  # later patterns win
        for key in matched[pattern]:
            out[key] = (rule, by_kind[key][1] if key in by_kind else key.rpartition(".")[2])
    uncovered = sorted(set(shapes) - set(out))
    if uncovered:
        raise InitError(f"no module kind covers the tensors {uncovered}; give them an override or a kind")
    return {k: out[k] for k in shapes}


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, *, truncate: bool = False) -> np.ndarray:
    """Float32 draws of a normal of standard deviation ``std``, redrawn beyond ``TRUNCATE`` std if ``truncate``."""
    x = rng.standard_normal(math.prod(shape), dtype=np.float32)
    if truncate:
        redraw = np.flatnonzero(np.abs(x) > TRUNCATE)
        while redraw.size:
            x[redraw] = rng.standard_normal(redraw.size, dtype=np.float32)
            redraw = redraw[np.abs(x[redraw]) > TRUNCATE]
    x *= np.float32(std)
    return x.reshape(shape)


def fan_in(shape: Sequence[int], *, transposed: bool = False) -> int:
    """The fan-in of a torch-layout conv weight ``(O, I/g, *k)``, or ``(I, O, *k)`` when ``transposed``."""
    if len(shape) < 2:
        raise InitError(f"a fan-in needs a weight of rank >= 2, got shape {tuple(shape)}")
    return int(shape[0 if transposed else 1] * math.prod(shape[2:]))


def draw(rule: Rule, shape: Sequence[int], *, seed: int, key: str, dtype: Any = np.float32) -> np.ndarray:
    """The tensor of ``key`` drawn by ``rule`` (see the module docstring) under ``seed``."""
    name, args = rule[0], rule[1:]
    shape = tuple(int(s) for s in shape)
    if name == "zeros":
        return np.zeros(shape, dtype)
    if name == "ones":
        return np.ones(shape, dtype)
    if name == "constant":
        return np.full(shape, args[0], dtype)
    if name == "identity":
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise InitError(f"rule 'identity' for {key!r} needs square matrices, got shape {shape}")
        return np.broadcast_to(np.eye(shape[-1], dtype=dtype), shape).copy()
    rng = key_rng(seed, key)
    if name == "normal":
        x = _normal(rng, shape, args[0])
    elif name == "trunc_normal":
        x = _normal(rng, shape, args[0], truncate=True)
    elif name == "xavier_uniform":  # fan-in + fan-out of a (O, I) weight
        limit = math.sqrt(6.0 / (shape[0] + math.prod(shape[1:])))
        x = rng.uniform(-limit, limit, shape)
    elif name in ("kaiming_normal", "kaiming_normal_transposed"):
        fan = fan_in(shape, transposed=name == "kaiming_normal_transposed")
        x = _normal(rng, shape, math.sqrt(2.0 / fan))
    else:  # 'keep' draws nothing: the caller leaves the tensor alone
        raise InitError(f"rule {name!r} draws no value (for {key!r})")
    return x.astype(dtype, copy=False)


def init_tensors(
    shapes: Mapping[str, Sequence[int]],
    kinds: Mapping[str, str],
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    *,
    dtype: Any = np.float32,
) -> dict[str, np.ndarray]:
    """Every tensor of ``shapes`` (torch-layout keys and shapes) drawn under ``seed``, in the torch layout.

    ``kinds`` is ``{module path: kind}`` as ``module_kinds`` gives it; ``overrides`` maps glob
    patterns on keys to rules. Floats come as ``dtype`` (float32), ``num_batches_tracked`` as int64.
    Tensors whose rule is ``keep`` (buffers) are left out: the caller leaves them as they are.
    """
    seed = _check_seed(seed)
    rules = resolve(shapes, kinds, overrides)
    return {
        key: draw(rule, shapes[key], seed=seed, key=key, dtype=np.int64 if leaf in INT_LEAVES else dtype)
        for key, (rule, leaf) in rules.items()
        if rule[0] != "keep"
    }
