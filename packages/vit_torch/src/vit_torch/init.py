"""Initialize a vit_torch model with the shared, framework-free initializer (``vit_parity.core.init``).

The same seed gives the same tensors as ``vit_flax.init.init_weights`` on the mirrored flax model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vit_parity.core import init as core
from vit_torch.checkpoint import module_kinds


def init_rules(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``init_rules`` of ``model`` and its submodules, merged with the caller's ``overrides``."""
    return core.collect(model.named_modules(), overrides)


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0, *, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """Overwrite every tensor of ``model.state_dict()`` with the shared initializer's draw under ``seed``.

    Rules come by module kind (see ``vit_parity.core.init``), then from the ``init_rules`` of the
    model's modules, then from ``overrides`` (glob patterns on state_dict keys). Dtypes and devices
    are kept; non-persistent buffers (fixed sin-cos tables) are left alone. Returns ``model``.
    """
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    tensors = core.init_tensors(shapes, module_kinds(model), seed, init_rules(model, overrides))
    for key, value in tensors.items():
        state[key].copy_(torch.from_numpy(value))
    return model
