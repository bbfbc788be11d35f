"""Save and load vit_flax models in the shared checkpoint format (see ``vit_parity.checkpoint``)."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_parity import checkpoint as ckpt_io
from vit_parity import spec
from vit_parity.convert import check_state

_KINDS: tuple[tuple[type[nnx.Module], str], ...] = (
    (nnx.Linear, "linear"),
    (nnx.Conv, "conv"),
    (nnx.LayerNorm, "layernorm"),
    (nnx.GroupNorm, "groupnorm"),
    (nnx.RMSNorm, "rmsnorm"),
    (nnx.BatchNorm, "batchnorm"),
    (nnx.Embed, "embedding"),
)
_WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def module_kinds(model: nnx.Module) -> dict[str, str]:
    """``{module path: kind}`` for every module holding parameters; bare parameters are kind 'param'."""
    kinds: dict[str, str] = {}
    typed: list[tuple] = []
    params: list[tuple] = []
    for path, node in nnx.iter_graph(model):
        kind = next((k for t, k in _KINDS if isinstance(node, t)), None)
        if kind is not None:
            typed.append(path)
            kinds[_dotted(path)] = kind
        elif isinstance(node, nnx.Param):
            params.append(path)
    for path in params:
        if not any(path[: len(t)] == t for t in typed):
            kinds[_dotted(path)] = "param"
    return dict(sorted(kinds.items()))


def state_numpy(model: nnx.Module) -> dict[str, np.ndarray]:
    """Parameters and batch statistics as numpy arrays keyed by dotted path."""
    flat = nnx.to_flat_state(nnx.state(model, _WEIGHTS))
    return {_dotted(path): np.asarray(var[...]) for path, var in flat}


def to_checkpoint(model: nnx.Module) -> ckpt_io.Checkpoint:
    """Describe ``model`` (architecture, constructor arguments, module kinds, tensors) as a checkpoint."""
    if not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} does not record its config; decorate it with @records_config")
    return ckpt_io.Checkpoint(
        arch=spec.arch_of(type(model), "flax"),
        config=dict(model.config),
        layout="flax",
        kinds=module_kinds(model),
        tensors=state_numpy(model),
    )


def load_state(model: nnx.Module, ckpt: ckpt_io.Checkpoint) -> nnx.Module:
    """Copy ``ckpt``'s tensors (either layout) into ``model`` after checking every key and shape."""
    arch = spec.arch_of(type(model), "flax")
    if not spec.same_weights(ckpt.arch, arch):
        raise ckpt_io.CheckpointError(f"checkpoint holds architecture {ckpt.arch!r}, the model is {arch!r}")
    tensors = ckpt.to_layout("flax").tensors
    flat = nnx.to_flat_state(nnx.state(model, _WEIGHTS))
    check_state(tensors, {_dotted(p): tuple(v[...].shape) for p, v in flat})
    new = [(p, v.replace(jnp.asarray(tensors[_dotted(p)], dtype=v[...].dtype))) for p, v in flat]
    nnx.update(model, nnx.from_flat_state(new))
    return model


def save(model: nnx.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` to the checkpoint folder ``path`` (atomic)."""
    return ckpt_io.save(to_checkpoint(model), path)


def load(path: str | os.PathLike[str], *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Build the model a checkpoint (saved by either backend) describes and load its weights."""
    ckpt = ckpt_io.load(path)
    model = spec.get(ckpt.arch).load_class("flax")(**ckpt.config, rngs=rngs or nnx.Rngs(0))
    load_state(model, ckpt)
    model.eval()
    return model


def load_weights(model: nnx.Module, path: str | os.PathLike[str]) -> nnx.Module:
    """Load a checkpoint's weights into an existing ``model`` of the same architecture."""
    return load_state(model, ckpt_io.load(path))
