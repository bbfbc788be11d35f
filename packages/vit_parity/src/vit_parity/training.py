"""Framework-free pieces of training shared by both backends' loops and the ``vit`` command.

The learning-rate schedule (linear warmup, then cosine decay to zero), the progress bar, the
per-epoch record, the mapping from generic model-size options to an architecture's constructor
arguments, and atomic JSON writes.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = [
    "EpochMetrics",
    "Progress",
    "cross_entropy",
    "model_config",
    "per_class_accuracy",
    "softmax",
    "warmup_cosine",
    "write_json",
]


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """The learning rate at optimizer ``step`` (0-based): linear from 0 to ``peak_lr``, then cosine to 0.

    Step 0 of a warmup already moves (``peak_lr / warmup_steps``) so no update is wasted.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay, 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class EpochMetrics:
    """What one epoch of training measured; ``eval_*`` are None without a held-out set."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    eval_loss: float | None
    eval_acc: float | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` ``(n, classes)`` against integer ``labels``, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> list[float | None]:
    """Accuracy within each true class (None for a class with no samples)."""
    out: list[float | None] = []
    for c in range(n_classes):
        mask = labels == c
        out.append(float((pred[mask] == c).mean()) if mask.any() else None)
    return out


class Progress:
    """A small progress bar on stderr: ``epoch 2/10 [#####.....] 14/28 loss 0.512 acc 0.843``.

    On a terminal it redraws one line per epoch; elsewhere (logs, CI) it prints only each epoch's
    summary line. ``enabled=False`` silences it.
    """

    def __init__(self, epochs: int, steps: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.epochs, self.steps, self.enabled = epochs, steps, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.epoch, self.start = 0, time.perf_counter()

    def begin(self, epoch: int) -> None:
        self.epoch, self.start = epoch, time.perf_counter()

    def update(self, step: int, loss: float, acc: float) -> None:
        if not self.live:
            return
        width = 20
        done = int(width * step / max(self.steps, 1))
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        self.stream.write(
            f"\repoch {self.epoch + 1}/{self.epochs} [{'#' * done}{'.' * (width - done)}] {step}/{self.steps} "
            f"loss {loss:.3f} acc {acc:.3f} {rate:.1f} it/s"
        )
        self.stream.flush()

    def end(self, m: EpochMetrics) -> None:
        if not self.enabled:
            return
        held = f" | eval loss {m.eval_loss:.3f} acc {m.eval_acc:.3f}" if m.eval_acc is not None else ""
        line = (
            f"epoch {m.epoch + 1}/{self.epochs}: loss {m.train_loss:.3f} acc {m.train_acc:.3f}{held} "
            f"| lr {m.lr:.2e} | {m.seconds:.1f}s"
        )
        self.stream.write(("\r\033[K" if self.live else "") + line + "\n")
        self.stream.flush()


# The generic size options of `vit train` and the constructor arguments they fill, by name.
_SIZE_ALIASES = {
    "patch_size": ("patch_size", "image_patch_size"),
    "depth": ("depth", "spatial_depth", "temporal_depth"),
}


def model_config(
    cls: type,
    *,
    channels: int,
    size: tuple[int, ...],
    num_classes: int,
    options: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Constructor arguments of architecture class ``cls`` for data of ``size`` and the size ``options``.

    ``size`` is ``(h, w)`` or ``(t, h, w)``: ``image_size`` is ``(h, w)`` (an int when square) and
    ``frames`` is ``t``. ``options`` holds generic names (``dim``, ``depth``, ``heads``, ``mlp_dim``,
    ``dim_head``, ``patch_size``, ``frame_patch_size``, ``dropout``, ...); each fills the parameters
    of the same name, ``patch_size`` also ``image_patch_size`` and ``depth`` also ``spatial_depth`` and
    ``temporal_depth``. ``overrides`` set any constructor argument by name and win. Raises
    ``ValueError`` naming the parameters still missing or the overrides the class does not take.
    """
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    hw = size[-2:]
    known: dict[str, Any] = {
        "image_size": hw[0] if hw[0] == hw[1] else tuple(hw),
        "channels": channels,
        "num_classes": num_classes,
    }
    if len(size) == 3:
        known["frames"] = size[0]
    for key, value in options.items():
        if value is None:
            continue
        for target in _SIZE_ALIASES.get(key, (key,)):
            known.setdefault(target, value)
    config = {n: known[n] for n in names if n in known}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} takes no argument(s) {unknown}; it takes {names}")
    config.update(overrides)
    runtime = {"rngs", "dtype", "param_dtype"}
    missing = [
        n for n in names if n not in config and n not in runtime and params[n].default is inspect.Parameter.empty
    ]
    if missing:
        raise ValueError(f"{cls.__name__} needs {missing}; give them with --set NAME=VALUE")
    return config


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file renamed into place)."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a plain file's usual permissions, not mkstemp's private ones
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst
