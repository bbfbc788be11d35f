"""The ``vit`` command: list architectures, check parity, convert checkpoints, train, evaluate, predict."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vit_parity import checkpoint as ckpt_io
from vit_parity import data, spec
from vit_parity.config import to_json
from vit_parity.convert import ConversionError
from vit_parity.data import Preprocess
from vit_parity.training import EpochMetrics, cross_entropy, model_config, per_class_accuracy, softmax, write_json


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(f"vit_{backend}") is not None


def _class_status(arch: spec.ArchSpec, backend: str) -> str:
    if not _installed(backend):
        return "not installed"
    try:
        arch.load_class(backend)
    except (ImportError, AttributeError) as err:
        return f"missing ({err.__class__.__name__})"
    return "ok"


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name, arch in sorted(spec.REGISTRY.items()):
        t, f = _class_status(arch, "torch"), _class_status(arch, "flax")
        parity = "checkable" if t == f == "ok" else "needs both backends"
        rows.append((name, t, f, parity, str(len(arch.cases)), arch.paper))
    _table(("arch", "torch", "flax", "parity", "cases", "paper"), rows)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    missing = [b for b in ("torch", "flax") if not _installed(b)]
    if missing:
        print(f"vit check needs both backends; install {', '.join('vit_' + b for b in missing)}", file=sys.stderr)
        return 2
    names = sorted(spec.REGISTRY) if args.all or not args.arch else args.arch
    unknown = [n for n in names if n not in spec.REGISTRY]
    if unknown:
        print(f"unknown architecture(s) {unknown}; run `vit list`", file=sys.stderr)
        return 2
    from vit_parity.parity import run_case

    rows, failed = [], 0
    for name in names:
        arch = spec.get(name)
        for case in arch.cases:
            diffs = run_case(arch, case, seed=args.seed, rtol=args.rtol, atol=args.atol)
            ok = all(d.ok for d in diffs)
            failed += not ok
            worst = [d.name for d in diffs if not d.ok]
            rows.append((
                name, case.name, f"{max(d.max_abs for d in diffs):.2e}", f"{max(d.max_rel for d in diffs):.2e}",
                str(len(diffs) - 1), "ok" if ok else "FAIL " + ", ".join(worst),
            ))  # fmt: skip
    _table(("arch", "case", "max abs", "max rel", "blocks", "status"), rows)
    print(f"rtol={args.rtol:g} atol={args.atol:g}: {len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from vit_parity.checkpoint import CheckpointError, convert_checkpoint
    from vit_parity.convert import ConversionError

    try:
        dst = convert_checkpoint(args.src, args.output, to=args.to)
    except (CheckpointError, ConversionError) as err:
        print(f"vit convert: {err}", file=sys.stderr)
        return 1
    print(f"wrote {dst} ({args.to} layout)")
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


# ------------------------------------------------------------------------------ train, eval, predict


class UsageError(Exception):
    """Bad input to a command; printed as one line, exit status 1."""


def _one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def _fail(command: str, err: BaseException) -> int:
    print(f"vit {command}: {_one_line(err)}", file=sys.stderr)
    return 1


def _pick_backend(requested: str | None, preferred: str = "torch") -> str:
    """``requested`` if installed (else a UsageError saying what to install); by default ``preferred`` or the other."""
    other = {"torch": "flax", "flax": "torch"}
    if requested is not None:
        if not _installed(requested):
            raise UsageError(
                f"backend {requested!r} is not installed; install it with `pip install ./packages/vit_{requested}` "
                f"or pick --backend {other[requested]}"
            )
        return requested
    for b in (preferred, other[preferred]):
        if _installed(b):
            return b
    raise UsageError("no backend is installed; `pip install ./packages/vit_torch` or `pip install ./packages/vit_flax`")


def _train_module(backend: str):
    return importlib.import_module(f"vit_{backend}.train")


def _arch(name: str) -> spec.ArchSpec:
    if name not in spec.REGISTRY:
        raise UsageError(f"unknown architecture {name!r}; run `vit list` (known: {', '.join(sorted(spec.REGISTRY))})")
    return spec.REGISTRY[name]


def _check_fits(arch: spec.ArchSpec, dataset: data.Dataset) -> None:
    axes = arch.cases[0].inputs[0].axes if arch.cases else dataset.axes
    if len(axes.split()) != len(dataset.axes.split()):
        kind = "images" if len(dataset.size) == 2 else "videos or volumes"
        fitting = sorted(n for n, a in spec.REGISTRY.items() if a.cases and a.cases[0].inputs[0].axes == dataset.axes)
        raise UsageError(
            f"architecture {arch.name!r} takes ({axes}) but {dataset.name} holds {kind} ({dataset.axes}); "
            f"pick one of: {', '.join(fitting)}"
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


def _resolve_checkpoint(path: str) -> Path:
    """A checkpoint folder, or a `vit train --out` folder holding one in ``checkpoint/``."""
    p = Path(path)
    if not (p / "config.json").is_file() and (p / RUN_CHECKPOINT / "config.json").is_file():
        return p / RUN_CHECKPOINT
    return p


def _read_trained(path: Path) -> tuple[dict, list[str], Preprocess]:
    """The checkpoint's config, class names and preprocessing (as `vit train` stores them in ``extra``)."""
    meta = ckpt_io.read_config(path)
    extra = meta.get("extra") or {}
    if "classes" not in extra or "preprocess" not in extra:
        raise UsageError(
            f"checkpoint {path} holds no class names or preprocessing (it was not written by `vit train`); "
            "store them in its config's extra field ({'classes': [...], 'preprocess': {...}})"
        )
    return meta, list(extra["classes"]), Preprocess.from_json(extra["preprocess"])


