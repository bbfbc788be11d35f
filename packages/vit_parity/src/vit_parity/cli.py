"""The ``vit`` command: list architectures, check parity, convert checkpoints."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from vit_parity import spec


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
