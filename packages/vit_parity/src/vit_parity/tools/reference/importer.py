"""The importer: rules and tables as data, and the functions that apply one table to a reference state dict."""

from __future__ import annotations

import itertools
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vit_parity.core.checkpoint import Checkpoint
from vit_parity.core.convert import RULES, ConversionError
from vit_parity.core.facts.signatures import signature

LIBRARY = "vit-pytorch"

Config = Mapping[str, Any]

Fn = Callable[[Sequence[np.ndarray], str, Config], np.ndarray]


class ReferenceImportError(ConversionError):
    """A reference state dict or config that does not import: the message lists every offending key or names
    the argument at fault."""


@dataclass(frozen=True)
class Rule:
    """One module of this library and where its tensors come from in the reference's state dict (see the module
    docstring)."""

    src: str | tuple[str, ...]
    dst: str | None
    kind: str = "param"
    leaves: tuple[str, ...] | Mapping[str, str] | None = None
    fill: tuple[str, ...] = ()
    fn: Fn | None = None
    when: Callable[[Config], bool] | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.src,) if isinstance(self.src, str) else tuple(self.src)

    def leaf_map(self) -> dict[str, str]:
        """Reference leaf to our leaf."""
        if self.leaves is None:
            names = tuple(leaf for leaf, *_ in RULES[self.kind])
            return {n: n for n in names}
        if isinstance(self.leaves, Mapping):
            return dict(self.leaves)
        return {n: n for n in self.leaves}

    def fields(self) -> set[str]:
        paths = [*self.sources, *([self.dst] if self.dst else [])]
        return {f for p in paths for _, f, _, _ in string.Formatter().parse(p) if f}


@dataclass(frozen=True)
class Derived:
    """One module of this library computed from whole reference tensors, where no per-leaf rule can say it:
    ``fn(arrays, config)`` gets one array per key of ``src`` (templates of full keys) and returns
    ``{leaf: array}`` for every leaf of ``leaves``."""

    src: tuple[str, ...]
    dst: str
    kind: str
    leaves: tuple[str, ...]
    fn: Callable[[Sequence[np.ndarray], Config], Mapping[str, np.ndarray]]
    when: Callable[[Config], bool] | None = None

    def fields(self) -> set[str]:
        return {f for p in (*self.src, self.dst) for _, f, _, _ in string.Formatter().parse(p) if f}


@dataclass(frozen=True)
class Difference:
    """A config where this library's model and the reference's compute different functions on purpose:
    ``when(config)`` (our config) says so and ``why`` says how they differ."""

    why: str
    when: Callable[[Config], bool]


@dataclass(frozen=True)
class Only:
    """A constructor argument of the reference that this library lacks: its default there and the one value
    whose model this library reproduces (``why`` says what other values would need)."""

    default: Any
    value: Any
    why: str


def _no_counts(config: Config) -> dict[str, int]:
    return {}


