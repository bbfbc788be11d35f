"""Import the reference library's (vit-pytorch's) own state dicts: numpy in, a torch-layout checkpoint out.

``import_state(arch, reference_state, config)`` takes a state dict of a vit-pytorch model as numpy arrays and the
constructor arguments that built it, and returns a :class:`~vit_parity.core.checkpoint.Checkpoint` of this
library's architecture ``arch`` (torch layout, with the module kinds, so it loads in either backend and converts
with ``vit convert``). No framework is imported; :func:`read_state_dict` is the only place torch is used, to read
a file, always with ``torch.load(path, map_location="cpu", weights_only=True)``.

Each architecture has one :class:`Table` in :data:`TABLES`, keyed by its registry name:

- ``reference``: the vit-pytorch class (``"vit_pytorch.vivit:ViViT"``), for messages and the reference check;
- ``rules``: :class:`Rule` s, one per module of this library, each naming the reference module(s) it comes from,
  the module it becomes and that module's kind (``linear``, ``layernorm``, ``conv``, ``rmsnorm``, ``param`` ...,
  the kinds of :mod:`vit_parity.core.convert`). Paths are templates whose ``{i}`` fields run over ``counts``::

      Rule("transformer.layers.{i}.0.norm", "transformer.blocks.{i}.norm1", "layernorm")

  The leaves (``weight``, ``bias``; a ``param`` is the path itself) are the kind's, unless ``leaves`` names the
  reference's (a tuple, or ``{"gamma": "weight"}`` to rename them); ``fill`` names leaves the reference lacks
  (a LayerNorm without bias: zeros); ``fn(arrays, leaf, config)`` reshapes, reorders or merges (one array per
  source: ``to_q`` and ``to_kv`` into ``to_qkv``); ``when(config)`` keeps a rule to some configs; a ``dst`` of
  None drops what the reference saves and this library recomputes (a constant table). A :class:`Derived` rule
  computes a module from whole reference tensors where per-leaf rules cannot (NaViT's pooling query).
- ``counts(config)``: the range of every template field (``{"i": config["depth"]}``);
- the constructor arguments: ``renamed`` (reference name to ours; none so far: the names agree),
  ``reference_only`` (the reference's arguments this library lacks, with the one value it reproduces, e.g.
  NaViT's ``num_registers=0``), ``ignored`` (reference arguments that do not change the weights),
  ``fixed`` (our arguments the reference does not take, with the value it hard-codes);
- ``differences``: :class:`Difference` s, configs where the two models compute different functions on purpose;
  the import refuses them, naming why;
- ``check_with``: reference arguments the reference check builds it with (ViViT's explicit softmax);
- ``dropped``: prefixes of reference keys that belong to no module of this model and are left out (the teacher
  in a distillation wrapper's state dict, when the student is imported).

Every key of the state dict must be consumed and every key the rules expect present; otherwise one
:class:`ReferenceImportError` lists them all. Functions and configs see this library's constructor arguments
(after renaming, with our defaults filled in from :data:`vit_parity.core.facts.SIGNATURES`).

Adding an architecture: build the reference model at a small config and print its ``state_dict()`` keys and
shapes beside this library's model's; write one ``Rule`` per module of ours (the helpers below cover the
reference's usual pre-norm transformer), add the entry ``TABLES["<registry name>"] = Table(...)`` and run
``nox -s reference``: its tests iterate over the registry, compare the kinds the rules produce with the built
model's and the logits of every case with the reference's, and fail for an architecture that has a reference
counterpart but no table.
"""

from __future__ import annotations

import itertools
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vit_parity.core.checkpoint import Checkpoint
from vit_parity.core.convert import RULES, ConversionError
from vit_parity.core.facts.signatures import signature

__all__ = [
    "LIBRARY",
    "TABLES",
    "Derived",
    "Difference",
    "Only",
    "ReferenceImportError",
    "Rule",
    "Table",
    "import_state",
    "module_kinds",
    "our_config",
    "read_state_dict",
    "reference_config",
    "reference_keys",
    "table",
]

LIBRARY = "vit-pytorch"
Config = Mapping[str, Any]
# fn(arrays, leaf, config): one array per source path, the leaf of ours being written, our config
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


