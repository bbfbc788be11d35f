"""Every workflow of the monorepo: per-backend tests, cross-backend parity, lint, demo, bench.

`nox` runs tests_torch, tests_flax, parity and lint. Installs are pinned by constraints.txt.
"""

from __future__ import annotations

import json
from pathlib import Path

import nox

nox.options.sessions = ["tests_torch", "tests_flax", "parity", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# --no-compile: pip byte-compiles every module it installs (a minute for torch alone); imports compile what they use
PIN = ("--no-compile", "-c", "constraints.txt")
CORE = "./packages/vit_parity"
TORCH = "./packages/vit_torch"
FLAX = "./packages/vit_flax"
# Two pytest workers: XLA and inductor compile on one core each, so the test runs use both cores.
PYTEST = ("pytest", "-n", "2", "--dist", "worksteal")
# The test runs compile hundreds of small models and run each a few times, so compilation is most of their time:
# XLA's backend (LLVM) optimizations cost half of it and buy nothing there, and XLA:CPU's older fusion emitters
# compile in about half the time of its MLIR ones (vit_flax's tests: 562 s -> 289 s with both pytest workers).
FAST_COMPILE = {"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"}


def assert_absent(session: nox.Session, *modules: str) -> None:
    """Fail the session if any of ``modules`` can be imported in its venv."""
    code = (
        "import importlib.util, sys; "
        f"found = [m for m in {modules!r} if importlib.util.find_spec(m)]; "
        "sys.exit(f'unexpected packages in this venv: {found}' if found else 0)"
    )
    session.run("python", "-c", code, silent=True)


@nox.session
def tests_torch(session: nox.Session) -> None:
    """vit_torch's tests in a venv without JAX."""
    session.install(*PIN, CORE, TORCH, "pytest", "pytest-xdist")
    assert_absent(session, "jax", "flax")
    session.run(*PYTEST, "packages/vit_torch/tests", *session.posargs)


@nox.session
def tests_flax(session: nox.Session) -> None:
    """vit_flax's tests in a venv without torch."""
    session.install(*PIN, CORE, FLAX, "pytest", "pytest-xdist")
    assert_absent(session, "torch")
    session.run(*PYTEST, "packages/vit_flax/tests", *session.posargs, env=FAST_COMPILE)


@nox.session
def parity(session: nox.Session) -> None:
    """The shared core's tests and the cross-backend parity tests (every spec case, every block)."""
    session.install(*PIN, f"{CORE}[data,video,medical,plot,tensorboard]", TORCH, FLAX, "pytest", "pytest-xdist")
    session.run(*PYTEST, "packages/vit_parity/tests", *session.posargs, env=FAST_COMPILE)


@nox.session
def check(session: nox.Session) -> None:
    """Install both backends and run `vit list` and `vit check` (extra arguments: architectures)."""
    session.install(*PIN, CORE, TORCH, FLAX)
    session.run("vit", "list")
    session.run("vit", "check", *(session.posargs or ["--all"]))


# The demo's models and schedules: small enough for a 2-core CPU, measured to clear 80 % (ViViT) and 90 % (ViT).
DEMO_VIVIT = (
    "--arch", "vivit", "--data", "digits-video", "--frames", "4", "--image-size", "16", "--patch-size", "4",
    "--frame-patch-size", "1", "--dim", "64", "--depth", "2", "--heads", "4", "--epochs", "20", "--batch-size", "32",
    "--lr", "3e-3", "--shift", "1",
)  # fmt: skip
DEMO_VIT = (
    "--arch", "vit", "--data", "digits", "--image-size", "16", "--patch-size", "4", "--dim", "64", "--depth", "2",
    "--heads", "4", "--epochs", "10", "--batch-size", "32", "--lr", "3e-3",
)  # fmt: skip


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: train a ViViT on digits-video in torch, convert it to flax, compare and evaluate both.

    Also trains a ViT on the digits images. Prints a summary and fails below 80 % (ViViT) or 90 % (ViT)
    held-out accuracy, or if the two backends disagree on any held-out prediction.
    """
    session.install(*PIN, f"{CORE}[data]", TORCH, FLAX)
    out = Path(session.create_tmp()) / "demo"
    results = {}
    for name, args, floor in (("vivit", DEMO_VIVIT, 0.8), ("vit", DEMO_VIT, 0.9)):
        run = out / name
        session.run("vit", "train", "--backend", "torch", *args, "--out", str(run), "--overwrite")  # a rerun
        report, data, converted = out / f"{name}-eval.json", args[args.index("--data") + 1], out / f"{name}-flax"
        session.run("vit", "convert", str(run / "checkpoint"), "--to", "flax", "-o", str(converted))
        # the flax-layout checkpoint, evaluated in both backends on the held-out split it was trained without
        eval_args = ("--data", data, "--backend", "both", "--json", str(report))
        session.run("vit", "eval", str(converted), *eval_args, success_codes=[0, 1])  # 1: the backends disagree
        metrics = json.loads((run / "metrics.json").read_text())
        results[name] = (json.loads(report.read_text()), metrics, floor)

    print("\nsummary (held-out samples never seen in training)")
    failed = []
    for name, (report, metrics, floor) in results.items():
        acc = {b: r["accuracy"] for b, r in report["backends"].items()}
        agree = report["agreement"]
        print(
            f"  {name} on {report['data']}: {report['samples']} samples, trained in torch in "
            f"{metrics['eval']['train_seconds']:.0f}s; accuracy torch {acc['torch']:.4f}, flax {acc['flax']:.4f}; "
            f"same prediction on {agree['same_predictions']}/{agree['samples']} "
            f"(max |logit diff| {agree['max_abs_logit_diff']:.1e})"
        )
        if min(acc.values()) < floor:
            failed.append(f"{name} accuracy {min(acc.values()):.4f} < {floor}")
        if agree["same_predictions"] != agree["samples"]:
            failed.append(f"{name}: the backends disagree")
    print(f"  checkpoints and metrics: {out}")
    if failed:
        session.error("; ".join(failed))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install(*PIN, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


BENCH_PIN = ("--no-compile", "-c", "bench/constraints.txt")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput and peak memory against vit-pytorch and timm (extra arguments go to bench/compare.py).

    Runs in its own venv pinned by bench/constraints.txt (torch 2.14.1 + torchvision for the reference
    libraries); writes bench/results.md and bench/results.json, then runs bench/navit.py (bench/navit.json)
    and prints bench/xla_memory.py's figures. With `--archs NAME,...` (or `--archs all`) it runs only
    bench/compare.py's per-architecture table (bench/archs.md and bench/archs.json).
    """
    session.install(*BENCH_PIN, "torch", "torchvision", "vit-pytorch", "timm", "jax", "jaxlib", "flax", "optax")
    session.install(*BENCH_PIN, "-e", CORE, "-e", TORCH, "-e", FLAX)  # editable: measure the working tree
    session.run("python", "bench/compare.py", *session.posargs)
    if any(arg == "--archs" or arg.startswith("--archs=") for arg in session.posargs):
        return  # the per-architecture table only
    session.run("python", "bench/navit.py", "--backends", "torch,flax", "--json", "bench/navit.json")  # NaViT
    for size, batch in (("224", "8"), ("512", "2")):  # the temporaries XLA plans for a flax training step
        session.run("python", "bench/xla_memory.py", "--size", size, "--batch", batch)


@nox.session
def bench_navit(session: nox.Session) -> None:
    """NaViT packing: the packer's fill and packed vs padded forward passes (extra arguments go to bench/navit.py)."""
    session.install(*PIN, CORE, TORCH, FLAX)
    args = session.posargs or ["--backends", "torch,flax", "--json", "bench/navit.json"]
    session.run("python", "bench/navit.py", *args)


@nox.session
def reference(session: nox.Session) -> None:
    """The reference check: vit-pytorch's own models, their weights imported (`vit import vit-pytorch`), give the
    same logits as vit_torch (packages/vit_parity/tests_reference; extra arguments go to pytest).

    Not a default session: it needs vit-pytorch, in its own venv pinned by bench/constraints.txt (torch 2.14.1 +
    torchvision, as the bench session). The same venv holds the third-party transformers of the seed's
    efficient-attention examples (nystrom-attention, x-transformers), which vit_torch's efficient tests then run.
    """
    session.install(*BENCH_PIN, "torch", "torchvision", "vit-pytorch", "nystrom-attention", "x-transformers", "pytest")
    session.install(*BENCH_PIN, "-e", CORE, "-e", TORCH)
    session.run("pytest", "packages/vit_parity/tests_reference", *session.posargs)
    if not session.posargs:
        session.run("pytest", "packages/vit_torch/tests/test_efficient.py", "-k", "seed")
