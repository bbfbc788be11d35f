"""The framework-free parts of a training loop that both backends run identically.

The learning-rate schedule (linear warmup, then cosine decay to zero), the seeded batch order and
random shifts, the cross-entropy of numpy logits, the per-epoch record and the progress bar. Both
backends' ``train`` modules use these, so that the same seed gives the same batches and schedule.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import numpy as np


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


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate every sample by up to ``max_shift`` pixels along height and width, filling with zeros."""
    if max_shift <= 0:
        return x
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    pad = [(0, 0)] * (x.ndim - 2) + [(max_shift, max_shift)] * 2
    padded = np.pad(x, pad)
    out = np.empty_like(x)
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    for i in range(n):
        out[i] = padded[i, ..., dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def batches(
    n: int, batch_size: int, *, rng: np.random.Generator | None = None, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Index arrays of consecutive batches over ``range(n)``, shuffled when ``rng`` is given."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
