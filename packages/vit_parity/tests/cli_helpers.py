"""Helpers of the command-line tests: run ``vit`` in-process, expect one-line failures, one torch thread."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch

from vit_parity.tools import cli

# what a `vit train` run folder holds (TensorBoard's event folder when the tensorboard package is installed)
RUN_FILES = ["checkpoint", "metrics.json", "metrics.jsonl"]
if importlib.util.find_spec("tensorboard"):
    RUN_FILES.append("tensorboard")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Two pytest workers share two cores: one torch thread each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys: pytest.CaptureFixture[str], *argv: object, match: str, code: int = 1) -> str:
    """Run a command that must fail with one error line (``vit <command>: ...``, last on stderr) matching ``match``."""
    got, _, err = run(capsys, *argv)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("vit ")]
    assert got == code, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert match in errors[0], errors[0]
    return errors[0]
