"""``vit plot``, and the figures of ``vit eval --plot``: PNG files drawn with matplotlib's Agg canvas (no window,
no pyplot state), written atomically."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vit_parity.core.checkpoint import plain_mode
from vit_parity.tools.cli.common import RUN_EPOCHS, RUN_METRICS, UsageError, fail

RUN_CURVES = "curves.png"
DPI = 100
PLOT_EXTRA = "pip install 'vit-parity[plot]'"
CURVES = ("train_loss", "eval_loss", "train_acc", "eval_acc")  # the record keys `vit plot` draws
ANNOTATE_UP_TO = 30  # classes; a larger confusion matrix is drawn without its counts


def _matplotlib(what: str) -> tuple[type, type]:
    """``(Figure, FigureCanvasAgg)``; a UsageError naming the extra to install when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(f"{what} needs matplotlib, which is not installed: {PLOT_EXTRA}") from None
    return Figure, FigureCanvasAgg


def png_output(path: str | os.PathLike[str], flag: str, what: str) -> Path:
    """``path`` as a Path, checked before any work: a UsageError naming ``flag`` when it does not end in ``.png``,
    or naming the extra to install when matplotlib (which ``what`` needs) is missing."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise UsageError(f"{flag} takes a .png file, got {str(path)!r}")
    _matplotlib(what)
    return p


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write a matplotlib figure to ``path`` as PNG through a temporary file renamed into place (a failed write
    leaves ``path`` as it was)."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".png", dir=dst.parent)
    try:
        plain_mode(tmp)
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def read_epochs(run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-epoch records of a ``vit train --out`` folder: its metrics.jsonl, else metrics.json's ``epochs``.

    Raises a UsageError when the folder is missing, holds neither file, a file is not what ``vit train`` writes,
    or no epoch has finished yet.
    """
    folder = Path(run)
    if not folder.is_dir():
        raise UsageError(f"run folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    lines, metrics = folder / RUN_EPOCHS, folder / RUN_METRICS
    try:
        if lines.is_file():
            source = lines
            records = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
        elif metrics.is_file():
            source = metrics
            report = json.loads(metrics.read_text())
            records = report.get("epochs", []) if isinstance(report, dict) else None
        else:
            raise UsageError(f"{folder} holds no {RUN_EPOCHS} or {RUN_METRICS}; pass the --out folder of `vit train`")
    except json.JSONDecodeError as err:
        raise UsageError(f"{source} is not valid JSON ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and _is_record(r) for r in records):
        raise UsageError(
            f"{source} does not hold `vit train`'s epoch records (objects with an integer 'epoch' and numbers or "
            f"nulls for {', '.join(CURVES)})"
        )
    if not records:
        raise UsageError(f"{folder} has no finished epoch yet ({source.name} holds none); plot it after the first")
    return records


def _is_record(r: Mapping[str, Any]) -> bool:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return number(r.get("epoch")) and all(r.get(k) is None or number(r[k]) for k in CURVES)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs (counted from 1, as ``vit train`` prints them) and values of ``key`` where it is not null."""
    pairs = [(int(r["epoch"]) + 1, float(r[key])) for r in records if r.get(key) is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def curves_figure(records: Sequence[Mapping[str, Any]], title: str | None = None) -> Any:
    """Loss (left) and accuracy (right) of the training and held-out sets against the epoch."""
    figure, canvas = _matplotlib("vit plot")
    from matplotlib.ticker import MaxNLocator

    fig = figure(figsize=(10, 4), layout="constrained")
    canvas(fig)
    axes = fig.subplots(1, 2)
    for ax, metric, name in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, label, style in (("train", "train", "-"), ("eval", "held-out", "--")):
            x, y = _series(records, f"{split}_{metric}")
            if x:
                ax.plot(x, y, style, marker="o" if len(x) <= 50 else None, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    axes[1].set_ylim(0.0, 1.02)
    if title:
        fig.suptitle(title)
    return fig


def confusion_figure(matrices: Mapping[str, np.ndarray], classes: Sequence[str], title: str | None = None) -> Any:
    """One panel per matrix (e.g. per backend): rows are the true class, columns the predicted one, each cell
    coloured by its share of the row and annotated with its count (up to ``ANNOTATE_UP_TO`` classes)."""
    figure, canvas = _matplotlib("vit eval --plot")
    n = len(classes)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    fig = figure(figsize=(side * len(matrices) + 1.0, side), layout="constrained")
    canvas(fig)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    image = None
    for ax, (name, matrix) in zip(axes, matrices.items()):
        counts = np.asarray(matrix)
        rows = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        rotate = max((len(c) for c in classes), default=0) > 2
        ax.set_xticks(range(n), classes, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_yticks(range(n), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if len(matrices) > 1:
            ax.set_title(name)
        if n <= ANNOTATE_UP_TO:
            for i, j in np.ndindex(counts.shape):
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=list(axes), label="share of the true class", shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def draw_confusion(
    matrices: Mapping[str, np.ndarray], classes: Sequence[str], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """``confusion_figure`` written to ``path`` (a PNG)."""
    return save_png(confusion_figure(matrices, classes, title), path)


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        return _plot(args)
    except (UsageError, OSError) as err:
        return fail("plot", err)


def _plot(args: argparse.Namespace) -> int:
    run = Path(args.run)
    out = png_output(args.output or run / RUN_CURVES, "--output", "vit plot")
    records = read_epochs(run)
    title = None
    try:
        report = json.loads((run / RUN_METRICS).read_text())
        title = f"{report['arch']} on {report['data']['name']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a title is a nicety: metrics.json may be missing or from another version
    print(save_png(curves_figure(records, title), out))
    return 0
