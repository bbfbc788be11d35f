"""The contract between the backends: one entry per architecture, with test cases and shapes.

Both backends' shape tests are generated from this registry and parity iterates over it. Axes are
named in torch's channels-first layout; the flax layout moves ``c`` to the end.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vit_parity.core.config import MODEL_KEY

BACKENDS = ("torch", "flax")


@dataclass(frozen=True)
class Input:
    """One model input: its argument name, its torch axes (``"b c t h w"``) and their sizes."""

    name: str
    axes: str
    sizes: Mapping[str, int]

    def shape(self, backend: str) -> tuple[int, ...]:
        return tuple(self.sizes[a] for a in self.layout(backend).split())

    def layout(self, backend: str) -> str:
        axes = self.axes.split()
        if backend == "flax" and "c" in axes:
            axes = [a for a in axes if a != "c"] + ["c"]
        return " ".join(axes)

    def sample(self, seed: int = 0) -> np.ndarray:
        """A seeded float32 input in the torch layout."""
        return np.random.default_rng(seed).standard_normal(self.shape("torch"), dtype=np.float32)

    def to_backend(self, x: np.ndarray, backend: str) -> np.ndarray:
        """Move a torch-layout array to ``backend``'s layout."""
        axes = self.axes.split()
        order = [axes.index(a) for a in self.layout(backend).split()]
        return np.ascontiguousarray(np.transpose(x, order))


class CaseHook:
    """Builds a case's inputs and reads its outputs, for models that do not take one array per :class:`Input`.

    For example NaViT takes lists of images of different sizes in torch and packed arrays in flax.
    A hook stays framework-free: ``sample`` returns numpy arrays (in lists where the model takes
    lists; the tests convert every array with :func:`map_arrays`), and ``logits`` / ``feature`` may
    only index and reshape what they are given. Hooks are test fixtures: a case names its hook with
    :class:`HookRef`, which imports it only when a test uses it.
    """

    def sample(self, case: Case, backend: str, seed: int) -> tuple[Any, ...]:
        """The model's positional arguments for ``backend``, seeded."""
        raise NotImplementedError

    def logits(self, case: Case, backend: str, inputs: tuple[Any, ...], out: Any) -> Any:
        """The model's output in the common form, of the case's output shape."""
        return out

    def feature(self, case: Case, backend: str, inputs: tuple[Any, ...], label: str, value: Any) -> Any:
        """One labelled feature in the common form that parity compares (e.g. real tokens only)."""
        return value


@dataclass(frozen=True)
class HookRef:
    """A :class:`CaseHook` named by its import path (``"module:Class"``) and constructor arguments.

    The registry stays free of test fixtures: the hook's module is imported on first use.
    """

    path: str
    args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def to(cls, path: str, **args: Any) -> HookRef:
        """``HookRef.to("module:Class", **constructor_arguments)``."""
        return cls(path, tuple(sorted(args.items())))

    def resolve(self) -> CaseHook:
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)(**dict(self.args))


def map_arrays(fn: Any, tree: Any) -> Any:
    """Apply ``fn`` to every numpy array of ``tree`` (nested lists and tuples), keeping the structure."""
    if isinstance(tree, np.ndarray):
        return fn(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_arrays(fn, t) for t in tree)
    return tree


# What a model returns: one array of a shape (``("b", 10)``: sizes or input axis names; ``()`` a loss), a tuple
# of such outputs, or a dict of them.
Shape = tuple[int | str, ...]
Output = Shape | tuple[Shape, ...] | Mapping[str, Shape]


def output_leaves(out: Any, label: str = "output") -> list[tuple[str, Any]]:
    """The arrays of a model output (an array, a tuple of them or a dict of them), labelled ``output``,
    ``output[0]``, ``output.loss`` ..., in order."""
    if isinstance(out, Mapping):
        return [leaf for k, v in out.items() for leaf in output_leaves(v, f"{label}.{k}")]
    if isinstance(out, (tuple, list)):
        return [leaf for i, v in enumerate(out) for leaf in output_leaves(v, f"{label}[{i}]")]
    return [(label, out)]


