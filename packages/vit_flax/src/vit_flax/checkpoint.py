"""Save and load vit_flax models in the shared checkpoint format (see ``vit_parity.core.checkpoint``).

Module kinds (the conversion rules are in ``vit_parity.core.convert``): ``Linear`` 'linear',
``Conv`` 'conv', ``ConvTranspose`` 'conv_transpose' (built with ``transpose_kernel=False``, the
default; the other layout is refused), ``LayerNorm`` 'layernorm', ``GroupNorm`` 'groupnorm',
``RMSNorm`` 'rmsnorm', ``BatchNorm`` 'batchnorm', ``Embed`` 'embedding'; an ``nnx.Param`` of any
other module is 'param' and any other variable 'buffer' (the equivalent of a persistent torch
buffer: ``nnx.BatchStat`` or a custom ``nnx.Variable``). Random-number state, caches, sown
intermediates and perturbations are not saved. A module holding nothing that is saved is not listed.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core import spec
from vit_parity.core.convert import ConversionError, check_state

_KINDS: tuple[tuple[type[nnx.Module], str], ...] = (
    (nnx.Linear, "linear"),
    (nnx.Conv, "conv"),
    (nnx.ConvTranspose, "conv_transpose"),
    (nnx.LayerNorm, "layernorm"),
    (nnx.GroupNorm, "groupnorm"),
    (nnx.RMSNorm, "rmsnorm"),
    (nnx.BatchNorm, "batchnorm"),
    (nnx.Embed, "embedding"),
)
# what a checkpoint holds: every variable but the state of a run
_WEIGHTS = nnx.Not(nnx.Any(nnx.RngState, nnx.Cache, nnx.Intermediate, nnx.Perturbation))


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def module_kinds(model: nnx.Module) -> dict[str, str]:
    """``{module path: kind}`` for every module holding saved variables.

    Variables of modules of no known type are listed one by one: an ``nnx.Param`` as 'param', any
    other as 'buffer'. Raises :class:`ConversionError` for a module no rule converts faithfully.
    """
    typed: dict[tuple, str] = {}
    for path, node in nnx.iter_graph(model):
        kind = next((k for t, k in _KINDS if isinstance(node, t)), None)
        if kind is None:
            continue
        if kind == "conv_transpose" and node.transpose_kernel:
            raise ConversionError(
                f"{_dotted(path)}: a ConvTranspose with transpose_kernel=True holds its kernel as (*k, O, I), flipped; "
                "build it with transpose_kernel=False (kernel (*k, I, O)), the layout the 'conv_transpose' rule gives"
            )
        typed[path] = kind
    kinds: dict[str, str] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, _WEIGHTS)):
        owner = next((path[:n] for n in range(len(path) - 1, -1, -1) if path[:n] in typed), None)
        if owner is not None:
            kinds[_dotted(owner)] = typed[owner]
        else:
            kinds[_dotted(path)] = "param" if isinstance(var, nnx.Param) else "buffer"
    return dict(sorted(kinds.items()))


def state_numpy(model: nnx.Module) -> dict[str, np.ndarray]:
    """The saved variables (parameters, batch statistics, buffers) as numpy arrays keyed by dotted path."""
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


def load_tensors(model: nnx.Module, tensors: dict[str, np.ndarray]) -> nnx.Module:
    """Copy ``tensors`` (flax layout) into ``model`` after checking every key and shape."""
    module_kinds(model)  # refuses modules whose layout the rules do not give
    flat = nnx.to_flat_state(nnx.state(model, _WEIGHTS))
    check_state(tensors, {_dotted(p): tuple(v[...].shape) for p, v in flat})
    new = [(p, v.replace(jnp.asarray(tensors[_dotted(p)], dtype=v[...].dtype))) for p, v in flat]
    nnx.update(model, nnx.from_flat_state(new))
    return model


def load_state(model: nnx.Module, ckpt: ckpt_io.Checkpoint) -> nnx.Module:
    """Copy ``ckpt``'s tensors (either layout) into ``model`` after checking every key and shape."""
    arch = spec.arch_of(type(model), "flax")
    if not spec.same_weights(ckpt.arch, arch):
        raise ckpt_io.CheckpointError(f"checkpoint holds architecture {ckpt.arch!r}, the model is {arch!r}")
    return load_tensors(model, ckpt.to_layout("flax").tensors)


def save(model: nnx.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` to the checkpoint folder ``path`` (atomic)."""
    return ckpt_io.save(to_checkpoint(model), path)


def load(path: str | os.PathLike[str], *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Build the model a checkpoint (saved by either backend) describes and load its weights."""
    ckpt = ckpt_io.load(path)
    rngs = rngs or nnx.Rngs(0)
    model = spec.get(ckpt.arch).load_class("flax")(**spec.build_models(ckpt.config, "flax", rngs=rngs), rngs=rngs)
    load_state(model, ckpt)
    model.eval()
    return model


def load_weights(model: nnx.Module, path: str | os.PathLike[str]) -> nnx.Module:
    """Load a checkpoint's weights into an existing ``model`` of the same architecture."""
    return load_state(model, ckpt_io.load(path))
