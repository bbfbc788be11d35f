"""Save and load vit_torch models in the shared checkpoint format (see ``vit_parity.core.checkpoint``).

Module kinds (the conversion rules are in ``vit_parity.core.convert``): ``Linear`` 'linear',
``Conv{1,2,3}d`` 'conv', ``ConvTranspose{1,2,3}d`` 'conv_transpose', ``LayerNorm`` 'layernorm',
``GroupNorm`` 'groupnorm', ``RMSNorm`` 'rmsnorm', ``BatchNorm*`` 'batchnorm', ``Embedding``
'embedding'; a parameter of any other module is 'param' and a persistent buffer 'buffer'. A module
with no parameters and no persistent buffers is not listed; non-persistent buffers are not saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core import spec
from vit_parity.core.convert import check_state

_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "linear"),
    (nn.modules.conv._ConvTransposeNd, "conv_transpose"),  # before Conv: a subclass of it
    (nn.modules.conv._ConvNd, "conv"),
    (nn.LayerNorm, "layernorm"),
    (nn.GroupNorm, "groupnorm"),
    (nn.RMSNorm, "rmsnorm"),
    (nn.modules.batchnorm._BatchNorm, "batchnorm"),
    (nn.Embedding, "embedding"),
)


def _persistent_buffers(module: nn.Module) -> list[str]:
    skip = module._non_persistent_buffers_set
    return [name for name, _ in module.named_buffers(recurse=False) if name not in skip]


def module_kinds(model: nn.Module) -> dict[str, str]:
    """``{module path: kind}`` for every module holding parameters or persistent buffers.

    Parameters and persistent buffers of modules of no known type are listed one by one, as kind
    'param' and 'buffer'.
    """
    kinds: dict[str, str] = {}
    for path, module in model.named_modules():
        kind = next((k for t, k in _KINDS if isinstance(module, t)), None)
        if kind is not None:
            if any(True for _ in module.parameters(recurse=False)) or _persistent_buffers(module):
                kinds[path] = kind
            continue
        for name, _ in module.named_parameters(recurse=False):
            kinds[f"{path}.{name}" if path else name] = "param"
        for name in _persistent_buffers(module):
            kinds[f"{path}.{name}" if path else name] = "buffer"
    return kinds


def state_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's ``state_dict`` as numpy arrays (detached copies, on the CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def to_checkpoint(model: nn.Module) -> ckpt_io.Checkpoint:
    """Describe ``model`` (architecture, constructor arguments, module kinds, tensors) as a checkpoint."""
    if not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} does not record its config; decorate it with @records_config")
    return ckpt_io.Checkpoint(
        arch=spec.arch_of(type(model), "torch"),
        config=dict(model.config),
        layout="torch",
        kinds=module_kinds(model),
        tensors=state_numpy(model),
    )


def load_tensors(model: nn.Module, tensors: dict[str, np.ndarray]) -> nn.Module:
    """Copy ``tensors`` (torch layout) into ``model`` after checking every key and shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state(tensors, expected)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    return model


def load_state(model: nn.Module, ckpt: ckpt_io.Checkpoint) -> nn.Module:
    """Copy ``ckpt``'s tensors (either layout) into ``model`` after checking every key and shape."""
    arch = spec.arch_of(type(model), "torch")
    if not spec.same_weights(ckpt.arch, arch):
        raise ckpt_io.CheckpointError(f"checkpoint holds architecture {ckpt.arch!r}, the model is {arch!r}")
    return load_tensors(model, ckpt.to_layout("torch").tensors)


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` to the checkpoint folder ``path`` (atomic)."""
    return ckpt_io.save(to_checkpoint(model), path)


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Build the model a checkpoint (saved by either backend) describes and load its weights."""
    ckpt = ckpt_io.load(path)
    model = spec.get(ckpt.arch).load_class("torch")(**spec.build_models(ckpt.config, "torch"))
    return load_state(model, ckpt).eval()


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a checkpoint's weights into an existing ``model`` of the same architecture."""
    return load_state(model, ckpt_io.load(path))
