"""``vit predict``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core.convert import ConversionError
from vit_parity.tools import data
from vit_parity.tools.cli.common import (
    UsageError,
    fail,
    one_line,
    pick_backend,
    predictor,
    read_trained,
    resolve_checkpoint,
)
from vit_parity.tools.training import softmax, write_json


def _read(file: str, pre: data.Preprocess) -> np.ndarray | str:
    """One input as a raw sample, or its one-line error naming the file."""
    try:
        return data.read_sample(file, pre)
    except data.DataError as err:
        msg = one_line(err)
        return msg if file in msg else f"{file}: {msg}"


def cmd_predict(args: argparse.Namespace) -> int:
    """Top-k classes of every input; an input that cannot be read gets its own error line, the others their result."""
    try:
        path = resolve_checkpoint(args.checkpoint)
        meta, classes, pre = read_trained(path)
        backend = pick_backend(args.backend, meta["layout"])
        samples = [_read(f, pre) for f in args.files]
        good = [s for s in samples if isinstance(s, np.ndarray)]
        probs = iter(())
        if good:
            logits = predictor(backend, path, len(classes), args.batch_size)(pre(np.stack(good)))
            probs = iter(softmax(logits))
    except (UsageError, data.DataError, ckpt_io.CheckpointError, ConversionError) as err:
        return fail("predict", err)
    k = max(1, min(args.top_k, len(classes)))
    report: list[dict[str, object]] = []
    for file, sample in zip(args.files, samples):
        if isinstance(sample, str):
            report.append({"file": file, "error": sample})
            sys.stdout.flush()  # keep the lines in input order on a terminal
            print(f"vit predict: {sample}", file=sys.stderr)
            continue
        p = next(probs)
        top = np.argsort(-p, kind="stable")[:k]
        report.append({"file": file, "top": [{"class": classes[i], "probability": float(p[i])} for i in top]})
        print(f"{file}: " + ", ".join(f"{classes[i]} ({p[i]:.3f})" for i in top))
    if args.json:
        write_json(args.json, report)
    return 1 if len(good) < len(samples) else 0