def _load_model(backend: str, path: Path):
    module = importlib.import_module(f"vit_{backend}")
    try:
        return module.load(path)
    except (ckpt_io.CheckpointError, ConversionError, KeyError, TypeError, ValueError) as err:
        msg = _one_line(err).strip("'\"")
        raise UsageError(
            f"checkpoint {path} does not load in {backend}: {msg} (was it edited, or saved by another version?)"
        ) from None


def _predict(backend: str, path: Path, x: np.ndarray, n_classes: int, batch_size: int) -> np.ndarray:
    model = _load_model(backend, path)
    logits = _train_module(backend).predict(model, x, batch_size=batch_size)
    if logits.shape[-1] != n_classes:
        raise UsageError(f"checkpoint {path} has {logits.shape[-1]} outputs but {n_classes} class names")
    return logits


RUN_CHECKPOINT = "checkpoint"
RUN_METRICS = "metrics.json"


def cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except (UsageError, data.DataError, ckpt_io.CheckpointError, ConversionError) as err:
        return _fail("train", err)


def _train(args: argparse.Namespace) -> int:
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    backend = _pick_backend(args.backend)
    arch = _arch(args.arch)
    train_mod = _train_module(backend)
    dataset = data.load(args.data, size=args.image_size, frames=args.frames, samples=args.samples, seed=args.seed)
    dataset = dataset.limit(args.limit, args.seed)
    _check_fits(arch, dataset)
    train_set, eval_set = dataset.split(args.eval_fraction, args.seed)
    out = Path(args.out)
    ckpt_dir, metrics_path = out / RUN_CHECKPOINT, out / RUN_METRICS

    resumed = args.resume and (ckpt_dir / "config.json").is_file()
    if resumed:
        meta, classes, pre = _read_trained(ckpt_dir)
        if meta["arch"] != arch.name:
            raise UsageError(
                f"{ckpt_dir} holds a {meta['arch']!r} checkpoint, not {arch.name!r}; "
                "drop --resume or pick another --out"
            )
        if classes != list(dataset.classes):
            raise UsageError(f"{ckpt_dir} was trained on classes {classes}, the data has {list(dataset.classes)}")
    else:
        pre = Preprocess.fit(train_set)

    heads = args.heads
    options = {
        "dim": args.dim,
        "depth": args.depth,
        "heads": heads,
        "mlp_dim": args.mlp_dim or 2 * args.dim,
        "dim_head": args.dim_head or max(args.dim // heads, 1),
        "patch_size": args.patch_size,
        "frame_patch_size": args.frame_patch_size,
        "pool": args.pool,
        "dropout": args.dropout,
        "emb_dropout": args.emb_dropout,
    }
    try:
        config = model_config(
            arch.load_class(backend), channels=dataset.channels, size=dataset.size,
            num_classes=len(dataset.classes), options=options, overrides=_parse_sets(args.set),
        )  # fmt: skip
        model = train_mod.build(arch.name, config, seed=args.seed)
    except (TypeError, ValueError) as err:
        raise UsageError(f"cannot build {arch.name!r}: {_one_line(err)}; adjust the size options or --set") from None

    start_epoch, history = 0, []
    if resumed:
        if to_json(model.config) != meta["config"]:
            diff = sorted(k for k in set(meta["config"]) | set(model.config)
                          if meta["config"].get(k) != to_json(model.config).get(k))  # fmt: skip
            raise UsageError(
                f"{ckpt_dir} was trained with other model options (differing: {diff}); "
                "repeat the original options or drop --resume"
            )
        importlib.import_module(f"vit_{backend}").load_weights(model, ckpt_dir)
        start_epoch = int(meta["extra"].get("train", {}).get("epoch", -1)) + 1
        if metrics_path.is_file():
            history = json.loads(metrics_path.read_text()).get("epochs", [])[:start_epoch]

    x_train, x_eval = pre(train_set.x), pre(eval_set.x)
    hparams = {
        "backend": backend, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "warmup_epochs": args.warmup_epochs,
        "label_smoothing": args.label_smoothing, "shift": args.shift, "seed": args.seed,
    }  # fmt: skip
    data_info = {
        "name": args.data, "size": args.image_size, "frames": args.frames, "samples": args.samples,
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

    def on_epoch(m: EpochMetrics, model: object) -> None:
        history.append(m.to_json())
        extra = {
            "classes": list(dataset.classes), "preprocess": pre.to_json(), "data": data_info,
            "train": {**hparams, "epoch": m.epoch}, "metrics": m.to_json(),
        }  # fmt: skip
        train_mod.save(model, ckpt_dir, extra=extra)
        write_json(metrics_path, {**report, "epochs": history, "complete": m.epoch + 1 >= args.epochs})

    started = time.perf_counter()
    try:
        train_mod.fit(
            model, (x_train, train_set.y), (x_eval, eval_set.y) if len(eval_set) else None,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, shift=args.shift,
            seed=args.seed, start_epoch=start_epoch, on_epoch=on_epoch, progress=not args.quiet,
        )  # fmt: skip
    except KeyboardInterrupt:
        done = f"the last complete checkpoint is {ckpt_dir}" if ckpt_dir.is_dir() else "no epoch completed"
        lead = "\n" if sys.stderr.isatty() else ""  # end the progress bar's line
        print(f"{lead}vit train: interrupted; {done} (continue with --resume)", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    summary: dict[str, object] = {"train_seconds": round(seconds, 2)}
    if len(eval_set):
        logits = train_mod.predict(model, x_eval)
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


def _eval_data(args: argparse.Namespace, extra: dict, pre: Preprocess) -> tuple[data.Dataset, str]:
    stored = extra.get("data", {})
    same = args.data == stored.get("name")
    if same:
        dataset = data.load(
            args.data, size=stored.get("size") or pre.size, frames=stored.get("frames"),
            samples=stored.get("samples"), seed=stored.get("seed", 0), channels=pre.channels,
        ).limit(stored.get("limit"), stored.get("seed", 0))  # fmt: skip
    else:
        frames = pre.size[0] if len(pre.size) == 3 else None
        dataset = data.load(args.data, size=pre.size, frames=frames, channels=pre.channels)
    split = args.split if args.split != "auto" else ("eval" if same else "all")
    if split != "all":
        train_set, eval_set = dataset.split(stored.get("eval_fraction", 0.2), stored.get("seed", 0))
        dataset = eval_set if split == "eval" else train_set
    return dataset, split


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        return _eval(args)
    except (UsageError, data.DataError, ckpt_io.CheckpointError, ConversionError) as err:
        return _fail("eval", err)


def _eval(args: argparse.Namespace) -> int:
    path = _resolve_checkpoint(args.checkpoint)
    meta, classes, pre = _read_trained(path)
    backends = list(spec.BACKENDS) if args.backend == "both" else [_pick_backend(args.backend, meta["layout"])]
    for b in backends:
        _pick_backend(b)
    dataset, split = _eval_data(args, meta["extra"], pre)
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        raise UsageError(f"the data has classes {unknown} that the checkpoint does not know (it knows {classes})")
    labels = np.array([classes.index(c) for c in dataset.classes], dtype=np.int64)[dataset.y]
    if len(labels) == 0:
        raise UsageError(f"the {split} split of {args.data} is empty; pass --split all")
    x = pre(dataset.x)
    results: dict[str, dict] = {}
    logits: dict[str, np.ndarray] = {}
    for b in backends:
        logits[b] = _predict(b, path, x, len(classes), args.batch_size)
        pred = logits[b].argmax(-1)
        per_class = per_class_accuracy(pred, labels, len(classes))
        results[b] = {
            "accuracy": float((pred == labels).mean()),
            "loss": cross_entropy(logits[b], labels),
            "per_class": dict(zip(classes, per_class)),
        }
    print(f"{meta['arch']} checkpoint {path} on {args.data} ({split} split, {len(labels)} samples)")
    counts = np.bincount(labels, minlength=len(classes))
    rows = [
        (name, str(counts[i]), *(_fmt(results[b]["per_class"][name]) for b in backends))
        for i, name in enumerate(classes)
    ]
    rows.append(("all", str(len(labels)), *(f"{results[b]['accuracy']:.4f}" for b in backends)))
    _table(("class", "samples", *(f"{b} accuracy" for b in backends)), rows)
    report: dict[str, object] = {
        "checkpoint": str(path), "arch": meta["arch"], "data": args.data, "split": split,
        "samples": len(labels), "backends": results,
    }  # fmt: skip
    status = 0
    if len(backends) == 2:
        a, b = (logits[k] for k in backends)
        agree = int((a.argmax(-1) == b.argmax(-1)).sum())
        diff = float(np.abs(a - b).max())
        report["agreement"] = {"same_predictions": agree, "samples": len(labels), "max_abs_logit_diff": diff}
        print(f"torch and flax give the same prediction on {agree}/{len(labels)} samples (max |logit diff| {diff:.1e})")
        status = 0 if agree == len(labels) else 1
    if args.json:
        write_json(args.json, report)
    return status


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        path = _resolve_checkpoint(args.checkpoint)
        meta, classes, pre = _read_trained(path)
        backend = _pick_backend(args.backend, meta["layout"])
        x = pre(np.stack([data.read_sample(f, pre) for f in args.files]))
        probs = softmax(_predict(backend, path, x, len(classes), args.batch_size))
    except (UsageError, data.DataError, ckpt_io.CheckpointError, ConversionError) as err:
        return _fail("predict", err)
    k = max(1, min(args.top_k, len(classes)))
    report = []
    for file, p in zip(args.files, probs):
        top = np.argsort(-p, kind="stable")[:k]
        report.append({"file": file, "top": [{"class": classes[i], "probability": float(p[i])} for i in top]})
        print(f"{file}: " + ", ".join(f"{classes[i]} ({p[i]:.3f})" for i in top))
    if args.json:
        write_json(args.json, report)
    return 0


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or action.default == []:
            return action.help or ""
        return (action.help or "") + " (default: %(default)s)"


def _add_main_job(sub: argparse._SubParsersAction) -> None:
    backends = ("torch", "flax")
    p = sub.add_parser(
        "train",
        help="train a classifier on built-in or folder data; writes OUT/checkpoint and OUT/metrics.json",
        formatter_class=_Defaults,
    )
    p.add_argument("--arch", required=True, help="architecture name (see `vit list`)")
    p.add_argument("--backend", choices=backends, help="framework to train in (default: torch if installed)")
    p.add_argument("--data", required=True, help=f"{', '.join(data.BUILTIN)}, or a folder of class sub-folders")
    p.add_argument("--out", default="runs/vit", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    g.add_argument("--batch-size", type=int, default=64, help="samples per step")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (linear warmup, cosine decay)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW decay of weight matrices")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="of the cross-entropy targets")
    g.add_argument("--shift", type=int, default=0, help="random translation of training samples, in pixels")
    g.add_argument("--eval-fraction", type=float, default=0.2, help="held-out share of every class")
    g.add_argument("--seed", type=int, default=0, help="seeds the weights, split, batches and generated data")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("data")
    g.add_argument(
        "--image-size", type=int, help="side of built-in images, frames, volumes (16); folders: resize target"
    )
    g.add_argument("--frames", type=int, help="clip length of digits-video (default 8)")
    g.add_argument("--samples", type=int, help="number of shapes-volume samples (default 500)")
    g.add_argument("--limit", type=int, help="use at most this many samples (quick runs)")
    g = p.add_argument_group("model size (filled in by name; --set for anything else)")
    g.add_argument("--dim", type=int, default=64, help="token width")
    g.add_argument("--depth", type=int, default=4, help="also spatial_depth and temporal_depth")
    g.add_argument("--heads", type=int, default=4, help="attention heads")
    g.add_argument("--mlp-dim", type=int, help="default: 2 * dim")
    g.add_argument("--dim-head", type=int, help="default: dim // heads")
    g.add_argument("--patch-size", type=int, default=4, help="also image_patch_size")
    g.add_argument("--frame-patch-size", type=int, default=2, help="frames per tubelet (videos, volumes)")
    g.add_argument("--pool", choices=("cls", "mean"), help="default: the architecture's")
    g.add_argument("--dropout", type=float, default=0.0, help="in attention and MLPs")
    g.add_argument("--emb-dropout", type=float, default=0.0, help="on the embedded tokens")
    g.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="any constructor argument")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy and per-class accuracy of a trained checkpoint")
    p.add_argument("checkpoint", help="checkpoint folder (or a `vit train --out` folder)")
    p.add_argument("--data", required=True, help=f"{', '.join(data.BUILTIN)}, or a folder of class sub-folders")
    p.add_argument("--backend", choices=(*backends, "both"), help="default: the checkpoint's; both: compare them")
    p.add_argument(
        "--split", choices=("auto", "eval", "train", "all"), default="auto",
        help="auto: the held-out split when --data is the training data, else all of it",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes for image files (.png/.jpg) or arrays (.npy)")
    p.add_argument("checkpoint", help="checkpoint folder (or a `vit train --out` folder)")
    p.add_argument("files", nargs="+", help="images (.png, .jpg) or .npy arrays (channels first)")
    p.add_argument("--backend", choices=backends, help="default: the checkpoint's")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", help="also write the predictions to this JSON file")
    p.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit", description="Vision Transformers in PyTorch and JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="every architecture with its torch / flax / parity status")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="cross-backend parity of logits and every block's output")
    p.add_argument("arch", nargs="*", help="architectures to check (default: all)")
    p.add_argument("--all", action="store_true", help="check every architecture")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("convert", help="rewrite a checkpoint in the other backend's layout")
    p.add_argument("src", help="checkpoint folder")
    p.add_argument("--to", required=True, choices=("torch", "flax"))
    p.add_argument("-o", "--output", required=True, help="destination folder")
    p.set_defaults(func=cmd_convert)

    _add_main_job(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
