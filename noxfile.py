"""Every workflow of the monorepo: per-backend tests, cross-backend parity, lint, demo, bench.

`nox` runs tests_torch, tests_flax, parity and lint. Installs are pinned by constraints.txt.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests_torch", "tests_flax", "parity", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PIN = ("-c", "constraints.txt")
CORE = "./packages/vit_parity"
TORCH = "./packages/vit_torch"
FLAX = "./packages/vit_flax"
# Two pytest workers: XLA and inductor compile on one core each, so the test runs use both cores.
PYTEST = ("pytest", "-n", "2")


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
    session.run(*PYTEST, "packages/vit_flax/tests", *session.posargs)


@nox.session
def parity(session: nox.Session) -> None:
    """The shared core's tests and the cross-backend parity tests (every spec case, every block)."""
    session.install(*PIN, f"{CORE}[data]", TORCH, FLAX, "pytest", "pytest-xdist")
    session.run(*PYTEST, "packages/vit_parity/tests", *session.posargs)


@nox.session
def check(session: nox.Session) -> None:
    """Install both backends and run `vit list` and `vit check` (extra arguments: architectures)."""
    session.install(*PIN, CORE, TORCH, FLAX)
    session.run("vit", "list")
    session.run("vit", "check", *(session.posargs or ["--all"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install(*PIN, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


BENCH_PIN = ("-c", "bench/constraints.txt")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput and peak memory against vit-pytorch and timm (extra arguments go to bench/compare.py).

    Runs in its own venv pinned by bench/constraints.txt (torch 2.14.1 + torchvision for the reference
    libraries); writes bench/results.md and bench/results.json.
    """
    session.install(*BENCH_PIN, "torch", "torchvision", "vit-pytorch", "timm", "jax", "jaxlib", "flax", "optax")
    session.install(*BENCH_PIN, "-e", CORE, "-e", TORCH, "-e", FLAX)  # editable: measure the working tree
    session.run("python", "bench/compare.py", *session.posargs)


@nox.session
def bench_navit(session: nox.Session) -> None:
    """NaViT packing: the packer's fill and packed vs padded forward passes (extra arguments go to bench/navit.py)."""
    session.install(*PIN, CORE, TORCH, FLAX)
    args = session.posargs or ["--backends", "torch,flax", "--json", "bench/navit.json"]
    session.run("python", "bench/navit.py", *args)
