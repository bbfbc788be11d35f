"""The checkpoint format: a folder holding ``model.safetensors`` and ``config.json`` (and, for a training run,
``optimizer.safetensors``: AdamW's moments ``mu/KEY`` and ``nu/KEY``, keyed and laid out like the weights).

``config.json`` names the architecture, its constructor arguments, the tensor layout ('torch' or
'flax') and the kind of every module, so a checkpoint converts without either framework and loads
in both backends. Keys are dotted module paths.

Writes are atomic: the new folder is built beside the destination (``.NAME.tmp-PID-*``), the
previous checkpoint is moved aside (``.NAME.old-PID-*``), the new folder is renamed into place and
the old one removed. A failure puts the previous checkpoint back. A process killed between the two
renames leaves the destination missing and the previous checkpoint aside: reading the destination
(:func:`recover`, called by :func:`load` and :func:`read_config`) finds it there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from vit_parity.core.config import from_json, to_json
from vit_parity.core.convert import LAYOUTS, convert

FORMAT = "vit-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit what was asked of it."""


@dataclass
class Checkpoint:
    """Tensors (numpy, in ``layout``) and the description needed to rebuild the model; ``optimizer`` holds the
    moments of a training run (``{"mu": {key: array}, "nu": {key: array}}`` over the trained parameters)."""

    arch: str
    config: dict[str, Any]
    layout: str
    kinds: dict[str, str]
    tensors: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_layout(self, layout: str) -> Checkpoint:
        """This checkpoint with its tensors (and optimizer moments) converted to ``layout``."""
        if layout == self.layout:
            return self
        tensors = convert(self.tensors, self.kinds, source=self.layout, target=layout)
        moments = {
            name: convert(values, self.kinds, source=self.layout, target=layout, complete=False)
            for name, values in self.optimizer.items()
        }
        return Checkpoint(self.arch, self.config, layout, self.kinds, tensors, self.extra, moments)


def _leftovers(dst: Path, tag: str) -> list[tuple[Path, int]]:
    """Folders a save to ``dst`` left beside it (``tag`` 'old' or 'tmp') with the id of the saving process."""
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.{tag}-(\d+)(?:-[a-z0-9_]+)?")
    try:
        entries = list(dst.parent.iterdir())
    except OSError:
        return []
    return [(p, int(m.group(1))) for p in entries if (m := pattern.fullmatch(p.name)) and p.is_dir()]


def _running(pid: int) -> bool:
    """Whether process ``pid`` may still be running (True when that cannot be told)."""
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _sweep(dst: Path) -> None:
    """Remove what saves to ``dst`` by processes no longer running left beside it."""
    for tag in ("old", "tmp"):
        for p, pid in _leftovers(dst, tag):
            if not _running(pid):
                shutil.rmtree(p, ignore_errors=True)


def recover(path: str | os.PathLike[str]) -> Path:
    """The folder to read checkpoint ``path`` from: ``path`` itself, unless a save left it missing.

    A save killed between moving the previous checkpoint aside and renaming the new one in leaves
    ``path`` missing and the previous checkpoint beside it as ``.NAME.old-PID-*``. When process PID
    is gone, the newest such folder is put back at ``path`` (and the dead saves' leftovers removed);
    while it still runs (its save may yet finish) the folder is read where it lies.
    """
    dst = Path(path)
    if dst.exists():
        return dst
    aside = []
    for p, pid in _leftovers(dst, "old"):
        try:
            aside.append(((p / CONFIG).stat().st_mtime_ns, p, pid))
        except OSError:
            continue
    aside = [item for item in aside if (item[1] / WEIGHTS).is_file()]
    if not aside:
        return dst
    _, newest, pid = max(aside)
    if _running(pid):
        return newest
    try:
        os.replace(newest, dst)
    except OSError:  # another reader put it back first, or a save renamed a new checkpoint in
        return dst if dst.is_dir() else newest
    _sweep(dst)
    return dst


