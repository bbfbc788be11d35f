"""vit_parity: the framework-free contract between vit_torch and vit_flax, and the tools on top of it.

``vit_parity.core`` is what both backends import (spec registry, input checks, positional tables, the
NaViT packer, weight conversion, the checkpoint format, recorded configs, the shared initializer): numpy
only. ``vit_parity.tools`` holds the ``vit`` command, data, training helpers, parity and inflation; it
imports whichever backends are installed, and the backends never import it.
"""

from vit_parity.core.checkpoint import Checkpoint, CheckpointError, convert_checkpoint
from vit_parity.core.convert import ConversionError, convert
from vit_parity.core.spec import REGISTRY, ArchSpec, Case, Input, get

__all__ = [
    "REGISTRY",
    "ArchSpec",
    "Case",
    "Checkpoint",
    "CheckpointError",
    "ConversionError",
    "Input",
    "convert",
    "convert_checkpoint",
    "get",
]
