"""vit_parity: the framework-free contract between vit_torch and vit_flax.

The spec registry, input checks, fixed positional tables, weight conversion and the checkpoint
format live here and import neither torch nor JAX; ``vit_parity.parity`` and the ``vit`` command
use whichever backends are installed.
"""

from vit_parity.checkpoint import Checkpoint, CheckpointError, convert_checkpoint
from vit_parity.convert import ConversionError, convert
from vit_parity.spec import REGISTRY, ArchSpec, Case, Input, get

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
