"""``vit convert``."""

from __future__ import annotations

import argparse

from vit_parity.core.checkpoint import CheckpointError, convert_checkpoint
from vit_parity.core.convert import ConversionError
from vit_parity.tools.cli.common import UsageError, fail, resolve_checkpoint


def cmd_convert(args: argparse.Namespace) -> int:
    """Rewrite a checkpoint (or a `vit train --out` folder's) in the ``--to`` layout; no framework needed."""
    try:
        dst = convert_checkpoint(resolve_checkpoint(args.src), args.output, to=args.to)
    except (UsageError, CheckpointError, ConversionError) as err:
        return fail("convert", err)
    print(f"wrote {dst} ({args.to} layout)")
    return 0
