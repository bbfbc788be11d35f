"""``vit list`` and ``vit check``."""

from __future__ import annotations

import argparse
import sys

from vit_parity.core import spec
from vit_parity.tools.adapters import trains
from vit_parity.tools.cli.common import class_status, installed, table


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name, arch in sorted(spec.REGISTRY.items()):
        t, f = class_status(arch, "torch"), class_status(arch, "flax")
        parity = "checkable" if t == f == "ok" else "needs both backends"
        rows.append((name, t, f, parity, trains(name), str(len(arch.cases)), arch.paper))
    table(("arch", "torch", "flax", "parity", "vit train", "cases", "paper"), rows)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    missing = [b for b in ("torch", "flax") if not installed(b)]
    if missing:
        print(f"vit check needs both backends; install {', '.join('vit_' + b for b in missing)}", file=sys.stderr)
        return 2
    names = sorted(spec.REGISTRY) if args.all or not args.arch else args.arch
    unknown = [n for n in names if n not in spec.REGISTRY]
    if unknown:
        print(f"unknown architecture(s) {unknown}; run `vit list`", file=sys.stderr)
        return 2
    from vit_parity.tools.parity import run_case

    rows, failed = [], 0
    for name in names:
        arch = spec.get(name)
        for case in arch.cases:
            diffs = run_case(arch, case, seed=args.seed, rtol=args.rtol, atol=args.atol)
            ok = all(d.ok for d in diffs)
            failed += not ok
            worst = [d.name for d in diffs if not d.ok]
            rows.append((
                name, case.name, f"{max(d.max_abs for d in diffs):.2e}", f"{max(d.margin for d in diffs):.3g}",
                str(len(diffs) - 1), "ok" if ok else "FAIL " + ", ".join(worst),
            ))  # fmt: skip
    criterion = "|flax - torch| <= atol + rtol * |torch|"
    print(f"flax against torch on the logits and every block's output; a case passes when {criterion} elementwise")
    table(("arch", "case", "max abs", "margin (<= 1 passes)", "blocks", "status"), rows)
    print("margin: the largest |flax - torch| / (atol + rtol * |torch|) over the case's outputs")
    print(
        f"{criterion} elementwise, rtol={args.rtol:g} atol={args.atol:g}: {len(rows) - failed} passed, {failed} failed"
    )
    return 1 if failed else 0
