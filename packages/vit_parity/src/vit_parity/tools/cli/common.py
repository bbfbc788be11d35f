"""Shared by the ``vit`` commands: one-line errors, backend choice, checkpoint and run folders, tables."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core import spec
from vit_parity.core.convert import ConversionError
from vit_parity.tools.data import Preprocess


def installed(backend: str) -> bool:
    return importlib.util.find_spec(f"vit_{backend}") is not None


def class_status(arch: spec.ArchSpec, backend: str) -> str:
    if not installed(backend):
        return "not installed"
    try:
        arch.load_class(backend)
    except (ImportError, AttributeError) as err:
        return f"missing ({err.__class__.__name__})"
    return "ok"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


class UsageError(Exception):
    """Bad input to a command; printed as one line, exit status 1."""


def one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def fail(command: str, err: BaseException) -> int:
    print(f"vit {command}: {one_line(err)}", file=sys.stderr)
    return 1


def pick_backend(requested: str | None, preferred: str = "torch") -> str:
    """``requested`` if installed (else a UsageError saying what to install); by default ``preferred`` or the other."""
    other = {"torch": "flax", "flax": "torch"}
    if requested is not None:
        if not installed(requested):
            raise UsageError(
                f"backend {requested!r} is not installed; install it with `pip install ./packages/vit_{requested}` "
                f"or pick --backend {other[requested]}"
            )
        return requested
    for b in (preferred, other[preferred]):
        if installed(b):
            return b
    raise UsageError("no backend is installed; `pip install ./packages/vit_torch` or `pip install ./packages/vit_flax`")


def set_threads(threads: int | None, backend: str) -> None:
    """Compute on ``threads`` CPU threads: torch's intra-op pool is set to that many; XLA sizes its pool by the
    cores the process may run on, so a flax run is pinned to ``threads`` of them (chosen by process id, so that
    concurrent runs spread over the machine). Call it before the backend computes anything."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        first = os.getpid() % len(cores)
        os.sched_setaffinity(0, (cores[first:] + cores[:first])[:threads])


def train_module(backend: str):
    return importlib.import_module(f"vit_{backend}.train")


def arch_spec(name: str) -> spec.ArchSpec:
    if name not in spec.REGISTRY:
        raise UsageError(f"unknown architecture {name!r}; run `vit list` (known: {', '.join(sorted(spec.REGISTRY))})")
    return spec.REGISTRY[name]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a `vit train --out` folder holding one in ``checkpoint/``: every command takes both."""
    p = Path(path)
    if (ckpt_io.recover(p) / ckpt_io.CONFIG).is_file():
        return p
    if (ckpt_io.recover(p / RUN_CHECKPOINT) / ckpt_io.CONFIG).is_file():  # a save killed mid-way is put back
        return p / RUN_CHECKPOINT
    if p.is_dir() and not (p / ckpt_io.WEIGHTS).is_file():
        raise UsageError(
            f"{p} is neither a checkpoint folder ({ckpt_io.WEIGHTS}, {ckpt_io.CONFIG}) "
            f"nor a `vit train --out` folder ({RUN_CHECKPOINT}/ holding one)"
        )
    return p


def read_trained(path: Path) -> tuple[dict, list[str], Preprocess]:
    """The checkpoint's config, class names and preprocessing (as `vit train` stores them in ``extra``)."""
    meta = ckpt_io.read_config(path)
    extra = meta.get("extra") or {}
    if "classes" not in extra or "preprocess" not in extra:
        raise UsageError(
            f"checkpoint {path} holds no class names or preprocessing (it was not written by `vit train`); "
            "store them in its config's extra field ({'classes': [...], 'preprocess': {...}})"
        )
    return meta, list(extra["classes"]), Preprocess.from_json(extra["preprocess"])


def load_model(backend: str, path: Path):
    module = importlib.import_module(f"vit_{backend}")
    try:
        return module.load(path)
    except (ckpt_io.CheckpointError, ConversionError, KeyError, TypeError, ValueError) as err:
        msg = one_line(err).strip("'\"")
        raise UsageError(
            f"checkpoint {path} does not load in {backend}: {msg} (was it edited, or saved by another version?)"
        ) from None


def predictor(backend: str, path: Path, n_classes: int, batch_size: int) -> Callable[..., np.ndarray]:
    """The checkpoint at ``path``, loaded once in ``backend``: ``logits(x, precision='fp32')`` of a batch."""
    from vit_parity.tools import adapters

    model = load_model(backend, path)
    feed = adapters.feed(spec.arch_of(type(model), backend), backend, model.config)  # e.g. NaViT's lists or packing
    predict = train_module(backend).predict

    def logits(x: np.ndarray, precision: str = "fp32") -> np.ndarray:
        out = predict(model, x, batch_size=batch_size, feed=feed, precision=precision)
        if out.shape[-1] != n_classes:
            raise UsageError(f"checkpoint {path} has {out.shape[-1]} outputs but {n_classes} class names")
        return out

    return logits


RUN_CHECKPOINT = "checkpoint"


RUN_METRICS = "metrics.json"
RUN_EPOCHS = "metrics.jsonl"  # one line per finished epoch, for tools that follow a run


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or action.default == []:
            return action.help or ""
        return (action.help or "") + " (default: %(default)s)"
