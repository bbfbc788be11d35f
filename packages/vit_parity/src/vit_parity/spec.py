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


@dataclass(frozen=True)
class Case:
    """A small config of an architecture, the inputs it takes and the output shape it must give."""

    name: str
    config: Mapping[str, Any]
    inputs: tuple[Input, ...]
    output: tuple[int | str, ...]

    def output_shape(self) -> tuple[int, ...]:
        sizes = self.inputs[0].sizes
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.output)


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: its name, the ``module:Class`` path in each backend, its paper and cases."""

    name: str
    torch: str
    flax: str
    paper: str
    cases: tuple[Case, ...] = field(default_factory=tuple)

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
