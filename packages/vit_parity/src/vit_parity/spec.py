"""The contract between the backends: one entry per architecture, with test cases and shapes.

Both backends' shape tests are generated from this registry and parity iterates over it. Axes are
named in torch's channels-first layout; the flax layout moves ``c`` to the end.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    lists; the tests convert every array with :func:`map_arrays`), and ``logits`` / ``tokens`` may
    only index and reshape what they are given.
    """

    def sample(self, case: Case, backend: str, seed: int) -> tuple[Any, ...]:
        """The model's positional arguments for ``backend``, seeded."""
        raise NotImplementedError

    def logits(self, case: Case, backend: str, inputs: tuple[Any, ...], out: Any) -> Any:
        """The model's output in the common form, of shape ``case.output_shape()``."""
        return out

    def tokens(self, case: Case, backend: str, inputs: tuple[Any, ...], block: Any) -> Any:
        """One transformer block's output in the common form that parity compares (e.g. real tokens only)."""
        return block


def map_arrays(fn: Any, tree: Any) -> Any:
    """Apply ``fn`` to every numpy array of ``tree`` (nested lists and tuples), keeping the structure."""
    if isinstance(tree, np.ndarray):
        return fn(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_arrays(fn, t) for t in tree)
    return tree


@dataclass(frozen=True)
class Case:
    """A small config of an architecture, the inputs it takes and the output shape it must give.

    ``hook`` (a :class:`CaseHook`) builds the inputs and reads the outputs of models that do not
    take one array per :class:`Input`; ``inputs`` then only describe them (and size the output).
    """

    name: str
    config: Mapping[str, Any]
    inputs: tuple[Input, ...]
    output: tuple[int | str, ...]
    hook: CaseHook | None = None

    def output_shape(self) -> tuple[int, ...]:
        sizes = self.inputs[0].sizes
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.output)

    def sample(self, backend: str, seed: int = 0) -> tuple[Any, ...]:
        """The model's positional inputs for ``backend`` as numpy arrays: one seeded array per input by default."""
        if self.hook is not None:
            return tuple(self.hook.sample(self, backend, seed))
        return tuple(inp.to_backend(inp.sample(seed + i), backend) for i, inp in enumerate(self.inputs))

    def logits(self, backend: str, inputs: tuple[Any, ...], out: Any) -> Any:
        """The output of ``model(*inputs)`` in the common form (the output itself by default)."""
        return out if self.hook is None else self.hook.logits(self, backend, inputs, out)

    def tokens(self, backend: str, inputs: tuple[Any, ...], block: Any) -> Any:
        """A block's output in the form parity compares (the output itself by default)."""
        return block if self.hook is None else self.hook.tokens(self, backend, inputs, block)


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


# The entries live in vit_parity.registry, one module per family; importing them fills REGISTRY.
import vit_parity.registry  # noqa: E402, F401
