"""Exact resume: a run stopped by a signal and continued with ``--resume`` ends with the weights of a run never
stopped, bit for bit, in both backends; the optimizer's moments travel in the checkpoint, convert between the
backends' layouts, and a failed save leaves the previous checkpoint whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import one_thread  # noqa: F401 (autouse)

import vit_flax.train
import vit_torch.train
from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core import loop
from vit_parity.tools.cli import main

TINY = ["--arch", "vit", "--data", "digits", "--limit", "240", "--image-size", "8", "--patch-size", "4", "--dim", "16",
        "--depth", "1", "--heads", "2", "--dropout", "0.1", "--emb-dropout", "0.1", "--shift", "1", "--batch-size", "8",
        "--epochs", "4", "--lr", "3e-3"]  # fmt: skip
VIT = dict(image_size=8, patch_size=4, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def vit(*argv: object) -> subprocess.Popen:
    code = "import sys; from vit_parity.tools.cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, argv)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=ENV,
    )  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The run never stopped, trained in this process (one torch thread, as the other processes use), per backend."""
    runs: dict[str, Path] = {}

    def run(backend: str) -> Path:
        if backend not in runs:
            runs[backend] = tmp_path_factory.mktemp(f"straight-{backend}") / "run"
            assert main(["train", *TINY, "--backend", backend, "--quiet", "--out", str(runs[backend])]) == 0
        return runs[backend]

    return run


def weights(run: Path) -> dict[str, np.ndarray]:
    return ckpt_io.load(run / "checkpoint").tensors


def same_runs(straight: Path, stopped: Path) -> None:
    """The two runs end with the same weights, bit for bit, and the same record of every epoch (but its time)."""
    want, got = weights(straight), weights(stopped)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    records = [json.loads((r / "metrics.json").read_text())["epochs"] for r in (straight, stopped)]
    for record in records:
        for epoch in record:
            del epoch["seconds"]
    assert records[0] == records[1] and len(records[0]) == 4


def stopped_run(run: Path) -> int:
    """The step of its epoch at which ``run`` stopped (0: at the epoch's start), after checking its state."""
    state = ckpt_io.load(run / "checkpoint")
    steps = json.loads((run / "metrics.json").read_text())["data"]["train_samples"] // 8
    assert set(state.optimizer) == {"mu", "nu"} and 0 <= state.extra["run"]["step"] < steps
    assert state.extra["run"]["optimizer_steps"] == state.extra["run"]["epoch"] * steps + state.extra["run"]["step"]
    return state.extra["run"]["step"]


