"""``vit eval``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core import spec
from vit_parity.core.convert import ConversionError
from vit_parity.core.loop import cross_entropy
from vit_parity.tools import data
from vit_parity.tools.cli.common import (
    UsageError,
    fail,
    pick_backend,
    predictor,
    read_trained,
    resolve_checkpoint,
    table,
)
from vit_parity.tools.cli.plot import draw_confusion, png_output
from vit_parity.tools.data import Preprocess
from vit_parity.tools.training import confusion_matrix, per_class_accuracy, write_json


def _dataset_name(args: argparse.Namespace, path: Path, stored: dict) -> str:
    """``--data``, else the dataset the checkpoint was trained on."""
    name = args.data or stored.get("name")
    if not name:
        raise UsageError(
            f"checkpoint {path} records no dataset; pass --data ({', '.join(data.BUILTIN)}, or a folder of class "
            "sub-folders)"
        )
    return str(name)


def _eval_data(
    name: str, split: str, path: Path, stored: dict, pre: Preprocess
) -> tuple[data.Dataset, str, str | None]:
    """The samples to evaluate, the split they are, and a warning when they may include training samples."""
    recorded = "eval_fraction" in stored  # `vit train` records how it split its data
    same = name == stored.get("name")
    if split == "auto":
        split = "eval" if same and recorded else "all"
    if split != "all" and not recorded:
        raise UsageError(
            f"checkpoint {path} records no train/held-out split, so --split {split} is unknown; pass --split all"
        )
    if same:
        dataset = data.load(
            name, size=stored.get("size") or pre.size, frames=stored.get("frames"),
            frame_stride=stored.get("frame_stride"),
            samples=stored.get("samples"), seed=stored.get("seed", 0), channels=pre.channels,
        ).limit(stored.get("limit"), stored.get("seed", 0))  # fmt: skip
    else:
        frames = pre.size[0] if len(pre.size) == 3 else None
        dataset = data.load(name, size=pre.size, frames=frames, channels=pre.channels)
    if split != "all":
        train_set, eval_set = dataset.split(stored["eval_fraction"], stored.get("seed", 0))
        dataset = eval_set if split == "eval" else train_set
    warning = None
    if not recorded:
        warning = (
            f'checkpoint {path} records no train/held-out split: "all" includes samples the model may have been '
            f"trained on, so the accuracy on {name} may be optimistic"
        )
    return dataset, split, warning


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        return _eval(args)
    except (UsageError, data.DataError, ckpt_io.CheckpointError, ConversionError) as err:
        return fail("eval", err)


def _eval(args: argparse.Namespace) -> int:
    plot = png_output(args.plot, "--plot", "vit eval --plot") if args.plot else None
    path = resolve_checkpoint(args.checkpoint)
    meta, classes, pre = read_trained(path)
    backends = list(spec.BACKENDS) if args.backend == "both" else [pick_backend(args.backend, meta["layout"])]
    for b in backends:
        pick_backend(b)
    stored = (meta.get("extra") or {}).get("data") or {}
    name = _dataset_name(args, path, stored)
    dataset, split, warning = _eval_data(name, args.split, path, stored, pre)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        raise UsageError(f"the data has classes {unknown} that the checkpoint does not know (it knows {classes})")
    labels = np.array([classes.index(c) for c in dataset.classes], dtype=np.int64)[dataset.y]
    if len(labels) == 0:
        raise UsageError(f"the {split} split of {name} is empty; pass --split all")
    x = pre(dataset.x)
    results: dict[str, dict] = {}
    logits: dict[str, np.ndarray] = {}
    models = {b: predictor(b, path, len(classes), args.batch_size) for b in backends}
    for b in backends:
        logits[b] = models[b](x, args.precision)
        pred = logits[b].argmax(-1)
        per_class = per_class_accuracy(pred, labels, len(classes))
        results[b] = {
            "accuracy": float((pred == labels).mean()),
            "loss": cross_entropy(logits[b], labels),
            "per_class": dict(zip(classes, per_class)),
            "confusion": confusion_matrix(pred, labels, len(classes)).tolist(),  # rows: true class
        }
    print(f"{meta['arch']} checkpoint {path} on {name} ({split} split, {len(labels)} samples)")
    counts = np.bincount(labels, minlength=len(classes))
    rows = [
        (name, str(counts[i]), *(_fmt(results[b]["per_class"][name]) for b in backends))
        for i, name in enumerate(classes)
    ]
    rows.append(("all", str(len(labels)), *(f"{results[b]['accuracy']:.4f}" for b in backends)))
    table(("class", "samples", *(f"{b} accuracy" for b in backends)), rows)
    if plot is not None:
        title = f"{meta['arch']} on {name} ({split} split, {len(labels)} samples)"
        confusion = {b: np.array(results[b]["confusion"]) for b in backends}
        print(f"confusion matrix: {draw_confusion(confusion, classes, plot, title)}")
    report: dict[str, object] = {
        "checkpoint": str(path), "arch": meta["arch"], "data": name, "split": split,
        "samples": len(labels), "classes": classes, "precision": args.precision, "backends": results,
    }  # fmt: skip
    if warning:
        report["warning"] = warning
    status = 0
    if len(backends) == 2:
        a, b = (logits[k] for k in backends)
        agree = int((a.argmax(-1) == b.argmax(-1)).sum())
        diff = float(np.abs(a - b).max())
        report["agreement"] = {"same_predictions": agree, "samples": len(labels), "max_abs_logit_diff": diff}
        print(f"torch and flax give the same prediction on {agree}/{len(labels)} samples (max |logit diff| {diff:.1e})")
        status = 0 if agree == len(labels) else 1
    if args.precision != "fp32":
        report["fp32_agreement"] = {}
        for b in backends:
            same = int((models[b](x).argmax(-1) == logits[b].argmax(-1)).sum())
            report["fp32_agreement"][b] = same / len(labels)
            print(f"{b} in {args.precision} gives the fp32 prediction on {same}/{len(labels)} samples")
    if args.json:
        write_json(args.json, report)
    return status


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
