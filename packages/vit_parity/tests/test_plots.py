"""Runs people can look at: `vit plot RUN` (loss and accuracy curves), `vit eval --plot` (the confusion matrix,
also in its --json) and TensorBoard event files rewritten from a run's history."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from cli_helpers import fails, one_thread, run  # noqa: F401 (one_thread: autouse)
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vit_parity.tools import data, runlog
from vit_parity.tools.cli import main
from vit_parity.tools.cli.plot import DPI, curves_figure
from vit_parity.tools.training import confusion_matrix

TINY_RUN = [
    "train", "--arch", "vit", "--data", "digits", "--limit", "40", "--batch-size", "32", "--image-size", "8",
    "--patch-size", "4", "--dim", "16", "--depth", "1", "--heads", "2", "--epochs", "1", "--quiet",
    "--backend", "torch",
]  # fmt: skip


def _records(n: int) -> list[dict]:
    """``vit train``'s per-epoch records, with a null held-out loss at epoch 2."""
    records = []
    for i in range(n):
        record = dict(epoch=i, lr=1e-3 * (i + 1), train_loss=2.0 / (i + 1), train_acc=0.3 + 0.05 * i)
        record.update(eval_loss=None if i == 2 else 2.5 / (i + 1), eval_acc=0.2 + 0.06 * i, seconds=1.5 + i)
        records.append(record)
    return records