def test_a_torch_run_stopped_by_sigterm_resumes_to_the_same_weights(
    straight: Callable[[str], Path], tmp_path: Path
) -> None:
    """Two more processes (one thread each): stopped by SIGTERM (within epoch 2 or at its start, wherever the
    signal lands), then resumed (adopting the first run's GEMM path decisions)."""
    stopped = tmp_path / "stopped"
    args = [*TINY, "--backend", "torch", "--threads", "1"]
    run = vit("train", *args, "--out", stopped)  # not quiet: its epoch lines tell where it is
    lines = []
    for line in run.stderr:
        lines.append(line)
        if line.startswith("epoch 1/4:"):
            run.send_signal(signal.SIGTERM)  # in epoch 2: the step in hand finishes, then it stops
            break
    err = "".join(lines) + run.stderr.read()
    assert run.wait() == 128 + signal.SIGTERM, err
    assert "vit train: stopped by SIGTERM at epoch 2, step" in err, err
    assert err.splitlines()[-1].endswith(f"--out {stopped} --resume"), err
    stopped_run(stopped)
    assert "gemm" in ckpt_io.load(stopped / "checkpoint").extra["run"]["numerics"]
    resumed = vit("train", *args, "--out", stopped, "--quiet", "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    same_runs(straight("torch"), stopped)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_a_run_stopped_by_sigint_within_an_epoch_resumes_to_the_same_weights(
    backend: str,
    straight: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In this process (flax compiles once): a SIGINT arrives during the 30th step, the 7th of epoch 2."""
    stopped = tmp_path / "stopped"
    args = [*TINY, "--backend", backend, "--quiet"]
    whole = straight(backend)
    shift, calls = loop.random_shift, {"n": 0}  # the epoch loop both backends run shifts every batch

    def interrupt_in_step_30(*a: object, **k: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 30:
            os.kill(os.getpid(), signal.SIGINT)
        return shift(*a, **k)

    monkeypatch.setattr(loop, "random_shift", interrupt_in_step_30)
    assert main(["train", *args, "--out", str(stopped)]) == 128 + signal.SIGINT
    assert "vit train: stopped by SIGINT at epoch 2, step 7;" in capsys.readouterr().err
    assert stopped_run(stopped) == 7
    monkeypatch.setattr(loop, "random_shift", shift)
    assert main(["train", *args, "--out", str(stopped), "--resume"]) == 0
    same_runs(whole, stopped)


def test_optimizer_moments_are_saved_and_convert_between_backends(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3, 8, 8)).astype(np.float32), rng.integers(0, 3, 16)
    model = vit_torch.train.build("vit", VIT, seed=1)
    opt = vit_torch.train.optimizer(model, lr=1e-3, weight_decay=0.05)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    steps, moments = vit_torch.train.optimizer_state(opt, model)
    assert steps == 2 and set(moments["mu"]) == {n for n, _ in model.named_parameters()}
    vit_torch.train.save(model, tmp_path / "ck", optimizer=moments)
    assert (tmp_path / "ck" / ckpt_io.OPTIMIZER).is_file()

    # into a flax optimizer of the same model (kernels transposed), and back: the same numbers
    ckpt = ckpt_io.load(tmp_path / "ck").to_layout("flax")
    flax_model = vit_flax.train.build("vit", VIT, seed=1)
    flax_opt = vit_flax.train.optimizer(flax_model, weight_decay=0.05)
    vit_flax.train.load_optimizer_state(flax_opt, steps, ckpt.optimizer)
    flax_steps, flax_moments = vit_flax.train.optimizer_state(flax_opt)
    assert flax_steps == 2
    np.testing.assert_array_equal(flax_moments["mu"]["mlp_head.kernel"], moments["mu"]["mlp_head.weight"].T)
    back = ckpt_io.Checkpoint("vit", VIT, "flax", ckpt.kinds, ckpt.tensors, optimizer=flax_moments).to_layout("torch")
    for name in ("mu", "nu"):
        assert sorted(back.optimizer[name]) == sorted(moments[name])
        for key, value in moments[name].items():
            np.testing.assert_array_equal(back.optimizer[name][key], value, err_msg=key)

    # a save that fails while writing the moments leaves the previous checkpoint, moments included
    before = ckpt_io.load(tmp_path / "ck")
    write = ckpt_io.write_safetensors

    def fail_on_moments(path: Path, tensors: dict, metadata: dict) -> None:
        if path.name == ckpt_io.OPTIMIZER:
            raise OSError("disk full")
        write(path, tensors, metadata)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ckpt_io, "write_safetensors", fail_on_moments)
        with pytest.raises(OSError, match="disk full"):
            vit_torch.train.save(vit_torch.train.build("vit", VIT, seed=2), tmp_path / "ck", optimizer=moments)
    after = ckpt_io.load(tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    for key, value in before.tensors.items():
        np.testing.assert_array_equal(after.tensors[key], value)
    np.testing.assert_array_equal(after.optimizer["nu"]["mlp_head.weight"], moments["nu"]["mlp_head.weight"])


def test_moments_that_do_not_fit_the_model_are_refused() -> None:
    model = vit_torch.train.build("vit", VIT)
    opt = vit_torch.train.optimizer(model, lr=1e-3, weight_decay=0.05)
    bad = {"mu": {"mlp_head.weight": np.zeros((2, 2), np.float32)}, "nu": {"mlp_head.weight": np.zeros((2, 2))}}
    with pytest.raises(ValueError, match=r"mlp_head\.weight is shaped"):
        vit_torch.train.load_optimizer_state(opt, model, 1, bad)
    with pytest.raises(ValueError, match="unknown parameters"):
        vit_torch.train.load_optimizer_state(opt, model, 1, {"mu": {"nope": np.zeros(1)}, "nu": {"nope": np.zeros(1)}})
    flax_opt = vit_flax.train.optimizer(vit_flax.train.build("vit", VIT), weight_decay=0.05)
    with pytest.raises(ValueError, match="unknown"):
        vit_flax.train.load_optimizer_state(flax_opt, 1, {"mu": {"nope": np.zeros(1)}})
