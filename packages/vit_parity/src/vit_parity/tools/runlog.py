"""A run's per-epoch scalars as TensorBoard event files, written with the ``tensorboard`` package's own record
writer and protos (neither torch nor TensorFlow is imported).

``write_tensorboard(run_folder, history)`` rewrites ``RUN/tensorboard/`` from the whole history after every epoch,
as ``metrics.jsonl`` is rewritten, so a resumed run (whose history stops at its checkpoint) never shows an epoch
twice. Each rewrite is a new event file, written under a hidden name and renamed into place (a failed write
leaves the folder as it was), that opens with a ``SessionLog.START`` at its first step: TensorBoard then drops
what it read from the earlier files from that step on. The newest ``KEEP`` earlier files stay, for a running
TensorBoard still reading them (it stalls on a file deleted under it); older ones are deleted.
"""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from vit_parity.core.checkpoint import plain_mode

__all__ = ["RUN_TENSORBOARD", "SCALARS", "TensorBoardLog", "write_tensorboard"]

RUN_TENSORBOARD = "tensorboard"
# TensorBoard tag: key of the per-epoch record (`vit train`'s metrics.jsonl)
SCALARS = {
    "loss/train": "train_loss",
    "loss/eval": "eval_loss",
    "accuracy/train": "train_acc",
    "accuracy/eval": "eval_acc",
    "lr": "lr",
}

KEEP = 2  # earlier event files left beside a new one

_serial = itertools.count()


def _event_files(folder: Path) -> list[Path]:
    """The event files in ``folder`` in the order TensorBoard reads them."""
    return sorted((p for p in folder.iterdir() if "tfevents" in p.name), key=lambda p: p.name)


def _tensorboard() -> tuple[ModuleType, ModuleType, type] | None:
    """``(event_pb2, summary_pb2, RecordWriter)``, or None when the ``tensorboard`` package is not installed."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        return None
    return event_pb2, summary_pb2, RecordWriter


def _name(stamp: int, serial: int) -> str:
    """TensorFlow's event file name (time, host, process, a counter)."""
    return f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}.{serial:06d}"


class TensorBoardLog:
    """One event file of per-epoch scalars in ``RUN/tensorboard/``.

    It is written to a hidden temporary file (TensorBoard reads only names holding ``tfevents``); ``close()``
    renames it into place after the folder's earlier event files, which it replaces in what TensorBoard shows
    (see the module docstring), and ``discard()`` drops it. As a context manager it closes, or discards when the
    block raises.
    """

    def __init__(self, folder: Path, modules: tuple[ModuleType, ModuleType, type]) -> None:
        self.folder = folder
        self._event_pb2, self._summary_pb2, record_writer = modules
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".events.", suffix=".tmp", dir=folder)
        self._tmp = Path(tmp)
        plain_mode(self._tmp)
        self._writer = record_writer(os.fdopen(fd, "wb"))
        self._started = False
        self.path: Path | None = None  # the published event file, once closed
        self._add(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    @classmethod
    def open(cls, run_folder: str | os.PathLike[str]) -> TensorBoardLog | None:
        """A new event file for the run in ``run_folder``; None when the ``tensorboard`` package is not installed
        (``pip install 'vit-parity[tensorboard]'``)."""
        modules = _tensorboard()
        return None if modules is None else cls(Path(run_folder) / RUN_TENSORBOARD, modules)

    def _add(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())

    def _start(self, step: int, wall_time: float) -> None:
        """A reader drops what it holds from ``step`` on (see the module docstring)."""
        start = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        self._add(self._event_pb2.Event(wall_time=wall_time, step=step, session_log=start))
        self._started = True

    def epoch(self, record: Mapping[str, Any], wall_time: float | None = None) -> None:
        """Write the scalars of one epoch's record (``SCALARS``; null ones are skipped) at step ``record["epoch"]``."""
        if "epoch" not in record:
            raise ValueError(f"an epoch record needs an 'epoch' key, got keys {sorted(record)}")
        step, wall_time = int(record["epoch"]), time.time() if wall_time is None else wall_time
        if not self._started:
            self._start(step, wall_time)
        Value = self._summary_pb2.Summary.Value
        values = [
            Value(tag=tag, simple_value=float(record[key]))
            for tag, key in SCALARS.items()
            if record.get(key) is not None
        ]
        if values:
            summary = self._summary_pb2.Summary(value=values)
            self._add(self._event_pb2.Event(wall_time=wall_time, step=step, summary=summary))

    def close(self) -> Path:
        """Publish the event file after the folder's earlier ones and delete all but the newest of those (see
        ``KEEP``); returns its path."""
        if self.path is not None:
            return self.path
        if not self._started:  # no epoch: what TensorBoard shows is emptied
            self._start(0, time.time())
        self._writer.flush()
        self._writer.close()
        earlier = _event_files(self.folder)
        stamp, serial = int(time.time()), next(_serial)
        if earlier and _name(stamp, serial) <= earlier[-1].name:  # TensorBoard reads a folder's files in name order
            field = earlier[-1].name.split(".")[3:4]
            stamp = int(field[0]) + 1 if field and field[0].isdigit() else stamp
        dst = self.folder / _name(stamp, serial)
        try:
            os.replace(self._tmp, dst)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        for old in earlier[: max(len(earlier) - KEEP, 0)]:
            old.unlink(missing_ok=True)
        self.path = dst
        return dst

    def discard(self) -> None:
        """Drop the unpublished event file; the folder keeps its earlier ones."""
        if not self._writer.closed:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_tensorboard(run_folder: str | os.PathLike[str], history: Sequence[Mapping[str, Any]]) -> Path | None:
    """Rewrite ``run_folder/tensorboard/`` from a run's whole history of epoch records (``vit train``'s
    metrics.jsonl); returns the event file, or None when the ``tensorboard`` package is not installed.

    The last epoch is stamped now and the earlier ones back from it by the ``seconds`` each later epoch took, so
    TensorBoard's relative time axis shows training time.
    """
    log = TensorBoardLog.open(run_folder)
    if log is None:
        return None
    stamps, t = [], time.time()
    for record in reversed(history):
        stamps.append(t)
        t -= float(record.get("seconds") or 0.0)
    with log:
        for record, wall_time in zip(history, reversed(stamps)):
            log.epoch(record, wall_time=wall_time)
    return log.path
