"""The framework-free parts of a training loop that both backends run identically.

The learning-rate schedule (linear warmup, then cosine decay to zero), the seeded batch order and
per-step randomness, the cross-entropy of numpy logits, the per-epoch record, the progress bar, the state
of a run (:class:`RunState`) and the signals that stop one cleanly. Both backends' ``train`` modules use
these, so that the same seed gives the same batches and schedule, and a run stopped and resumed anywhere
ends where an uninterrupted one does.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
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
    """The training progress bar on stderr (tqdm): samples per second, the time left for the run, the running
    loss and accuracy, and one summary line per epoch (``epoch 2/10: loss 0.512 acc 0.843 | ...``).

    The bar is drawn on a terminal only; elsewhere (logs, CI) only the epoch lines are printed.
    ``enabled=False`` silences both. ``done`` counts the steps a resumed run already took.
    """

    def __init__(
        self,
        epochs: int,
        steps: int,
        *,
        batch_size: int = 1,
        done: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.epochs, self.steps, self.batch_size, self.enabled = epochs, steps, batch_size, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        if self.live:
            from tqdm import tqdm

            total = max(epochs * steps - done, 0) * batch_size
            self.bar = tqdm(
                total=total, unit="sample", file=self.stream, dynamic_ncols=True, leave=False, mininterval=0.5,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {rate_fmt} {remaining} left{postfix}",
            )  # fmt: skip
        self.epoch = 0

    def begin(self, epoch: int) -> None:
        self.epoch = epoch
        if self.bar is not None:
            self.bar.set_description_str(f"epoch {epoch + 1}/{self.epochs}", refresh=False)

    def update(self, loss: float, acc: float, samples: int | None = None) -> None:
        """After a step of ``samples`` samples (default: the batch size), with the epoch's running loss and
        accuracy."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f} acc {acc:.3f}", refresh=False)
            self.bar.update(self.batch_size if samples is None else samples)

    def end(self, m: EpochMetrics) -> None:
        if not self.enabled:
            return
        held = f" | eval loss {m.eval_loss:.3f} acc {m.eval_acc:.3f}" if m.eval_acc is not None else ""
        line = (
            f"epoch {m.epoch + 1}/{self.epochs}: loss {m.train_loss:.3f} acc {m.train_acc:.3f}{held} "
            f"| lr {m.lr:.2e} | {m.seconds:.1f}s"
        )
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class RunState:
    """Where a training run stands, all it needs to continue as if never stopped (with the model's weights).

    ``epoch`` is the epoch in progress and ``step`` the number of its steps taken (0: it has not started);
    ``loss_sum``, ``correct`` and ``seen`` are its running sums. ``optimizer_steps`` counts AdamW's updates and
    ``moments`` holds its first and second moments, ``{"mu": {key: array}, "nu": {key: array}}``, keyed and laid
    out like the backend's checkpoint tensors. ``numerics`` records how the backend chose to compute, where that
    choice is made at run time (vit_torch: the GEMM path of each product shape), so a resumed run computes alike.
    Nothing random is kept: every step's randomness (batch order, shifts, dropout) is drawn from
    ``(seed, epoch, step)`` (:func:`step_rng`).
    """

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    optimizer_steps: int = 0
    moments: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    numerics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Everything but the moments (which are tensors)."""
        return {k: v for k, v in asdict(self).items() if k != "moments"}

    @classmethod
    def from_json(cls, d: dict[str, Any], moments: dict[str, dict[str, np.ndarray]] | None = None) -> RunState:
        fields = ("epoch", "step", "loss_sum", "correct", "seen", "optimizer_steps", "numerics")
        return cls(**{k: d[k] for k in fields if k in d}, moments=dict(moments or {}))


class Interrupted(Exception):
    """Training stopped on request (a signal) after a whole step; ``state`` is where it stood."""

    def __init__(self, state: RunState) -> None:
        super().__init__(f"training stopped at epoch {state.epoch + 1}, step {state.step}")
        self.state = state


class StopSignals:
    """A context in which SIGINT and SIGTERM ask training to stop after the step in hand rather than kill it.

    ``requested()`` tells whether one arrived (``signal`` is its number); a second SIGINT raises
    ``KeyboardInterrupt`` at once. Outside the main thread it installs nothing (signals cannot be caught there).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._saved: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of step ``step`` of ``epoch``: its shifts and its dropout seed (:func:`dropout_seed`)."""
    return np.random.default_rng([seed, epoch, step])


def dropout_seed(rng: np.random.Generator) -> int:
    """A 31-bit seed for the step's dropout and other in-model draws (torch's generator, JAX's key)."""
    return int(rng.integers(2**31))


def epoch_steps(
    n: int, batch_size: int, *, seed: int, epoch: int, start: int = 0, shuffle: bool = True
) -> Iterator[tuple[int, np.ndarray, np.random.Generator]]:
    """``(step, sample indices, step generator)`` of the full batches of ``epoch`` from step ``start`` on.

    The order is a permutation drawn from ``(seed, epoch)``; the last partial batch is dropped.
    """
    order = batches(n, batch_size, rng=np.random.default_rng([seed, epoch]) if shuffle else None, drop_last=True)
    for i, idx in enumerate(order):
        if i >= start:
            yield i, idx, step_rng(seed, epoch, i)


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


