"""vit_parity.tools.training: the schedule, metrics, progress bar, constructor mapping and atomic JSON."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from vit_parity.core import packing
from vit_parity.core.loop import (
    EpochMetrics,
    Interrupted,
    Progress,
    RunState,
    cross_entropy,
    run_epochs,
    warmup_cosine,
)
from vit_parity.tools import adapters
from vit_parity.tools.training import constructor_config, per_class_accuracy, softmax, write_json


def test_warmup_cosine() -> None:
    lr = lambda s: warmup_cosine(s, total_steps=110, warmup_steps=10, peak_lr=0.5)  # noqa: E731
    assert [lr(s) for s in (0, 4, 9)] == pytest.approx([0.05, 0.25, 0.5])  # linear, first step already moves
    assert lr(10) == pytest.approx(0.5)
    assert lr(60) == pytest.approx(0.25)  # half-way through the decay: cos(pi / 2)
    assert lr(35) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == pytest.approx(0.0, abs=1e-12) and lr(500) == pytest.approx(0.0, abs=1e-12)
    no_warmup = warmup_cosine(0, total_steps=10, warmup_steps=0, peak_lr=1.0)
    assert no_warmup == 1.0


class _Trainer:
    """A stand-in backend for :func:`run_epochs`: its "model" is the list of the steps it took; loss and hits are
    functions of the batch, so the epoch sums can be checked independently."""

    def __init__(self) -> None:
        self.steps: list[tuple[tuple[int, ...], float, int]] = []

    def step(self, x: np.ndarray, y: np.ndarray, lr: float, seed: int) -> tuple[float, float]:
        self.steps.append((tuple(int(v) for v in x[:, 0]), lr, seed))
        return float(x.mean()), float((y % 2).sum())

    def snapshot(self, epoch: int, step: int, sums: tuple[float, float, int]) -> RunState:
        return RunState(epoch, step, *sums, optimizer_steps=len(self.steps))

    def run(self, stop: object = None, resume: RunState | None = None) -> list[EpochMetrics]:
        x = np.arange(10, dtype=np.float32).repeat(4).reshape(10, 4)  # sample i is all i
        return run_epochs(
            (x, np.arange(10)), (x[:4], np.array([0, 1, 0, 1])), self.step, model=None, snapshot=self.snapshot,
            predict=lambda held: np.eye(2, dtype=np.float32)[np.zeros(len(held), int)], epochs=3, batch_size=3,
            lr=0.1, warmup_epochs=1.0, shift=0, seed=7, shuffle=True, run=resume or RunState(), stop=stop,
            progress=False,
        )  # fmt: skip


def test_the_epoch_loop_orders_schedules_sums_and_stops_and_resumes() -> None:
    straight = _Trainer()
    history = straight.run()
    assert len(straight.steps) == 9  # 3 epochs of 3 full batches (the 10th sample is dropped each epoch)
    lrs = [lr for _, lr, _ in straight.steps]
    assert lrs == pytest.approx([warmup_cosine(s, total_steps=9, warmup_steps=3, peak_lr=0.1) for s in range(9)])
    for epoch in range(3):
        batches = [b for b, _, _ in straight.steps[3 * epoch : 3 * epoch + 3]]
        seen = sorted(i for b in batches for i in b)
        assert len(seen) == 9 and len(set(seen)) == 9  # a permutation, without repeats
        want_loss = np.mean([np.mean(b) for b in batches])  # equal batches: the mean of the batch means
        assert history[epoch].train_loss == pytest.approx(want_loss)
        assert history[epoch].train_acc == pytest.approx(sum(i % 2 for i in seen) / 9)
        assert history[epoch].eval_acc == 0.5 and history[epoch].lr == pytest.approx(lrs[3 * epoch + 2])
    assert [b for b, _, _ in straight.steps[:3]] != [b for b, _, _ in straight.steps[3:6]]  # reshuffled

    stopped, calls = _Trainer(), iter(range(100))
    with pytest.raises(Interrupted) as info:
        stopped.run(stop=lambda: next(calls) == 4)  # after the 5th step: epoch 1, step 2
    state = info.value.state
    assert (state.epoch, state.step, state.seen, state.optimizer_steps) == (1, 2, 6, 5)
    resumed = _Trainer()
    tail = resumed.run(resume=state)
    assert stopped.steps + resumed.steps == straight.steps  # the same batches, rates and seeds
    assert [m.to_json() | {"seconds": 0} for m in tail] == [m.to_json() | {"seconds": 0} for m in history[1:]]


def test_cross_entropy_softmax_and_per_class_accuracy() -> None:
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1000.0]])
    p0 = math.exp(2) / (math.exp(2) + 2)
    assert cross_entropy(logits, np.array([0, 2])) == pytest.approx(-math.log(p0) / 2)
    np.testing.assert_allclose(softmax(logits)[0], [p0, (1 - p0) / 2, (1 - p0) / 2])
    assert np.isfinite(softmax(logits)).all()
    pred, labels = np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1])
    assert per_class_accuracy(pred, labels, 3) == [0.5, 0.5, None]


def test_progress_prints_epoch_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(2, 5, stream=out)
    bar.begin(0)
    bar.update(1.0, 0.5)  # no live redraw off a terminal
    bar.end(EpochMetrics(0, 1e-3, 1.25, 0.5, 1.5, 0.25, 2.0))
    assert out.getvalue() == "epoch 1/2: loss 1.250 acc 0.500 | eval loss 1.500 acc 0.250 | lr 1.00e-03 | 2.0s\n"
    quiet = io.StringIO()
    Progress(2, 5, stream=quiet, enabled=False).end(EpochMetrics(0, 1e-3, 1.0, 0.5, None, None, 1.0))
    assert quiet.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal() -> None:
    """A resumed run (10 of 30 steps done) of 4-sample steps, 5 steps into epoch 2: 20 of the 80 samples left."""
    out = _Terminal()
    bar = Progress(3, 10, batch_size=4, done=10, stream=out)
    bar.begin(1)
    for _ in range(5):
        bar.update(0.5, 0.75)
    bar.bar.refresh()
    line = out.getvalue().split("\r")[-1]
    assert line.startswith("epoch 2/3  25%|") and "sample/s" in line and " left" in line, line
    assert line.endswith("loss 0.500 acc 0.750"), line
    bar.end(EpochMetrics(1, 1e-3, 0.5, 0.75, None, None, 1.0))
    assert "epoch 2/3: loss 0.500 acc 0.750 | lr 1.00e-03 | 1.0s\n" in out.getvalue()
    bar.close()


class _Image:
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, channels=3, dim_head=64):
        pass


class _Video:
    def __init__(
        self, *, image_size, image_patch_size, frames, frame_patch_size, num_classes, dim, spatial_depth,
        temporal_depth, heads, mlp_dim, channels=3, variant="factorized_encoder", rngs=None,
    ):  # fmt: skip
        pass


def test_constructor_config_keeps_what_the_class_takes() -> None:
    args = dict(image_size=(16, 12), patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8)
    cfg = constructor_config(_Image, dict(args, channels=1, pool=None, frames=3))  # pool, frames: not taken
    assert cfg == dict(args, channels=1)
    assert constructor_config(_Image, args, {"channels": 2, "dim_head": 4}) == dict(args, channels=2, dim_head=4)
    with pytest.raises(ValueError, match=r"_Video needs \['frame_patch_size'\]; give them with --set"):
        constructor_config(_Video, dict(args, image_patch_size=4, frames=8, spatial_depth=1, temporal_depth=1))
    with pytest.raises(ValueError, match=r"takes no argument\(s\) \['depht'\]"):
        constructor_config(_Image, args, {"depht": 3})


def test_adapters_map_the_generic_options() -> None:
    opts = adapters.Options(dim=32, depth=2, heads=4, patch_size=4, frame_patch_size=2)
    assert (opts.mlp, opts.head_dim) == (64, 8)
    clips = adapters.Geometry(channels=3, size=(8, 16, 16), num_classes=5)
    video = adapters.adapter("vivit").config(_Video, clips, opts, {"temporal_depth": 1})
    assert video == dict(
        image_size=16, image_patch_size=4, frames=8, frame_patch_size=2, num_classes=5, dim=32, spatial_depth=2,
        temporal_depth=1, heads=4, mlp_dim=64, channels=3,
    )  # fmt: skip
    images = adapters.Geometry(channels=1, size=(16, 12), num_classes=10)
    assert adapters.adapter("vit").config(_Image, images, opts)["image_size"] == (16, 12)
    for bad, match in (
        (dict(heads=0), "--heads must be at least 1, got 0"),
        (dict(dim=-1), "--dim must be at least 1"),
        (dict(dropout=1.0), "--dropout must be in [0, 1)"),
    ):
        with pytest.raises(ValueError, match=re.escape(match)):
            adapters.Options(**bad)


def test_packed_feed_has_fixed_shapes_and_reads_each_sample() -> None:
    feed = adapters.feed("navit", "flax", {"patch_size": 4})
    x = np.random.default_rng(0).random((3, 2, 8, 12), dtype=np.float32)
    patches, segment_ids, coords, image_ids = feed.inputs(x)
    assert coords.shape == (3, 6, 2) and coords[0, -1].tolist() == [1, 2]  # row-major grid of 2 x 3 patches
    assert patches.shape == (3, 6, 2 * 16) and segment_ids.shape == (3, 6) and image_ids.shape == (3, 1)
    assert (segment_ids == 1).all() and (image_ids[:, 0] == [0, 1, 2]).all()
    np.testing.assert_array_equal(patches[1], packing.patchify(x[1], (4, 4), channels_last=False))
    out = np.arange(3 * 1 * 5).reshape(3, 1, 5)
    np.testing.assert_array_equal(feed.logits(out), out[:, 0])
    assert feed == adapters.feed("navit_nested", "flax", {"patch_size": (4, 4)})  # compiled steps are shared
    video = adapters.feed("navit_nested_3d", "flax", {"patch_size": 4, "frame_patch_size": 2})
    assert video.inputs(np.zeros((2, 1, 4, 8, 8), np.float32))[0].shape == (2, 8, 32)
    (lists,) = adapters.feed("navit", "torch", {}).inputs(x)
    assert len(lists) == 3 and all(len(group) == 1 for group in lists)  # each image alone in its sequence
    (flat,) = adapters.feed("navit_nested", "torch", {}).inputs(x)
    assert len(flat) == 3 and flat[2].shape == (2, 8, 12)
    assert adapters.feed("vit", "torch", {}) is None and adapters.feed("vit", "flax", {}) is None


def test_write_json_is_atomic(tmp_path: Path) -> None:
    dst = tmp_path / "out" / "metrics.json"
    write_json(dst, {"a": 1})
    assert json.loads(dst.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json(dst, {"a": object()})
    assert json.loads(dst.read_text()) == {"a": 1}  # the previous file is intact
    assert sorted(p.name for p in dst.parent.iterdir()) == ["metrics.json"]  # no temporary left behind