def plain_mode(path: str | os.PathLike[str]) -> None:
    """Give a file or folder made by ``tempfile`` (private: 0600 / 0700) the permissions a plain ``open`` or
    ``mkdir`` would give it under the current umask, so that atomic writes do not make files private by accident."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def _replace_dir(tmp: Path, dst: Path) -> None:
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"checkpoint path {dst} exists and is not a folder")
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):  # if it stays aside, recover() finds it there
                os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _sweep(dst)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and ``metadata`` to the safetensors file ``path``, the same bytes for the same content.

    The safetensors library orders the metadata in its header differently from one process to the next; here it is
    sorted (the tensors already are), so that a checkpoint's bytes depend on its content only (``cmp`` of two
    runs' weights means what it says)."""
    blob = safetensors_bytes(tensors, metadata=metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # the same content reordered is never longer
        raise CheckpointError(f"cannot write {path}: its safetensors header would grow from {size} bytes")
    Path(path).write_bytes(blob[:8] + text.ljust(size) + blob[8 + size :])


def save(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write ``ckpt`` to the folder ``path`` atomically; return the path."""
    if ckpt.layout not in LAYOUTS:
        raise CheckpointError(f"layout must be one of {LAYOUTS}, got {ckpt.layout!r}")
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": ckpt.arch,
        "layout": ckpt.layout,
        "config": to_json(ckpt.config),
        "modules": dict(ckpt.kinds),
        **({"extra": ckpt.extra} if ckpt.extra else {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-{os.getpid()}-", dir=dst.parent))
    try:
        tensors = {k: np.ascontiguousarray(v) for k, v in ckpt.tensors.items()}
        write_safetensors(tmp / WEIGHTS, tensors, {"format": FORMAT, "layout": ckpt.layout})
        made = [tmp / WEIGHTS, tmp / CONFIG, tmp]
        if ckpt.optimizer:
            moments = {f"{m}/{k}": np.ascontiguousarray(v) for m, d in ckpt.optimizer.items() for k, v in d.items()}
            write_safetensors(tmp / OPTIMIZER, moments, {"format": FORMAT, "layout": ckpt.layout})
            made.insert(0, tmp / OPTIMIZER)
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for path in made:
            plain_mode(path)
        _replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder, validated (see :func:`recover`)."""
    return _read_config(recover(path))


def _read_config(src: Path) -> dict[str, Any]:
    cfg_path = src / CONFIG
    if not src.is_dir():
        raise CheckpointError(f"checkpoint {src} not found (expected a folder with {WEIGHTS} and {CONFIG})")
    if not cfg_path.is_file() or not (src / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {src} must contain {WEIGHTS} and {CONFIG}")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a {FORMAT} config (format={meta.get('format')!r})")
    for key in ("arch", "layout", "config", "modules"):
        if key not in meta:
            raise CheckpointError(f"{cfg_path} lacks the field {key!r}")
    if meta["layout"] not in LAYOUTS:
        raise CheckpointError(f"{cfg_path}: layout must be one of {LAYOUTS}, got {meta['layout']!r}")
    return meta


def load(path: str | os.PathLike[str], *, arch: str | None = None) -> Checkpoint:
    """Read a checkpoint folder (see :func:`recover`); with ``arch``, fail unless it is of that architecture."""
    src = recover(path)
    meta = _read_config(src)
    if arch is not None and meta["arch"] != arch:
        raise CheckpointError(f"checkpoint {path} holds architecture {meta['arch']!r}, expected {arch!r}")
    tensors = _read_tensors(src / WEIGHTS)
    optimizer: dict[str, dict[str, np.ndarray]] = {}
    if (src / OPTIMIZER).is_file():
        for key, value in _read_tensors(src / OPTIMIZER).items():
            name, _, leaf = key.partition("/")
            optimizer.setdefault(name, {})[leaf] = value
    return Checkpoint(
        arch=meta["arch"],
        config=from_json(meta["config"]),
        layout=meta["layout"],
        kinds=dict(meta["modules"]),
        tensors=tensors,
        extra=meta.get("extra", {}),
        optimizer=optimizer,
    )


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {err}") from None


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str) -> Path:
    """Rewrite the checkpoint ``src`` in the ``to`` layout at ``dst`` (no framework needed)."""
    if to not in LAYOUTS:
        raise CheckpointError(f"--to must be one of {LAYOUTS}, got {to!r}")
    return save(load(src).to_layout(to), dst)