def _run_folder(root: Path, records: list[dict], *, jsonl: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if jsonl:
        (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = {"arch": "vit", "data": {"name": "digits"}, "epochs": records, "complete": False}
    (root / "metrics.json").write_text(json.dumps(report))
    return root


def _read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert np.ptp(image[..., :3]) > 0.5  # not blank: white paper and dark ink
    return image


def _no_import(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``import package`` (and its submodules) fail, as when it is not installed."""
    real = builtins.__import__

    def fake(name: str, *args: object, **kwargs: object) -> object:
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


# ---- the confusion matrix


def test_confusion_matrix_against_a_hand_counted_example() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 1, 0, 2, 2, 1])
    want = [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 2, 0], [0, 0, 0, 0]]  # class 3 has no sample and no prediction
    got = confusion_matrix(pred, labels, 4)
    assert got.dtype == np.int64 and got.tolist() == want
    assert confusion_matrix(np.array([], int), np.array([], int), 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(pred[:-1], labels, 4)
    with pytest.raises(ValueError, match=r"predictions hold classes outside 0..2: \[3\]"):
        confusion_matrix(pred + 1, labels, 3)


# ---- vit plot


def test_plot_draws_the_curves_of_a_run_into_a_png(tmp_path: Path, capsys) -> None:
    records = _records(6)
    folder = _run_folder(tmp_path / "run", records)
    code, out, err = run(capsys, "plot", folder)
    assert code == 0, err
    assert out.strip() == str(folder / "curves.png")
    image = _read_png(folder / "curves.png")
    assert image.shape[:2] == (4 * DPI, 10 * DPI)
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "metrics.json", "metrics.jsonl"]  # no temp


def test_the_curves_are_the_records(tmp_path: Path) -> None:
    records = _records(5)
    fig = curves_figure(records, "vit on digits")
    loss, acc = fig.axes[:2]
    assert (loss.get_ylabel(), acc.get_ylabel(), fig.get_suptitle()) == ("loss", "accuracy", "vit on digits")
    lines = {(ax.get_ylabel(), line.get_label()): line for ax in (loss, acc) for line in ax.lines}
    for (name, split), key in {
        ("loss", "train"): "train_loss", ("loss", "held-out"): "eval_loss",
        ("accuracy", "train"): "train_acc", ("accuracy", "held-out"): "eval_acc",
    }.items():  # fmt: skip
        kept = [r for r in records if r[key] is not None]
        np.testing.assert_array_equal(lines[name, split].get_xdata(), [r["epoch"] + 1 for r in kept])
        np.testing.assert_allclose(lines[name, split].get_ydata(), [r[key] for r in kept])
    assert len(lines[("loss", "held-out")].get_xdata()) == 4  # the null one is left out
    # no held-out set: only the training curves
    bare = curves_figure([{**r, "eval_loss": None, "eval_acc": None} for r in records])
    assert [line.get_label() for ax in bare.axes[:2] for line in ax.lines] == ["train", "train"]


def test_plot_falls_back_to_metrics_json_and_writes_where_asked(tmp_path: Path, capsys) -> None:
    folder = _run_folder(tmp_path / "run", _records(1), jsonl=False)
    target = tmp_path / "figures" / "deep" / "run.png"
    code, out, err = run(capsys, "plot", folder, "-o", target)
    assert code == 0, err
    assert out.strip() == str(target)
    _read_png(target)
    assert not (folder / "curves.png").exists()


def test_plot_refuses_what_it_cannot_draw(tmp_path: Path, capsys) -> None:
    fails(capsys, "plot", tmp_path / "nope", match=f"run folder {tmp_path / 'nope'} does not exist")
    (tmp_path / "file").write_text("x")
    fails(capsys, "plot", tmp_path / "file", match="is not a folder")
    (tmp_path / "empty").mkdir()
    fails(capsys, "plot", tmp_path / "empty", match="holds no metrics.jsonl or metrics.json; pass the --out folder")
    started = _run_folder(tmp_path / "started", [])
    fails(capsys, "plot", started, match="has no finished epoch yet (metrics.jsonl holds none)")
    early = _run_folder(tmp_path / "early", [], jsonl=False)
    fails(capsys, "plot", early, match="has no finished epoch yet (metrics.json holds none)")
    (started / "metrics.jsonl").write_text('{"epoch": 0,\n')
    fails(capsys, "plot", started, match=f"{started / 'metrics.jsonl'} is not valid JSON")
    (started / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": "low"}\n')
    fails(capsys, "plot", started, match="does not hold `vit train`'s epoch records")
    fails(
        capsys,
        "plot",
        _run_folder(tmp_path / "ok", _records(2)),
        "-o",
        tmp_path / "c.jpg",
        match="--output takes a .png",
    )
    for folder in (started, early):
        assert not (folder / "curves.png").exists()


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _run_folder(tmp_path / "run", _records(2))
    _no_import(monkeypatch, "matplotlib")
    fails(
        capsys,
        "plot",
        folder,
        match="vit plot needs matplotlib, which is not installed: pip install 'vit-parity[plot]'",
    )
    assert not (folder / "curves.png").exists()


def test_a_failed_write_keeps_the_earlier_png(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _run_folder(tmp_path / "run", _records(3))
    (folder / "curves.png").write_bytes(b"earlier")

    def broken(self: Figure, f, **kwargs: object) -> None:
        f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    fails(capsys, "plot", folder, match="disk full")
    assert (folder / "curves.png").read_bytes() == b"earlier"
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "metrics.json", "metrics.jsonl"]


# ---- vit eval --plot


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("plots") / "run"
    assert main([*TINY_RUN, "--out", str(out)]) == 0
    yield out


def test_eval_draws_and_reports_the_confusion_matrix(trained: Path, tmp_path: Path, capsys) -> None:
    png, report = tmp_path / "confusion.png", tmp_path / "eval.json"
    code, out, err = run(capsys, "eval", trained, "--split", "all", "--plot", png, "--json", report)
    assert code == 0, err
    assert f"confusion matrix: {png}" in out
    _read_png(png)
    got = json.loads(report.read_text())
    matrix = np.array(got["backends"]["torch"]["confusion"])
    # an independent count of the samples per class: the same 40 digits `vit train --limit 40` used
    dataset = data.load("digits", size=8).limit(40, 0)
    counts = np.bincount(dataset.y, minlength=len(dataset.classes))
    assert got["classes"] == list(dataset.classes) and matrix.shape == (10, 10)
    np.testing.assert_array_equal(matrix.sum(axis=1), counts)
    assert matrix.trace() / counts.sum() == pytest.approx(got["backends"]["torch"]["accuracy"])
    per_class = got["backends"]["torch"]["per_class"]
    for i, name in enumerate(got["classes"]):
        assert matrix[i, i] / counts[i] == pytest.approx(per_class[name])


def test_eval_plot_refusals_come_before_any_work(trained: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    fails(capsys, "eval", trained, "--plot", tmp_path / "c.pdf", match="--plot takes a .png file")
    _no_import(monkeypatch, "matplotlib")
    fails(capsys, "eval", trained, "--plot", tmp_path / "c.png", match="pip install 'vit-parity[plot]'")
    assert not list(tmp_path.iterdir())


# ---- TensorBoard


def _scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_records(tmp_path: Path) -> None:
    records = _records(4)
    path = runlog.write_tensorboard(tmp_path, records)
    assert path is not None and path.parent == tmp_path / "tensorboard" and "tfevents" in path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    got = _scalars(path.parent)
    assert sorted(got) == sorted(runlog.SCALARS)
    for tag, key in runlog.SCALARS.items():
        kept = [r for r in records if r[key] is not None]
        assert [s for s, _, _ in got[tag]] == [r["epoch"] for r in kept], tag
        np.testing.assert_allclose([v for _, v, _ in got[tag]], [r[key] for r in kept], rtol=1e-6)  # float32
    # the wall times are as far apart as the later epoch took
    times = [t for _, _, t in got["loss/train"]]
    np.testing.assert_allclose(np.diff(times), [r["seconds"] for r in records[1:]], atol=1e-3)


def test_a_rewrite_replaces_the_history_for_new_and_running_readers(tmp_path: Path) -> None:
    folder = tmp_path / "tensorboard"
    runlog.write_tensorboard(tmp_path, _records(5))
    running = EventAccumulator(str(folder))
    running.Reload()
    # resumed from epoch 3's checkpoint: epochs 3 and 4 again, with other numbers
    resumed = _records(3) + [{**r, "train_loss": 10.0 + r["epoch"]} for r in _records(5)[3:]]
    for n in (4, 5):  # one rewrite per epoch
        runlog.write_tensorboard(tmp_path, resumed[:n])
    want = [(r["epoch"], r["train_loss"]) for r in resumed]
    assert [(s, pytest.approx(v)) for s, v, _ in _scalars(folder)["loss/train"]] == want
    running.Reload()
    assert [(e.step, pytest.approx(e.value)) for e in running.Scalars("loss/train")] == want
    assert len(list(folder.iterdir())) == runlog.KEEP + 1  # older files are deleted
    for _ in range(3):
        runlog.write_tensorboard(tmp_path, resumed)
    assert len(list(folder.iterdir())) == runlog.KEEP + 1


def test_a_failed_tensorboard_write_changes_nothing(tmp_path: Path) -> None:
    path = runlog.write_tensorboard(tmp_path, _records(2))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        runlog.write_tensorboard(tmp_path, [*_records(2), {"epoch": 2, "train_loss": "not a number"}])
    assert [p.name for p in path.parent.iterdir()] == [path.name] and path.read_bytes() == before
    log = runlog.TensorBoardLog.open(tmp_path)
    with pytest.raises(ValueError, match="needs an 'epoch' key"):
        log.epoch({"train_loss": 1.0})
    log.discard()
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_without_tensorboard_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_import(monkeypatch, "tensorboard")
    assert runlog.TensorBoardLog.open(tmp_path) is None
    assert runlog.write_tensorboard(tmp_path, _records(2)) is None
    assert not list(tmp_path.iterdir())
