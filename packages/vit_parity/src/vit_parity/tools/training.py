"""Training helpers of the ``vit`` command: constructor arguments checked against a class's signature,
metrics on numpy predictions, and atomic JSON writes (the per-architecture mapping of the generic
options is in ``vit_parity.tools.adapters``).

The loop's own pieces (schedule, batches, progress) are in ``vit_parity.core.loop``.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vit_parity.core.checkpoint import plain_mode

__all__ = [
    "confusion_matrix",
    "constructor_config",
    "per_class_accuracy",
    "softmax",
    "write_json",
    "write_jsonl",
]


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


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): ``[i, j]`` is how many samples of class ``i`` were predicted ``j``
    (int64, ``(n_classes, n_classes)``; row ``i`` sums to the number of samples of class ``i``).

    Raises ``ValueError`` when the two arrays differ in shape or hold a class outside ``0 .. n_classes - 1``.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} differ in shape")
    for name, v in (("predictions", pred), ("labels", labels)):
        bad = v[(v < 0) | (v >= n_classes)]
        if bad.size:
            raise ValueError(f"{name} hold classes outside 0..{n_classes - 1}: {sorted(set(bad.tolist()))[:5]}")
    flat = labels.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def constructor_config(
    cls: type, arguments: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The constructor arguments of ``cls`` from ``arguments`` (those it takes and that are not None; the
    rest are dropped) and ``overrides`` (any argument by name; they win).

    Raises ``ValueError`` naming the overrides the class does not take or the arguments still missing.
    """
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    config = {n: arguments[n] for n in names if arguments.get(n) is not None}
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


def _write_atomically(dst: Path, text: str) -> Path:
    """Write ``text`` to ``dst`` through a temporary file renamed into place (with a plain file's permissions)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        plain_mode(tmp)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file renamed into place)."""
    return _write_atomically(Path(path), json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike[str], records: list[Any]) -> Path:
    """Write ``records`` as JSON lines (one object per line) to ``path`` atomically."""
    return _write_atomically(Path(path), "".join(json.dumps(r) + "\n" for r in records))
