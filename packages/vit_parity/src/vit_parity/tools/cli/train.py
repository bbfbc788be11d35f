"""``vit train``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core import spec
from vit_parity.core.config import to_json
from vit_parity.core.convert import ConversionError
from vit_parity.core.loop import EpochMetrics, Interrupted, RunState, StopSignals
from vit_parity.tools import adapters, data
from vit_parity.tools.cli.common import (
    RUN_CHECKPOINT,
    RUN_EPOCHS,
    RUN_METRICS,
    UsageError,
    arch_spec,
    fail,
    one_line,
    pick_backend,
    read_trained,
    set_threads,
    train_module,
)
from vit_parity.tools.data import Preprocess
from vit_parity.tools.runlog import write_tensorboard
from vit_parity.tools.training import per_class_accuracy, write_json, write_jsonl


def _rank(arch: spec.ArchSpec) -> int | None:
    """How many axes a sample of ``arch`` has, channels included (3: images, 4: videos and volumes)."""
    return len(arch.cases[0].inputs[0].axes.split()) - 1 if arch.cases else None


def _check_fits(arch: spec.ArchSpec, dataset: data.Dataset) -> None:
    rank = _rank(arch)
    if rank is not None and rank != dataset.x.ndim - 1:
        kind = "images" if len(dataset.size) == 2 else "videos or volumes"
        fitting = sorted(
            n for n, a in spec.REGISTRY.items() if _rank(a) == dataset.x.ndim - 1 and adapters.trains(n) == "yes"
        )
        raise UsageError(
            f"architecture {arch.name!r} takes ({arch.cases[0].inputs[0].axes}) but {dataset.name} holds {kind} "
            f"({dataset.axes}); pick one of: {', '.join(fitting)}"
        )


def _parse_sets(items: Sequence[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--set takes NAME=VALUE (a constructor argument), got {item!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
        if isinstance(out[name], list):
            out[name] = tuple(out[name])
    return out


def _options(args: argparse.Namespace) -> adapters.Options:
    try:
        return adapters.Options(
            dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim, dim_head=args.dim_head,
            patch_size=args.patch_size, frame_patch_size=args.frame_patch_size, pool=args.pool,
            dropout=args.dropout, emb_dropout=args.emb_dropout,
        )  # fmt: skip
    except ValueError as err:
        raise UsageError(one_line(err)) from None


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier run that this one replaces; refuses what would lose or miss a run."""
    if resume and overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it; pick one")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; pick another --out")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if resume:
        if not (ckpt_io.recover(out / RUN_CHECKPOINT) / "config.json").is_file():
            where = f"{out} holds no {RUN_CHECKPOINT}/" if out.is_dir() else f"{out} does not exist"
            raise UsageError(f"--resume: there is no run to continue ({where}); drop --resume to start one")
        return False
    if held and not overwrite:
        raise UsageError(
            f"{out} already holds a run ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
            "continue it with --resume, replace it with --overwrite, or pick another --out"
        )
    return bool(held)


