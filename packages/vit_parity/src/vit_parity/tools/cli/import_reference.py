"""``vit import vit-pytorch STATE_DICT --arch NAME --config CONFIG.json -o CHECKPOINT``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core.config import from_json
from vit_parity.core.convert import ConversionError
from vit_parity.tools import reference
from vit_parity.tools.cli.common import UsageError, fail

LIBRARIES = (reference.LIBRARY,)


def read_config(path: str | Path) -> dict[str, Any]:
    """The reference model's constructor arguments from a JSON object (lists become tuples)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config {p} not found (a JSON object of the reference model's constructor arguments)")
    try:
        config = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"config {p} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise UsageError(f"config {p} must hold a JSON object of constructor arguments, got {type(config).__name__}")
    return from_json(config)


def cmd_import(args: argparse.Namespace) -> int:
    """Write the weights of a vit-pytorch state dict as a checkpoint of architecture ``--arch`` (torch layout).

    Nothing is written unless the whole state dict imports: the checkpoint is saved atomically, last.
    """
    try:
        table = reference.table(args.arch)
        config = read_config(args.config)
        state = reference.read_state_dict(args.state_dict)
        ckpt = reference.import_state(args.arch, state, config)
        dst = ckpt_io.save(ckpt, args.output)
    except (UsageError, ConversionError, ckpt_io.CheckpointError, OSError) as err:
        return fail("import", err)
    print(f"wrote {dst} ({args.arch}, torch layout, {len(ckpt.tensors)} tensors from {table.reference})")
    return 0
