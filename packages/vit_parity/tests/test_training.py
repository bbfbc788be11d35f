"""vit_parity.training: the schedule, metrics, progress bar, constructor mapping and atomic JSON."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vit_parity.training import (
    EpochMetrics,
    Progress,
    cross_entropy,
    model_config,
    per_class_accuracy,
    softmax,
    warmup_cosine,
    write_json,
)


def test_warmup_cosine() -> None:
    lr = lambda s: warmup_cosine(s, total_steps=110, warmup_steps=10, peak_lr=0.5)  # noqa: E731
    assert [lr(s) for s in (0, 4, 9)] == pytest.approx([0.05, 0.25, 0.5])  # linear, first step already moves
    assert lr(10) == pytest.approx(0.5)
    assert lr(60) == pytest.approx(0.25)  # half-way through the decay: cos(pi / 2)
    assert lr(35) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == pytest.approx(0.0, abs=1e-12) and lr(500) == pytest.approx(0.0, abs=1e-12)
    no_warmup = warmup_cosine(0, total_steps=10, warmup_steps=0, peak_lr=1.0)
    assert no_warmup == 1.0


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
    bar.update(3, 1.0, 0.5)  # no live redraw off a terminal
    bar.end(EpochMetrics(0, 1e-3, 1.25, 0.5, 1.5, 0.25, 2.0))
    assert out.getvalue() == "epoch 1/2: loss 1.250 acc 0.500 | eval loss 1.500 acc 0.250 | lr 1.00e-03 | 2.0s\n"
    quiet = io.StringIO()
    Progress(2, 5, stream=quiet, enabled=False).end(EpochMetrics(0, 1e-3, 1.0, 0.5, None, None, 1.0))
    assert quiet.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal() -> None:
    out = _Terminal()
    bar = Progress(3, 10, stream=out)
    bar.begin(1)
    bar.update(5, 0.5, 0.75)
    line = out.getvalue()
    assert line.startswith("\repoch 2/3 [##########..........] 5/10 loss 0.500 acc 0.750 ") and line.endswith(" it/s")
    bar.end(EpochMetrics(1, 1e-3, 0.5, 0.75, None, None, 1.0))
    assert out.getvalue()[len(line) :] == "\r\033[Kepoch 2/3: loss 0.500 acc 0.750 | lr 1.00e-03 | 1.0s\n"


class _Image:
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, channels=3, dim_head=64):
        pass


class _Video:
    def __init__(
        self, *, image_size, image_patch_size, frames, frame_patch_size, num_classes, dim, spatial_depth,
        temporal_depth, heads, mlp_dim, channels=3, variant="factorized_encoder", rngs=None,
    ):  # fmt: skip
        pass


def test_model_config_fills_arguments_by_name() -> None:
    opts = {"dim": 32, "depth": 2, "heads": 4, "mlp_dim": 64, "dim_head": 8, "patch_size": 4, "pool": None}
    cfg = model_config(_Image, channels=1, size=(16, 12), num_classes=10, options=opts)
    assert cfg == dict(
        image_size=(16, 12), patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, channels=1, dim_head=8
    )
    video = model_config(
        _Video, channels=3, size=(8, 16, 16), num_classes=5, options={**opts, "frame_patch_size": 2},
        overrides={"temporal_depth": 1, "variant": "factorized_self_attention"},
    )  # fmt: skip
    assert video == dict(
        image_size=16, image_patch_size=4, frames=8, frame_patch_size=2, num_classes=5, dim=32, spatial_depth=2,
        temporal_depth=1, heads=4, mlp_dim=64, channels=3, variant="factorized_self_attention",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"_Video needs \['frame_patch_size'\]; give them with --set"):
        model_config(_Video, channels=3, size=(8, 16, 16), num_classes=5, options=opts)
    with pytest.raises(ValueError, match=r"takes no argument\(s\) \['depht'\]"):
        model_config(_Image, channels=1, size=(16, 16), num_classes=2, options=opts, overrides={"depht": 3})


def test_write_json_is_atomic(tmp_path: Path) -> None:
    dst = tmp_path / "out" / "metrics.json"
    write_json(dst, {"a": 1})
    assert json.loads(dst.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json(dst, {"a": object()})
    assert json.loads(dst.read_text()) == {"a": 1}  # the previous file is intact
    assert sorted(p.name for p in dst.parent.iterdir()) == ["metrics.json"]  # no temporary left behind