# ---- shared pieces of the tables ---------------------------------------------------------------------------


def _add_batch_axis(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """``(n, d)`` to ``(1, n, d)``: the reference's ViT keeps its class token and positions without a batch axis."""
    return arrays[0][None]


def _flatten_grid(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """``(1, frames, patches, d)`` to ``(1, frames * patches, d)``: ViViT's positions over the tubelet grid."""
    a = arrays[0]
    return a.reshape(1, -1, a.shape[-1])


def _concat_rows(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """Separate query and key-value projections (output rows) into one ``to_qkv``."""
    return np.concatenate(arrays, axis=0)


def _project_out(config: Config) -> bool:
    """Whether the attention has an output projection: not with one head as wide as the model (both libraries)."""
    return not (config["heads"] == 1 and config["dim_head"] == config["dim"])


def _attention(src: str, dst: str, *, out: str, out_bias: bool, when: Callable[[Config], bool] | None) -> tuple:
    """The reference's usual attention (a LayerNorm ``norm`` inside it, a bias-free ``to_qkv``, ``out`` the
    output projection) as our block's ``norm1`` and ``attn``."""
    return (
        Rule(f"{src}.norm", f"{dst}.norm1", "layernorm"),
        Rule(f"{src}.to_qkv", f"{dst}.attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{src}.{out}", f"{dst}.attn.to_out", "linear", leaves=None if out_bias else ("weight",), when=when),
    )


def _feedforward(src: str, dst: str, *, out: int) -> tuple:
    """The reference's feed-forward ``Sequential(LayerNorm, Linear, GELU, [Dropout,] Linear ...)`` as our block's
    ``norm2`` and ``ff`` (``out``: the index of the second Linear)."""
    return (
        Rule(f"{src}.0", f"{dst}.norm2", "layernorm"),
        Rule(f"{src}.1", f"{dst}.ff.fc1", "linear"),
        Rule(f"{src}.{out}", f"{dst}.ff.fc2", "linear"),
    )


def _layers(src: str, dst: str, n: str = "i", *, simple: bool = False) -> tuple:
    """``{src}.layers.{n}``: the reference's pre-norm transformer layers (ViT's, or SimpleViT's with a bias-free
    output projection that is always there and no dropout) as ``{dst}.blocks.{n}``; plus the final norm."""
    layer, block = f"{src}.layers.{{{n}}}", f"{dst}.blocks.{{{n}}}"
    attn = _attention(
        f"{layer}.0", block, out="to_out" if simple else "to_out.0", out_bias=not simple,
        when=None if simple else _project_out,
    )  # fmt: skip
    return (*attn, *_feedforward(f"{layer}.1.net", block, out=3 if simple else 4))


def _patch_embedding(src: str = "to_patch_embedding", first: int = 1) -> tuple:
    """``Sequential([Rearrange,] LayerNorm, Linear, LayerNorm)`` as our ``PatchEmbed`` (same patch layout)."""
    return (
        Rule(f"{src}.{first}", "to_patch_embedding.pre_norm", "layernorm"),
        Rule(f"{src}.{first + 1}", "to_patch_embedding.proj", "linear"),
        Rule(f"{src}.{first + 2}", "to_patch_embedding.post_norm", "layernorm"),
    )


_T2T_MAX_SPLITS = 8


def _t2t_token_stage() -> tuple:
    """T2T's ``to_patch_embedding`` Sequential: four entries per soft split (reshape, unfold, rearrange, a one-block
    transformer but after the last split), then the Linear; ours names the transformers and ``proj``."""
    rules: list = []
    for t in range(_T2T_MAX_SPLITS):

        def splits(c: Config, t: int = t) -> bool:
            return t < len(c["t2t_layers"]) - 1

        layer, block = f"to_patch_embedding.{4 * t + 3}.layers.0", f"to_patch_embedding.transformers.{t}.blocks.0"
        rules += _only_when(
            splits,
            *_attention(f"{layer}.0", block, out="to_out.0", out_bias=True, when=lambda c: False),
            *_feedforward(f"{layer}.1.net", block, out=4),
            Rule(f"to_patch_embedding.{4 * t + 3}.norm", f"to_patch_embedding.transformers.{t}.norm", "layernorm"),
        )
        rules += _only_when(
            lambda c, t=t: len(c["t2t_layers"]) == t + 1,
            Rule(f"to_patch_embedding.{4 * t + 4}", "to_patch_embedding.proj", "linear"),
        )
    return tuple(rules)


def _depth(config: Config) -> dict[str, int]:
    return {"i": config["depth"]}


def _only_when(condition: Callable[[Config], bool], *rules: Rule) -> tuple:
    """``rules``, each kept to the configs where ``condition`` (and its own ``when``) holds."""

    def both(rule: Rule) -> Callable[[Config], bool]:
        own = rule.when
        return condition if own is None else (lambda c: condition(c) and own(c))

    return tuple(replace(r, when=both(r)) for r in rules)


# ---- ViViT -----------------------------------------------------------------------------------------------------


def _encoder(config: Config) -> bool:
    return config["variant"] == "factorized_encoder"


def _self_attention(config: Config) -> bool:
    return config["variant"] == "factorized_self_attention"


def _factorized_layers() -> tuple:
    """The reference's ``FactorizedTransformer``: layer ``{s}`` holds a spatial attention (0), a temporal one (1)
    and the feed-forward (2), each with its own norm; ours are one ``FactorizedBlock``."""
    layer, block = "factorized_transformer.layers.{s}", "factorized_transformer.blocks.{s}"
    return (
        *_attention(f"{layer}.0", block, out="to_out.0", out_bias=True, when=_project_out),
        Rule(f"{layer}.1.norm", f"{block}.temporal_norm", "layernorm"),
        Rule(f"{layer}.1.to_qkv", f"{block}.temporal_attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{layer}.1.to_out.0", f"{block}.temporal_attn.to_out", "linear", when=_project_out),
        *_feedforward(f"{layer}.2.net", block, out=4),
        Rule("factorized_transformer.norm", "factorized_transformer.norm", "layernorm"),
    )


_MEAN_POOL_VIT = Difference(
    "with pool='mean' the reference builds no class token and averages the patch tokens; this ViT keeps its "
    "class token and averages it with them",
    lambda c: c["pool"] == "mean",
)
_NO_HEAD = Difference(
    "with num_classes=0 the reference has no head and returns the tokens",
    lambda c: c["num_classes"] < 1,
)
_ONE_WIDE_HEAD = Difference(
    "with one head as wide as the model (heads=1, dim_head=dim) this library's attention has no output "
    "projection; the reference's SimpleViT keeps a bias-free one",
    lambda c: not _project_out(c),
)


# ---- NaViT ---------------------------------------------------------------------------------------------------


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
        Rule((f"{src}.to_q", f"{src}.to_kv"), f"{dst}.to_qkv", "linear", leaves=("weight",), fn=_concat_rows),
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

# ---- CCT -------------------------------------------------------------------------------------------------------


def _cct_rules() -> tuple:
    block, ours = "classifier.blocks.{i}", "transformer.blocks.{i}"
    return (
        Rule("tokenizer.conv_layers.{c}.0", "tokenizer.convs.{c}", "conv", leaves=("weight",)),
        Rule("classifier.positional_emb", "positional_emb", when=lambda c: c["positional_embedding"] == "learnable"),
        # the reference saves its sinusoid; this library recomputes the same table and does not save it
        Rule("classifier.positional_emb", None, when=lambda c: c["positional_embedding"] == "sine"),
        Rule(f"{block}.pre_norm", f"{ours}.norm1", "layernorm"),
        Rule(f"{block}.self_attn.qkv", f"{ours}.attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{block}.self_attn.proj", f"{ours}.attn.to_out", "linear"),
        Rule(f"{block}.norm1", f"{ours}.norm2", "layernorm"),
        Rule(f"{block}.linear1", f"{ours}.ff.fc1", "linear"),
        Rule(f"{block}.linear2", f"{ours}.ff.fc2", "linear"),
        Rule("classifier.norm", "transformer.norm", "layernorm"),
        Rule("classifier.attention_pool", "attention_pool", "linear"),
        Rule("classifier.fc", "fc", "linear"),
    )


_CCT_ONE_HEAD = Difference(
    "with num_heads=1 this library's attention has no output projection (one head as wide as the model); the "
    "reference's CCT keeps one",
    lambda c: c["num_heads"] == 1,
)

# ---- DeepViT, CaiT, CrossViT ----------------------------------------------------------------------------------

_SQUARE_ONLY = Difference(
    "vit-pytorch's model takes a square image_size and patch_size (ints); this one also takes (h, w)",
    lambda c: not (isinstance(c["image_size"], int) and isinstance(c.get("patch_size", 0), int)),
)


def _split_q_kv(src: str, dst: str) -> Rule:
    """The reference's bias-free ``to_q`` and ``to_kv`` as our one ``to_qkv`` (rows q, then k, then v)."""
    return Rule((f"{src}.to_q", f"{src}.to_kv"), dst, "linear", leaves=("weight",), fn=_concat_rows)


def _deepvit_layers() -> tuple:
    """DeepViT's layers: ViT's, with the re-attention's head mixing and head norm inside the attention."""
    layer, attn = "transformer.layers.{i}", "transformer.blocks.{i}.attn"
    return (
        *_layers("transformer", "transformer"),
        Rule(f"{layer}.0.reattn_weights", f"{attn}.mix_heads_post_attn"),
        Rule(f"{layer}.0.reattn_norm.1", f"{attn}.head_norm", "layernorm"),
    )


def _flat_scale(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """A layer scale saved as ``(1, 1, dim)`` (CaiT's) or ``(dim,)`` (XCiT's) as our ``gamma`` ``(dim,)``."""
    return arrays[0].reshape(-1)


def _cait_stack(src: str, dst: str, n: str, *, mix: bool = True) -> tuple:
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
        _split_q_kv(attn, f"{block}.attn.to_qkv"),
        *(mixing if mix else ()),
        Rule(f"{attn}.to_out.0", f"{block}.attn.to_out", "linear"),
        Rule(f"{layer}.0.scale", f"{block}.ls1.gamma", fn=_flat_scale),
        *_feedforward(f"{layer}.1.fn.net", block, out=4),
        Rule(f"{layer}.1.scale", f"{block}.ls2.gamma", fn=_flat_scale),
    )


def _widths_differ(config: Config) -> bool:
    return config["sm_dim"] != config["lg_dim"]


def _cross_vit_counts(config: Config) -> dict[str, int]:
    names = {"d": "depth", "c": "cross_attn_depth", "sm": "sm_enc_depth", "lg": "lg_enc_depth"}
    return {field: config[name] for field, name in names.items()}


def _cross_vit_one_wide_head(config: Config) -> bool:
    widths = [
        (config["sm_enc_heads"], config["sm_enc_dim_head"], config["sm_dim"]),
        (config["lg_enc_heads"], config["lg_enc_dim_head"], config["lg_dim"]),
        *((config["cross_attn_heads"], config["cross_attn_dim_head"], c) for c in (config["sm_dim"], config["lg_dim"])),
    ]
    return any(heads == 1 and dim_head == dim for heads, dim_head, dim in widths)


def _cross_vit_rules() -> tuple:
    """CrossViT: two image embedders, ``depth`` multi-scale blocks (a transformer per branch (0, 1), then rounds of
    cross-attention (2): the small branch's class token reads the large branch (0) and the other way round (1)),
    and a head per branch."""
    rules: list = []
    for branch in ("sm", "lg"):
        rules += [
            Rule(f"{branch}_image_embedder.cls_token", f"{branch}_image_embedder.cls_token"),
            Rule(f"{branch}_image_embedder.pos_embedding", f"{branch}_image_embedder.pos_embedding"),
            *(replace(r, src=f"{branch}_image_embedder.{r.src}", dst=f"{branch}_image_embedder.{r.dst}")
              for r in _patch_embedding()),
            Rule(f"{branch}_mlp_head.0", f"{branch}_mlp_head.norm", "layernorm"),
            Rule(f"{branch}_mlp_head.1", f"{branch}_mlp_head.fc", "linear"),
        ]  # fmt: skip
    for index, branch in enumerate(("sm", "lg")):
        layer = f"multi_scale_encoder.layers.{{d}}.{index}.layers.{{{branch}}}"
        block = f"multi_scale_encoder.layers.{{d}}.{branch}_transformer.blocks.{{{branch}}}"
        rules += [
            Rule(f"{layer}.0.norm", f"{block}.norm1", "layernorm"),
            _split_q_kv(f"{layer}.0", f"{block}.attn.to_qkv"),
            Rule(f"{layer}.0.to_out.0", f"{block}.attn.to_out", "linear"),
            *_feedforward(f"{layer}.1.net", block, out=4),
            Rule(
                f"multi_scale_encoder.layers.{{d}}.{index}.norm",
                f"multi_scale_encoder.layers.{{d}}.{branch}_transformer.norm",
                "layernorm",
            ),
        ]
        src = f"multi_scale_encoder.layers.{{d}}.2.layers.{{c}}.{index}"
        dst = f"multi_scale_encoder.layers.{{d}}.{branch}_attend_{'lg' if branch == 'sm' else 'sm'}.{{c}}"
        rules += [
            Rule(f"{src}.project_in", f"{dst}.project_in", "linear", when=_widths_differ),
            Rule(f"{src}.fn.norm", f"{dst}.norm", "layernorm"),
            _split_q_kv(f"{src}.fn", f"{dst}.attn.to_qkv"),
            Rule(f"{src}.fn.to_out.0", f"{dst}.attn.to_out", "linear"),
            Rule(f"{src}.project_out", f"{dst}.project_out", "linear", when=_widths_differ),
        ]
    return tuple(rules)


# ---- Distillation --------------------------------------------------------------------------------------------


def _under(prefix: str, rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """``rules`` reading the reference's keys under ``prefix`` (a wrapper's ``student.``)."""
    return tuple(replace(r, src=tuple(f"{prefix}{s}" for s in r.sources)) for r in rules)


def _as_token(arrays: Sequence[np.ndarray], leaf: str, config: Config) -> np.ndarray:
    """A token saved as ``(dim,)`` or ``(1, dim)`` (XCiT's class token, the distillation token) as ours
    ``(1, 1, dim)``."""
    return arrays[0].reshape(1, 1, -1)


# ---- XCiT ------------------------------------------------------------------------------------------------------


def _xcit_rules() -> tuple:
    """XCiT: XCA layers (0: layer-scaled cross-covariance attention, 1: local patch interaction, 2: feed-forward),
    the final norm, then CaiT-like class-attention layers without head mixing."""
    layer, block = "xcit_transformer.layers.{i}", "patch_transformer.blocks.{i}"
    xca, lpi = f"{layer}.0.fn", f"{layer}.1.fn.net"
    bn_leaves = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return (
        Rule("cls_token", "cls_token", fn=_as_token),
        Rule("pos_embedding", "pos_embedding"),
        *_patch_embedding(),
        Rule(f"{xca}.norm", f"{block}.norm1", "layernorm"),
        Rule(f"{xca}.to_qkv", f"{block}.attn.to_qkv", "linear", leaves=("weight",)),
        Rule(f"{xca}.temperature", f"{block}.attn.temperature"),
        Rule(f"{xca}.to_out.0", f"{block}.attn.to_out", "linear"),
        Rule(f"{layer}.0.scale", f"{block}.ls1.gamma"),
        Rule(f"{lpi}.0", f"{block}.norm_lpi", "layernorm"),
        Rule(f"{lpi}.2", f"{block}.lpi.conv1", "conv"),
        Rule(f"{lpi}.3", f"{block}.lpi.bn", "batchnorm", leaves=bn_leaves),
        Rule(f"{lpi}.5", f"{block}.lpi.conv2", "conv"),
        Rule(f"{layer}.1.scale", f"{block}.ls_lpi.gamma"),
        *_feedforward(f"{layer}.2.fn.net", block, out=4),
        Rule(f"{layer}.2.scale", f"{block}.ls2.gamma"),
        Rule("final_norm", "patch_transformer.norm", "layernorm"),
        *_cait_stack("cls_transformer", "cls_transformer", "j", mix=False),
        Rule("mlp_head.0", "norm", "layernorm"),
        Rule("mlp_head.1", "mlp_head", "linear"),
    )


_VIT_RULES = (
    Rule("cls_token", "cls_token", fn=_add_batch_axis),
    Rule("pos_embedding", "pos_embedding", fn=_add_batch_axis),
    *_patch_embedding(),
    *_layers("transformer", "transformer"),
    Rule("transformer.norm", "transformer.norm", "layernorm"),
    Rule("mlp_head", "mlp_head", "linear"),
)

# ---- the tables ------------------------------------------------------------------------------------------------

TABLES: dict[str, Table] = {
    "vit": Table(
        reference="vit_pytorch.vit:ViT",
        rules=_VIT_RULES,
        counts=_depth,
        differences=(_MEAN_POOL_VIT, _NO_HEAD),
    ),
    "distill": Table(
        # the reference's student holds no distillation token or head (its DistillWrapper does): the import reads
        # the wrapper's state dict (a plain DistillableViT's imports as "vit") and leaves the teacher out
        reference="vit_pytorch.distill:DistillableViT",
        rules=(
            *_under("student.", _VIT_RULES),
            Rule("distillation_token", "distillation_token", fn=_as_token),
            Rule("distill_mlp.1", "distill_head", "linear"),
        ),
        counts=_depth,
        differences=(_MEAN_POOL_VIT, _NO_HEAD),
        dropped=("teacher.",),
    ),
    "simple_vit": Table(
        reference="vit_pytorch.simple_vit:SimpleViT",
        rules=(
            *_patch_embedding(),
            *_layers("transformer", "transformer", simple=True),
            Rule("transformer.norm", "transformer.norm", "layernorm"),
            Rule("linear_head", "linear_head", "linear"),
        ),
        counts=_depth,
        differences=(_ONE_WIDE_HEAD,),
    ),
    "vit_3d": Table(
        reference="vit_pytorch.vit_3d:ViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *_patch_embedding(),
            *_layers("transformer", "transformer"),
            # the reference's transformer has no final norm and its head starts with one: the same on the class
            # token (pool='cls'), which the norm sees alone in both
            Rule("mlp_head.0", "transformer.norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=_depth,
        differences=(
            Difference(
                "with pool='mean' the reference normalizes the mean of the tokens (the LayerNorm opens its head); "
                "this ViT averages normalized tokens",
                lambda c: c["pool"] == "mean",
            ),
        ),
    ),
    "simple_vit_3d": Table(
        reference="vit_pytorch.simple_vit_3d:SimpleViT",
        rules=(
            *_patch_embedding(),
            *_layers("transformer", "transformer", simple=True),
            Rule("transformer.norm", "transformer.norm", "layernorm"),
            Rule("linear_head", "linear_head", "linear"),
        ),
        counts=_depth,
        differences=(_ONE_WIDE_HEAD,),
    ),
    "vivit": Table(
        reference="vit_pytorch.vivit:ViViT",
        rules=(
            Rule("pos_embedding", "pos_embedding", fn=_flatten_grid),
            Rule("spatial_cls_token", "spatial_cls_token", when=lambda c: c["pool"] == "cls"),
            *_patch_embedding(),
            Rule("mlp_head", "mlp_head", "linear"),
            # factorized encoder: a spatial, then a temporal transformer
            *_only_when(
                _encoder,
                Rule("temporal_cls_token", "temporal_cls_token", when=lambda c: c["pool"] == "cls"),
                *_layers("spatial_transformer", "spatial_transformer", "s"),
                Rule("spatial_transformer.norm", "spatial_transformer.norm", "layernorm"),
                *_layers("temporal_transformer", "temporal_transformer", "t"),
                Rule("temporal_transformer.norm", "temporal_transformer.norm", "layernorm"),
            ),
            # factorized self-attention: each layer attends over space (0), then time (1), then its MLP (2)
            *_only_when(_self_attention, *_factorized_layers()),
        ),
        counts=lambda c: {"s": c["spatial_depth"], "t": c["temporal_depth"]},
        ignored=("use_flash_attn",),  # the fused kernel or the explicit softmax: the same weights
        # its fused path keeps attention dropout on in eval mode: the reference check runs the explicit softmax
        check_with={"use_flash_attn": False},
    ),
    "cct_3d": Table(
        reference="vit_pytorch.cct_3d:CCT",
        rules=_cct_rules(),
        counts=lambda c: {"i": c["num_layers"], "c": c["n_conv_layers"]},
        # the reference's CCT passes these to its transformer itself (a second value is a TypeError there)
        fixed={"dropout_rate": 0.0, "attention_dropout": 0.1},
        differences=(_CCT_ONE_HEAD,),
    ),
    "t2t": Table(
        reference="vit_pytorch.t2t:T2TViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *_t2t_token_stage(),
            *_layers("transformer", "transformer"),
            Rule("transformer.norm", "transformer.norm", "layernorm"),
            Rule("mlp_head", "mlp_head", "linear"),
        ),
        counts=_depth,
        differences=(_SQUARE_ONLY,),
    ),
    "cct": Table(
        reference="vit_pytorch.cct:CCT",
        rules=_cct_rules(),
        counts=lambda c: {"i": c["num_layers"], "c": c["n_conv_layers"]},
        differences=(_CCT_ONE_HEAD,),
    ),
    "deepvit": Table(
        reference="vit_pytorch.deepvit:DeepViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *_patch_embedding(),
            *_deepvit_layers(),
            Rule("mlp_head.0", "norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=_depth,
        differences=(_SQUARE_ONLY,),
    ),
    "cait": Table(
        reference="vit_pytorch.cait:CaiT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *_patch_embedding(),
            *_cait_stack("patch_transformer", "patch_transformer", "i"),
            *_cait_stack("cls_transformer", "cls_transformer", "j"),
            Rule("mlp_head.0", "norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=lambda c: {"i": c["depth"], "j": c["cls_depth"]},
        fixed={"channels": 3},  # the reference's CaiT takes RGB images
        differences=(_SQUARE_ONLY,),
        # the reference drops layers in eval mode too (it never reads self.training): check it without
        check_with={"layer_dropout": 0.0},
    ),
    "cross_vit": Table(
        reference="vit_pytorch.cross_vit:CrossViT",
        rules=_cross_vit_rules(),
        counts=_cross_vit_counts,
        differences=(
            Difference(
                "vit-pytorch's CrossViT takes a square image_size and patch sizes (ints); this one also takes (h, w)",
                lambda c: not all(isinstance(c[k], int) for k in ("image_size", "sm_patch_size", "lg_patch_size")),
            ),
            Difference(
                "with one head as wide as its stream (heads=1, dim_head=dim) this library's attention has no "
                "output projection; the reference's CrossViT keeps one",
                _cross_vit_one_wide_head,
            ),
        ),
    ),
    "xcit": Table(
        reference="vit_pytorch.xcit:XCiT",
        rules=_xcit_rules(),
        counts=lambda c: {"i": c["depth"], "j": c["cls_depth"]},
        fixed={"channels": 3},  # the reference's XCiT takes RGB images
        differences=(_SQUARE_ONLY,),
        # the reference drops layers in eval mode too (it never reads self.training): check it without
        check_with={"layer_dropout": 0.0},
    ),
    "navit": Table(
        reference="vit_pytorch.na_vit:NaViT",
        rules=_navit_rules(nested=False, axes=("height", "width")),
        counts=_depth,
    ),
    "navit_nested": Table(
        reference="vit_pytorch.na_vit_nested_tensor:NaViT",
        rules=_navit_rules(nested=True, axes=("height", "width")),
        counts=_depth,
        reference_only={"qk_rmsnorm": _QK_NORM},
    ),
    "navit_nested_3d": Table(
        reference="vit_pytorch.na_vit_nested_tensor_3d:NaViT",
        rules=(
            *_navit_rules(nested=True, axes=("frame", "height", "width")),
            Rule("register_tokens", None),  # empty: num_registers=0
        ),
        counts=_depth,
        reference_only={
            "qk_rmsnorm": _QK_NORM,
            "num_registers": Only(4, 0, "this NaViT has no register tokens"),
        },
    ),
}