class _RunFolder:
    """Where the run is written. A run that replaces an earlier one (``--overwrite``) is written into a
    hidden folder beside ``out`` and swapped in once it holds its first checkpoint, so the earlier run
    stays whole until then, and an interruption before then leaves it untouched."""

    def __init__(self, out: Path, *, replace: bool) -> None:
        self.out = out
        self.staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent)) if replace else None
        if self.staging is not None:
            ckpt_io.plain_mode(self.staging)

    @property
    def root(self) -> Path:
        return self.out if self.staging is None else self.staging

    def commit(self) -> None:
        """Swap the new run in place of the earlier one (after the new one's first checkpoint)."""
        if self.staging is None:
            return
        old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(self.out, old)
        try:
            os.rename(self.staging, self.out)
        except BaseException:
            os.rename(old, self.out)
            raise
        self.staging = None
        shutil.rmtree(old, ignore_errors=True)

    def abandon(self) -> None:
        """Drop a new run that never reached its first checkpoint."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except (UsageError, data.DataError, ckpt_io.CheckpointError, ConversionError) as err:
        return fail("train", err)


def _train(args: argparse.Namespace) -> int:
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    backend = pick_backend(args.backend)
    arch = arch_spec(args.arch)
    try:
        adapter = adapters.adapter(arch.name)
    except adapters.NotTrainable as err:
        raise UsageError(one_line(err)) from None
    options = _options(args)
    out = Path(args.out)
    replace = _check_out(out, resume=args.resume, overwrite=args.overwrite)
    set_threads(args.threads, backend)
    train_mod = train_module(backend)
    dataset = data.load(args.data, size=args.image_size, frames=args.frames, samples=args.samples, seed=args.seed,
                        frame_stride=args.frame_stride, workers=args.workers)  # fmt: skip
    dataset = dataset.limit(args.limit, args.seed)
    _check_fits(arch, dataset)
    train_set, eval_set = dataset.split(args.eval_fraction, args.seed)

    if args.resume:
        meta, classes, pre = read_trained(out / RUN_CHECKPOINT)
        if not spec.same_weights(meta["arch"], arch.name):
            raise UsageError(
                f"{out / RUN_CHECKPOINT} holds a {meta['arch']!r} checkpoint, not {arch.name!r}; "
                "drop --resume or pick another --out"
            )
        if classes != list(dataset.classes):
            raise UsageError(
                f"{out / RUN_CHECKPOINT} was trained on classes {classes}, the data has {list(dataset.classes)}"
            )
    else:
        pre = Preprocess.fit(train_set)

    geometry = adapters.Geometry(dataset.channels, dataset.size, len(dataset.classes))
    try:
        config = adapter.config(arch.load_class(backend), geometry, options, _parse_sets(args.set))
        model = train_mod.build(arch.name, config, seed=args.seed)
    except (TypeError, ValueError) as err:
        raise UsageError(f"cannot build {arch.name!r}: {one_line(err)}; adjust the size options or --set") from None
    feed = adapter.feed(backend, model.config)

    run, history = RunState(), []
    if args.resume:
        if to_json(model.config) != meta["config"]:
            diff = sorted(k for k in set(meta["config"]) | set(model.config)
                          if meta["config"].get(k) != to_json(model.config).get(k))  # fmt: skip
            raise UsageError(
                f"{out / RUN_CHECKPOINT} was trained with other model options (differing: {diff}); "
                "repeat the original options or drop --resume"
            )
        run = _run_state(out / RUN_CHECKPOINT, backend, model)
        if (out / RUN_METRICS).is_file():
            history = json.loads((out / RUN_METRICS).read_text()).get("epochs", [])[: run.epoch]

    x_train, x_eval = pre(train_set.x), pre(eval_set.x)
    hparams = {
        "backend": backend, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "warmup_epochs": args.warmup_epochs,
        "label_smoothing": args.label_smoothing, "shift": args.shift, "seed": args.seed,
        "precision": args.precision, "compile": args.compile, "threads": args.threads,
    }  # fmt: skip
    data_info = {
        "name": args.data, "size": args.image_size, "frames": args.frames, "frame_stride": args.frame_stride,
        "samples": args.samples,
        "seed": args.seed, "limit": args.limit, "eval_fraction": args.eval_fraction,
        "train_samples": len(train_set), "eval_samples": len(eval_set),
    }  # fmt: skip
    n_params = sum(v.size for v in importlib.import_module(f"vit_{backend}.checkpoint").state_numpy(model).values())
    print(
        f"training {arch.name} ({backend}, {n_params:,} parameters) on {dataset.name}: "
        f"{len(train_set)} train / {len(eval_set)} held-out samples shaped {(dataset.channels, *dataset.size)}, "
        f"{len(dataset.classes)} classes",
        file=sys.stderr,
    )
    report = {"arch": arch.name, "config": to_json(model.config), "data": data_info, "train": hparams}
    folder = _RunFolder(out, replace=replace)

    def on_checkpoint(state: RunState, model: object, m: EpochMetrics | None) -> None:
        if m is not None:
            history.append(m.to_json())
        extra = {
            "classes": list(dataset.classes), "preprocess": pre.to_json(), "data": data_info,
            "train": {**hparams, "epoch": state.epoch - 1}, "run": state.to_json(),
        }  # fmt: skip
        if history:
            extra["metrics"] = history[-1]
        train_mod.save(model, folder.root / RUN_CHECKPOINT, extra=extra, optimizer=state.moments)
        complete = state.epoch >= args.epochs
        write_json(folder.root / RUN_METRICS, {**report, "epochs": history, "complete": complete})
        write_jsonl(folder.root / RUN_EPOCHS, history)
        if m is not None:
            write_tensorboard(folder.root, history)  # when the tensorboard package is installed
        folder.commit()

    started = time.perf_counter()
    try:
        with StopSignals() as signals:
            train_mod.fit(
                model, (x_train, train_set.y), (x_eval, eval_set.y) if len(eval_set) else None,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, shift=args.shift,
                seed=args.seed, resume=run, feed=feed, precision=args.precision, compile=args.compile,
                on_checkpoint=on_checkpoint, stop=signals.requested, progress=not args.quiet,
            )  # fmt: skip
    except Interrupted as stopped:
        lead = "\n" if sys.stderr.isatty() else ""  # end the progress bar's line
        state = stopped.state
        print(
            f"{lead}vit train: stopped by {signals.name} at epoch {state.epoch + 1}, step {state.step}; the run is "
            f"saved in {out / RUN_CHECKPOINT}; continue it with: {_resume_command(args)}",
            file=sys.stderr,
        )
        return 128 + (signals.signal or 2)
    except KeyboardInterrupt:
        replaced = folder.staging is not None
        folder.abandon()
        ckpt_dir = out / RUN_CHECKPOINT
        if replaced:
            done = f"no epoch completed; {out} keeps the earlier run"
        else:
            done = f"the last complete checkpoint is {ckpt_dir}" if ckpt_dir.is_dir() else "no epoch completed"
        lead = "\n" if sys.stderr.isatty() else ""  # end the progress bar's line
        print(f"{lead}vit train: interrupted; {done} (continue with --resume)", file=sys.stderr)
        return 130
    finally:
        folder.abandon()
    ckpt_dir, metrics_path = out / RUN_CHECKPOINT, out / RUN_METRICS
    seconds = time.perf_counter() - started
    summary: dict[str, object] = {"train_seconds": round(seconds, 2)}
    if len(eval_set):
        logits = train_mod.predict(model, x_eval, feed=feed, precision=args.precision)
        pred = logits.argmax(-1)
        per_class = per_class_accuracy(pred, eval_set.y, len(dataset.classes))
        summary.update(
            accuracy=float((pred == eval_set.y).mean()),
            per_class=dict(zip(dataset.classes, per_class)),
            samples=len(eval_set),
        )
    write_json(metrics_path, {**report, "epochs": history, "complete": True, "eval": summary})
    held = f"held-out accuracy {summary['accuracy']:.4f} on {len(eval_set)} samples, " if len(eval_set) else ""
    print(f"{held}{seconds:.0f}s; checkpoint {ckpt_dir}, metrics {metrics_path}")
    return 0


def _run_state(path: Path, backend: str, model: object) -> RunState:
    """Load the run's weights into ``model`` and return where the run stands (optimizer moments included).

    A checkpoint from before runs recorded their state resumes at the epoch after its last, with a new
    optimizer; one saved by the other backend has its moments converted."""
    ckpt = ckpt_io.load(path)
    importlib.import_module(f"vit_{backend}.checkpoint").load_state(model, ckpt)
    if "run" not in ckpt.extra:
        epoch = int(ckpt.extra.get("train", {}).get("epoch", -1)) + 1
        print(
            f"vit train: {path} holds no optimizer state; resuming at epoch {epoch + 1} with a new one", file=sys.stderr
        )
        return RunState(epoch=epoch)
    return RunState.from_json(ckpt.extra["run"], ckpt.to_layout(backend).optimizer)


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run."""
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    argv = [a for a in argv if a != "--overwrite"]
    return shlex.join(["vit", *argv, *([] if "--resume" in argv else ["--resume"])])