def shapes_of(out: Any) -> Any:
    """The shape(s) of a model output in its structure, comparable with :meth:`Case.output_shape`."""
    if isinstance(out, Mapping):
        return {k: shapes_of(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return tuple(shapes_of(v) for v in out)
    return tuple(np.shape(out)) if not hasattr(out, "shape") else tuple(out.shape)


def _is_shape(output: Any) -> bool:
    return isinstance(output, tuple) and all(isinstance(d, (int, str)) for d in output)


@dataclass(frozen=True)
class Case:
    """A small config of an architecture, the inputs it takes and the output it must give.

    ``output`` is a shape (a classifier's logits ``("b", 10)``, a loss ``()``), a tuple of shapes or a
    dict of them (see :data:`Output`). ``models`` are constructor arguments that are themselves models
    (a wrapper's encoder, a distillation teacher): ``{"encoder": ("vit", {...config...})}`` builds the
    registry model ``vit`` from that config in the same backend and passes it as ``encoder``.
    ``hook`` (a :class:`HookRef`) builds the inputs and reads the outputs of models that do not take one
    array per :class:`Input`; ``inputs`` then only describe them (and size the output).
    ``frozen`` lists the parameters that the case's call leaves without a gradient by design, as prefixes of their
    dotted keys (the same in both backends): a distillation teacher (``"teacher"``, run without gradients), a
    student's distillation token and head (unused by its default call). The gradient tests require no (or a zero)
    gradient there and a nonzero one everywhere else.
    """

    name: str
    config: Mapping[str, Any]
    inputs: tuple[Input, ...]
    output: Output
    hook: HookRef | None = None
    models: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()

    def is_frozen(self, key: str) -> bool:
        """Whether the parameter ``key`` (dotted, e.g. ``teacher.mlp_head.weight``) is frozen in this case."""
        return any(key == p or key.startswith(f"{p}.") for p in self.frozen)

    def output_shape(self) -> Any:
        """The output's shape(s) with axis names replaced by the first input's sizes, in ``output``'s structure."""
        sizes = self.inputs[0].sizes

        def resolve(shape: Shape) -> tuple[int, ...]:
            return tuple(sizes[d] if isinstance(d, str) else d for d in shape)

        if isinstance(self.output, Mapping):
            return {k: resolve(v) for k, v in self.output.items()}
        if _is_shape(self.output):
            return resolve(self.output)
        return tuple(resolve(v) for v in self.output)

    def build(self, backend: str, cls: type, **runtime: Any) -> Any:
        """The model of this case in ``backend`` (sub-models built first); ``runtime`` (e.g. ``rngs``) goes to every
        constructor."""
        subs = {k: get(arch).load_class(backend)(**cfg, **runtime) for k, (arch, cfg) in self.models.items()}
        return cls(**self.config, **subs, **runtime)

    def _hook(self) -> CaseHook | None:
        return None if self.hook is None else _resolved(self.hook)

    def sample(self, backend: str, seed: int = 0) -> tuple[Any, ...]:
        """The model's positional inputs for ``backend`` as numpy arrays: one seeded array per input by default."""
        hook = self._hook()
        if hook is not None:
            return tuple(hook.sample(self, backend, seed))
        return tuple(inp.to_backend(inp.sample(seed + i), backend) for i, inp in enumerate(self.inputs))

    def logits(self, backend: str, inputs: tuple[Any, ...], out: Any) -> Any:
        """The output of ``model(*inputs)`` in the common form (the output itself by default)."""
        hook = self._hook()
        return out if hook is None else hook.logits(self, backend, inputs, out)

    def feature(self, backend: str, inputs: tuple[Any, ...], label: str, value: Any) -> Any:
        """A labelled feature in the form parity compares: a flax stage map ``(b, *spatial, c)`` is moved to
        torch's ``(b, c, *spatial)``; a hook may reshape further (e.g. real tokens only)."""
        if backend == "flax" and label.rsplit("/", 1)[-1].startswith("stage") and np.ndim(value) >= 3:
            value = np.moveaxis(np.asarray(value), -1, 1)
        hook = self._hook()
        return value if hook is None else hook.feature(self, backend, inputs, label, value)


@functools.cache
def _resolved(ref: HookRef) -> CaseHook:
    return ref.resolve()


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: its name, the ``module:Class`` path in each backend, its paper and cases."""

    name: str
    torch: str
    flax: str
    paper: str
    cases: tuple[Case, ...] = field(default_factory=tuple)
    # False where the flax class is a counterpart under another file name: the jagged nested-tensor
    # NaViTs have no flax mirror and share the packed model (and so its checkpoints).
    mirror: bool = True

    def path(self, backend: str) -> str:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return self.torch if backend == "torch" else self.flax

    def load_class(self, backend: str) -> type:
        module, _, name = self.path(backend).partition(":")
        return getattr(importlib.import_module(module), name)

    def case(self, name: str | None = None) -> Case:
        if name is None:
            return self.cases[0]
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(f"{self.name} has no case {name!r}; cases: {[c.name for c in self.cases]}")


REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ArchSpec:
    """The spec of architecture ``name``; the error lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(REGISTRY)}") from None


def same_weights(a: str, b: str) -> bool:
    """Whether checkpoints of architecture ``a`` load into models of ``b``: the same entry, or entries
    naming the same flax class (e.g. NaViT masked and nested in torch, both packed in flax)."""
    return a == b or (a in REGISTRY and b in REGISTRY and REGISTRY[a].flax == REGISTRY[b].flax)


def registered_name(cls: type) -> str | None:
    """The registry name of a model class of either backend, or None."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    return next((s.name for s in REGISTRY.values() if path in (s.torch, s.flax)), None)


def build_models(config: Mapping[str, Any], backend: str, **runtime: Any) -> dict[str, Any]:
    """``config`` with every recorded model argument (``{"__model__": name, "config": ...}``, see
    :func:`vit_parity.core.config.model_record`) built in ``backend``; ``runtime`` goes to those constructors."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and MODEL_KEY in value:
            inner = build_models(value["config"], backend, **runtime)
            value = get(value[MODEL_KEY]).load_class(backend)(**inner, **runtime)
        out[key] = value
    return out


def arch_of(cls: type, backend: str) -> str:
    """The registry name of a model class of ``backend``."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    for spec in REGISTRY.values():
        if spec.path(backend) == path:
            return spec.name
    raise KeyError(f"{path} has no entry in the vit_parity spec registry")


def image(b: int = 2, c: int = 3, h: int = 32, w: int = 32) -> Input:
    return Input("img", "b c h w", {"b": b, "c": c, "h": h, "w": w})


def video(b: int = 2, c: int = 3, t: int = 8, h: int = 32, w: int = 32, name: str = "video") -> Input:
    return Input(name, "b c t h w", {"b": b, "c": c, "t": t, "h": h, "w": w})


# The entries live in vit_parity.core.registry, one module per family; importing them fills REGISTRY.
import vit_parity.core.registry  # noqa: E402, F401
