"""Checkpoint writes never lose the previous checkpoint, even when a save fails or is killed midway."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vit_parity.core import checkpoint as io


def ckpt(value: float) -> io.Checkpoint:
    return io.Checkpoint(
        arch="vit", config={"dim": 4}, layout="torch", kinds={"pos": "param"},
        tensors={"pos": np.full((1, 4), value, np.float32)},
    )  # fmt: skip


def value_of(path: Path) -> float:
    return float(io.load(path).tensors["pos"][0, 0])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_and_folder_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """Atomic writes go through private temporaries (0600 / 0700); what lands has a plain file's permissions."""
    old = os.umask(umask)
    try:
        path = io.save(ckpt(1.0), tmp_path / "ckpt")
        io.save(ckpt(2.0), path)  # replacing one too
    finally:
        os.umask(old)
    assert value_of(path) == 2.0
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {f.name: f.stat().st_mode & 0o777 for f in path.iterdir()} == {
        io.WEIGHTS: 0o666 & ~umask,
        io.CONFIG: 0o666 & ~umask,
    }


@pytest.mark.parametrize("error", [OSError("rename failed"), KeyboardInterrupt()])
def test_failed_rename_into_place_restores_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    io.save(ckpt(1.0), tmp_path / "ck")
    real, calls = os.replace, []

    def replace(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the first call moves the old checkpoint aside, the second renames the new one in
            raise error
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(type(error)):
        io.save(ckpt(2.0), tmp_path / "ck")
    monkeypatch.undo()
    assert len(calls) >= 2
    assert names(tmp_path) == ["ck"]  # previous checkpoint back in place, no temporary left
    assert value_of(tmp_path / "ck") == 1.0


KILLED_SAVE = """
import os, sys
import numpy as np
from vit_parity.core import checkpoint as io

def ck(v):
    return io.Checkpoint("vit", {"dim": 4}, "torch", {"pos": "param"}, {"pos": np.full((1, 4), v, np.float32)})

dst = sys.argv[1]
io.save(ck(1.0), dst)
real, calls = os.replace, []

def replace(src, target):
    calls.append(src)
    if len(calls) == 2:
        os._exit(3)  # killed between moving the old checkpoint aside and renaming the new one in
    real(src, target)

os.replace = replace
io.save(ck(2.0), dst)
"""


def kill_a_save(dst: Path) -> None:
    code = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_SAVE), str(dst)], check=False).returncode
    assert code == 3
    assert not dst.exists()
    assert [n.split("-")[0] for n in names(dst.parent)] == [f".{dst.name}.old", f".{dst.name}.tmp"]


def test_load_puts_back_the_checkpoint_a_killed_save_left_aside(tmp_path: Path) -> None:
    kill_a_save(tmp_path / "ck")
    ck = io.load(tmp_path / "ck")
    assert float(ck.tensors["pos"][0, 0]) == 1.0 and ck.arch == "vit"
    assert names(tmp_path) == ["ck"]  # put back; the dead save's temporary folder is gone too
    io.save(ckpt(3.0), tmp_path / "ck")
    assert value_of(tmp_path / "ck") == 3.0 and names(tmp_path) == ["ck"]


def test_read_config_recovers_too(tmp_path: Path) -> None:
    kill_a_save(tmp_path / "ck")
    assert io.read_config(tmp_path / "ck")["config"] == {"dim": 4}
    assert names(tmp_path) == ["ck"]


def test_a_save_under_way_is_read_from_where_it_left_the_old_checkpoint(tmp_path: Path) -> None:
    io.save(ckpt(1.0), tmp_path / "ck")
    aside = tmp_path / f".ck.old-{os.getpid()}-0a1b2c3d"  # this process is alive: its save may still finish
    os.replace(tmp_path / "ck", aside)
    assert value_of(tmp_path / "ck") == 1.0
    assert io.recover(tmp_path / "ck") == aside
    assert names(tmp_path) == [aside.name]  # left where it is for the saving process to finish with


def test_recovery_picks_the_newest_checkpoint_left_aside(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    for n, value in enumerate([2.0, 1.0]):  # saved in this order: the second is the newer one
        io.save(ckpt(value), tmp_path / "x")
        os.utime(tmp_path / "x" / io.CONFIG, (1000 + n, 1000 + n))
        os.replace(tmp_path / "x", tmp_path / f".ck.old-{pid}-{n:08x}")
    assert value_of(tmp_path / "ck") == 1.0
    assert names(tmp_path) == ["ck"]  # the older leftover of a dead save is swept


def test_nothing_to_recover_is_still_not_found(tmp_path: Path) -> None:
    (tmp_path / ".ck.old-x").mkdir()  # not a leftover of a save: no process id, no checkpoint files
    (tmp_path / ".ck.old-1-a.old-2").mkdir()
    with pytest.raises(io.CheckpointError, match="not found"):
        io.load(tmp_path / "ck")
    with pytest.raises(io.CheckpointError, match="not found"):
        io.read_config(tmp_path / "missing" / "ck")
    assert names(tmp_path) == [".ck.old-1-a.old-2", ".ck.old-x"]


def _header(path: Path) -> bytes:
    blob = path.read_bytes()
    return blob[8 : 8 + int.from_bytes(blob[:8], "little")]


def test_safetensors_files_have_the_same_bytes_for_the_same_content(tmp_path: Path) -> None:
    """The safetensors library orders its header's metadata by chance, per process; the written header sorts it."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(2, np.float32)}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    io.write_safetensors(one, tensors, {"layout": "torch", "format": io.FORMAT})
    io.write_safetensors(two, tensors, {"format": io.FORMAT, "layout": "torch"})
    assert one.read_bytes() == two.read_bytes()
    assert _header(one).startswith(b'{"__metadata__":{"format":"vit-checkpoint","layout":"torch"},')
    with safe_open(one, "np") as f:
        assert f.metadata() == {"format": io.FORMAT, "layout": "torch"}
    assert {k: v.tolist() for k, v in load_file(one).items()} == {k: v.tolist() for k, v in tensors.items()}

    # whole checkpoints saved by separate processes (each orders the library's metadata its own way)
    save = "import sys, numpy as np; from vit_parity.core import checkpoint as io; " + (
        "io.save(io.Checkpoint('vit', {'dim': 4}, 'torch', {'w': 'linear'}, {'w': np.ones((2, 2), np.float32)}, "
        "optimizer={'mu': {'w': np.zeros((2, 2), np.float32)}}), sys.argv[1])"
    )
    for i in range(6):
        subprocess.run([sys.executable, "-c", save, str(tmp_path / f"run{i}")], check=True)
    for name in (io.WEIGHTS, io.OPTIMIZER):
        assert len({(tmp_path / f"run{i}" / name).read_bytes() for i in range(6)}) == 1, name
