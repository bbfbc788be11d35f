"""Initialize a vit_flax model with the shared, framework-free initializer (``vit_parity.core.init``).

The tensors are drawn in the torch layout and converted, so the same seed gives the same weights
as ``vit_torch.init.init_weights`` on the mirrored torch model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.checkpoint import module_kinds, state_numpy
from vit_parity.core import init as core
from vit_parity.core.convert import convert


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def init_rules(model: nnx.Module, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``init_rules`` of ``model`` and its submodules, merged with the caller's ``overrides``."""
    modules = ((_dotted(p), n) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Module))
    return core.collect(modules, overrides)


def init_weights(model: nnx.Module, seed: int = 0, *, overrides: Mapping[str, Any] | None = None) -> nnx.Module:
    """Overwrite every saved variable of ``model`` (what a checkpoint holds) with the shared initializer's draw.

    Rules come by module kind (see ``vit_parity.core.init``), then from the ``init_rules`` of the
    model's modules, then from ``overrides``; patterns match the torch-layout keys (``norm.weight``,
    not ``norm.scale``). Buffers (kind 'buffer') and tensors ruled ``keep`` are left as they are.
    Dtypes and shardings are kept. Returns ``model``.
    """
    kinds = module_kinds(model)
    # the model's variables in the torch layout: their names and shapes, and the values of kept ones
    current = convert(state_numpy(model), kinds, source="flax", target="torch")
    shapes = {k: v.shape for k, v in current.items()}
    drawn = core.init_tensors(shapes, kinds, seed, init_rules(model, overrides))
    tensors = convert({**current, **drawn}, kinds, source="torch", target="flax")
    new = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        key = _dotted(path)
        if key not in tensors:  # not saved: random-number state, caches
            continue
        old = var[...]
        value = jnp.asarray(tensors[key], dtype=old.dtype)
        if isinstance(old, jax.Array):
            value = jax.device_put(value, old.sharding)
        new.append((path, var.replace(value)))
    if len(new) != len(tensors):
        missing = sorted(set(tensors) - {_dotted(p) for p, _ in new})
        raise core.InitError(f"cannot write back the tensors {missing}")
    nnx.update(model, nnx.from_flat_state(new))
    return model