@dataclass(frozen=True)
class Table:
    """How the state dict and the constructor arguments of one reference class map onto one architecture here."""

    reference: str
    rules: tuple[Rule | Derived, ...]
    counts: Callable[[Config], Mapping[str, int]] = _no_counts
    renamed: Mapping[str, str] = field(default_factory=dict)
    reference_only: Mapping[str, Only] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    differences: tuple[Difference, ...] = ()
    check_with: Mapping[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Step:
    """One module of ours (or, with ``module`` None, reference keys dropped): the reference keys it reads and
    how it makes its leaves from them."""

    sources: tuple[str, ...]
    module: str | None
    make: Callable[[list[np.ndarray]], dict[str, np.ndarray]]


def _key(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if leaf else path


def _rule_step(rule: Rule, sources: tuple[str, ...], module: str | None, config: Config) -> _Step:
    leaves = rule.leaf_map()
    keys = tuple(_key(s, ref_leaf) for ref_leaf in leaves for s in sources)
    n = len(sources)

    def make(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for j, leaf in enumerate(leaves.values()):
            group = arrays[j * n : (j + 1) * n]
            if rule.fn is not None:
                out[leaf] = rule.fn(group, leaf, config)
            elif n == 1:
                out[leaf] = group[0]
            else:
                raise ValueError(f"{sources} merge into {module} without a function")
        first = next(iter(out.values()))
        out.update({leaf: np.zeros_like(first) for leaf in rule.fill})  # leaves the reference lacks
        return out

    return _Step(keys, module, make)


def _derived_step(rule: Derived, sources: tuple[str, ...], module: str, config: Config) -> _Step:
    def make(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(rule.fn(arrays, config))
        if sorted(out) != sorted(rule.leaves):
            raise ValueError(f"{module}: the function returned the leaves {sorted(out)}, not {sorted(rule.leaves)}")
        return out

    return _Step(sources, module, make)


def _plan(arch: str, tbl: Table, config: Config) -> tuple[list[_Step], dict[str, str]]:
    """Every module the rules write for ``config`` (ours), with the reference keys each reads, and the module
    kinds they produce."""
    counts = dict(tbl.counts(config))
    steps: list[_Step] = []
    kinds: dict[str, str] = {}
    for rule in tbl.rules:
        if rule.when is not None and not rule.when(config):
            continue
        if rule.kind not in RULES:
            raise ValueError(f"{arch} table: unknown module kind {rule.kind!r} (known: {sorted(RULES)})")
        names = sorted(rule.fields())
        unknown = [n for n in names if n not in counts]
        if unknown:
            raise ValueError(f"{arch} table: fields {unknown} of {rule.src!r} have no count")
        sources_of = rule.sources if isinstance(rule, Rule) else rule.src
        for values in itertools.product(*(range(counts[n]) for n in names)):
            at = dict(zip(names, values))
            sources = tuple(s.format(**at) for s in sources_of)
            module = None if rule.dst is None else rule.dst.format(**at)
            if module is not None:
                if module in kinds:
                    raise ValueError(f"{arch} table: module {module!r} is written twice")
                kinds[module] = rule.kind
            if isinstance(rule, Rule):
                steps.append(_rule_step(rule, sources, module, config))
            else:
                steps.append(_derived_step(rule, sources, module, config))
    return steps, kinds


def table(arch: str) -> Table:
    """The table of architecture ``arch``; the error lists the architectures that have one."""
    try:
        return TABLES[arch]
    except KeyError:
        raise ReferenceImportError(
            f"no {LIBRARY} import for architecture {arch!r}; architectures with one: {', '.join(sorted(TABLES))}"
        ) from None


def our_config(arch: str, config: Config) -> dict[str, Any]:
    """This library's constructor arguments (all of them, defaults filled in) for a reference model built with
    ``config``; raises :class:`ReferenceImportError` for unknown or missing arguments and for a config whose
    model this library does not reproduce, naming why."""
    tbl = table(arch)
    sig = signature(arch)
    ref = dict(config)
    ours_lacking = set(tbl.reference_only) | set(tbl.ignored)
    known = (set(sig.names) - set(tbl.fixed) - set(tbl.renamed.values())) | set(tbl.renamed) | ours_lacking
    unknown = sorted(set(ref) - known)
    if unknown:
        raise ReferenceImportError(f"{tbl.reference} takes no arguments {unknown}; its arguments are {sorted(known)}")
    for name, only in tbl.reference_only.items():
        value = ref.pop(name, only.default)
        if value != only.value:
            raise ReferenceImportError(
                f"{arch}: cannot import {tbl.reference} with {name}={value!r}, only {name}={only.value!r}: {only.why}"
            )
    for name in tbl.ignored:
        ref.pop(name, None)
    ours = {tbl.renamed.get(k, k): v for k, v in ref.items()}
    ours.update(tbl.fixed)
    for name, default in sig.defaults.items():
        ours.setdefault(name, default)
    missing = [n for n in sig.names if n not in ours and n in sig.required]
    if missing:
        raise ReferenceImportError(f"{arch}: the config lacks the required arguments {missing}")
    ours = {n: ours[n] for n in sig.names}  # signature order
    for diff in tbl.differences:
        if diff.when(ours):
            raise ReferenceImportError(f"{arch}: cannot import {tbl.reference} with this config: {diff.why}")
    return ours


def reference_config(arch: str, config: Config) -> dict[str, Any]:
    """The reference's constructor arguments for this library's ``config`` (as the reference check builds it);
    raises ValueError where the reference has no model of that config."""
    tbl = table(arch)
    ref: dict[str, Any] = {}
    back = {ours: theirs for theirs, ours in tbl.renamed.items()}
    for name, value in config.items():
        if name in tbl.fixed:
            if value != tbl.fixed[name]:
                raise ValueError(f"{tbl.reference} has no argument {name}: it uses {name}={tbl.fixed[name]!r}")
            continue
        ref[back.get(name, name)] = value
    for name, only in tbl.reference_only.items():
        ref[name] = only.value
    ref.update(tbl.check_with)
    return ref


def module_kinds(arch: str, config: Config) -> dict[str, str]:
    """``{module path: kind}`` of the checkpoint an import for ``config`` (ours, complete) produces."""
    return _plan(arch, table(arch), config)[1]


def reference_keys(arch: str, config: Config) -> dict[str, str | None]:
    """Every key the reference's state dict holds for ``config`` (ours, complete), with the module of ours it
    goes into (None: dropped, recomputed here)."""
    steps, _ = _plan(arch, table(arch), config)
    return {k: s.module for s in steps for k in s.sources}


def import_state(arch: str, reference_state: Mapping[str, np.ndarray], config: Config) -> Checkpoint:
    """A torch-layout checkpoint of ``arch`` from the state dict of the reference model built with ``config``
    (the reference's constructor arguments).

    Raises :class:`ReferenceImportError` listing every missing and unexpected key, or naming the argument at
    fault (see :func:`our_config`).
    """
    tbl = table(arch)
    ours = our_config(arch, config)
    steps, kinds = _plan(arch, tbl, ours)
    needed = [k for s in steps for k in s.sources]
    given = {k for k in reference_state if not k.startswith(tbl.dropped)}
    missing = sorted(set(needed) - given)
    unexpected = sorted(given - set(needed))
    if missing or unexpected:
        raise ReferenceImportError(
            f"the state dict is not that of {tbl.reference} built with this config: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    tensors: dict[str, np.ndarray] = {}
    for step in steps:
        if step.module is None:
            continue
        try:
            made = step.make([np.asarray(reference_state[k]) for k in step.sources])
        except ReferenceImportError as err:
            raise ReferenceImportError(f"{arch}: {', '.join(step.sources)}: {err}") from None
        tensors.update(
            {_key(step.module, leaf): np.require(v, requirements="C") for leaf, v in made.items()}
        )  # keeps 0-d
    extra = {"imported": {"library": LIBRARY, "class": tbl.reference}}
    return Checkpoint(arch=arch, config=ours, layout="torch", kinds=kinds, tensors=tensors, extra=extra)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a state dict saved with ``torch.save``, as numpy arrays (bfloat16 becomes float32).

    Read with ``torch.load(path, map_location="cpu", weights_only=True)``: no pickled code runs. Raises
    :class:`ReferenceImportError` when the file is missing or holds no ``{name: tensor}`` dict.
    """
    if not os.path.isfile(path):
        raise ReferenceImportError(f"state dict {os.fspath(path)} not found")
    try:
        import torch
    except ImportError:
        raise ReferenceImportError("reading a torch state dict needs torch: `pip install torch`") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and its own errors
        raise ReferenceImportError(
            f"{os.fspath(path)} is not a torch state dict of tensors (torch.load with weights_only=True: "
            f"{_load_failure(err)})"
        ) from None
    if not isinstance(state, Mapping) or not state:
        raise ReferenceImportError(
            f"{os.fspath(path)} is not a state dict: expected a dict of tensors (model.state_dict()), "
            f"got {type(state).__name__}"
        )
    bad = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise ReferenceImportError(
            f"{os.fspath(path)} is not a state dict: the entries {bad} are not tensors named by strings"
        )
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy().copy()
    return out


def _load_failure(err: Exception) -> str:
    """The gist of a ``torch.load`` failure: the unpickler's complaint, else the first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
    if found:
        return " ".join(found.group(1).split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# every architecture's table, keyed by its registry name: filled by the package from its family modules
TABLES: dict[str, Table] = {}