# (batch, labels, learning rate, dropout seed) -> (the batch's mean loss, its number of correct predictions)
TrainStep = Callable[[np.ndarray, np.ndarray, float, int], tuple[float, float]]


def run_epochs(
    train: tuple[np.ndarray, np.ndarray],
    eval: tuple[np.ndarray, np.ndarray] | None,
    train_step: TrainStep,
    *,
    model: Any,
    snapshot: Callable[[int, int, tuple[float, float, int]], RunState],
    predict: Callable[[np.ndarray], np.ndarray],
    end_epoch: Callable[[], None] | None = None,
    epochs: int,
    batch_size: int,
    lr: float,
    warmup_epochs: float,
    shift: int,
    seed: int,
    shuffle: bool,
    run: RunState,
    on_epoch: Callable[[EpochMetrics, Any], None] | None = None,
    on_checkpoint: Callable[[RunState, Any, EpochMetrics | None], None] | None = None,
    stop: Callable[[], bool] | None = None,
    progress: bool | Progress = True,
) -> list[EpochMetrics]:
    """The epoch loop both backends' ``fit`` run: batches, shifts, dropout seeds, the schedule, the running
    sums, the metrics, checkpoints and clean stops, from ``run`` on; the backend brings its step and state.

    ``train = (x, y)``: channels-first samples (taken as float32) and integer labels. ``train_step(x, y, lr,
    seed)`` takes one optimizer step on the batch ``x`` (already shifted) and returns the batch's mean loss and
    its number of correct predictions; ``seed`` is the step's :func:`dropout_seed`. ``snapshot(epoch, step,
    (loss_sum, correct, seen))`` returns the :class:`RunState` of that point (optimizer state included).
    ``end_epoch()`` runs after an epoch's last step (the backend brings ``model`` up to date), then ``predict(x)``
    gives the logits of the held-out set ``eval``. ``on_epoch(metrics, model)`` and ``on_checkpoint(state, model,
    metrics)`` run after every epoch; when ``stop()`` turns true, the step in hand is finished,
    ``on_checkpoint(state, model, None)`` runs (within an epoch; at its end the epoch's call served) and
    :class:`Interrupted` is raised.
    """
    x, y = np.asarray(train[0], dtype=np.float32), np.asarray(train[1], dtype=np.int64)
    if len(x) == 0:
        raise ValueError("the training set is empty")
    batch_size = min(batch_size, len(x))
    steps = len(x) // batch_size
    total, warmup = epochs * steps, round(warmup_epochs * steps)

    def lr_at(epoch: int, step: int) -> float:
        return warmup_cosine(epoch * steps + step, total_steps=total, warmup_steps=warmup, peak_lr=lr)

    bar = progress if isinstance(progress, Progress) else Progress(
        epochs, steps, batch_size=batch_size, done=run.epoch * steps + run.step, enabled=bool(progress)
    )  # fmt: skip
    history: list[EpochMetrics] = []
    try:
        for epoch in range(run.epoch, epochs):
            bar.begin(epoch)
            start = time.perf_counter()
            first = run.step if epoch == run.epoch else 0
            loss_sum, correct, seen = (run.loss_sum, run.correct, run.seen) if first else (0.0, 0.0, 0)
            step_lr = lr_at(epoch, first)
            for i, idx, rng in epoch_steps(len(x), batch_size, seed=seed, epoch=epoch, start=first, shuffle=shuffle):
                step_lr = lr_at(epoch, i)
                dropout = dropout_seed(rng)  # drawn before the shifts
                loss, hits = train_step(random_shift(x[idx], shift, rng), y[idx], step_lr, dropout)
                loss_sum += loss * len(idx)
                correct += hits
                seen += len(idx)
                bar.update(loss_sum / seen, correct / seen)
                if stop is not None and i + 1 < steps and stop():
                    state = snapshot(epoch, i + 1, (loss_sum, correct, seen))
                    if on_checkpoint is not None:
                        on_checkpoint(state, model, None)
                    raise Interrupted(state)
            if end_epoch is not None:
                end_epoch()
            eval_loss = eval_acc = None
            if eval is not None and len(eval[0]):
                logits = predict(eval[0])
                eval_loss = cross_entropy(logits, eval[1])
                eval_acc = float((logits.argmax(-1) == eval[1]).mean())
            metrics = EpochMetrics(
                epoch, step_lr, loss_sum / seen, correct / seen, eval_loss, eval_acc, time.perf_counter() - start
            )
            history.append(metrics)
            bar.end(metrics)
            if on_epoch is not None:
                on_epoch(metrics, model)
            state = snapshot(epoch + 1, 0, (0.0, 0.0, 0))
            if on_checkpoint is not None:
                on_checkpoint(state, model, metrics)
            if stop is not None and epoch + 1 < epochs and stop():
                raise Interrupted(state)
    finally:
        if not isinstance(progress, Progress):
            bar.close()
    return history
