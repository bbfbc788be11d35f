"""Training throughput of `vit train`'s speed switches: --threads, --precision bf16, --compile, per backend.

Every contender is one `vit train` process on the same data and model; the contenders run interleaved, round
after round, and each is reported by the median over rounds of its samples per second in the epochs after the
first (the first holds the compilation: XLA's, or torch.compile's). Ratios are to torch fp32 on all threads.

    python bench/train_switches.py                       # the demo's ViT on digits, 3 rounds
    python bench/train_switches.py --rounds 5 --epochs 4 --out bench/train_switches
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = [
    "--arch", "vit", "--data", "digits", "--image-size", "16", "--patch-size", "4", "--dim", "64", "--depth", "2",
    "--heads", "4", "--batch-size", "32", "--lr", "3e-3", "--quiet",
]  # fmt: skip
CONTENDERS = {
    "torch fp32": ["--backend", "torch"],
    "torch fp32, --threads 1": ["--backend", "torch", "--threads", "1"],
    "torch bf16": ["--backend", "torch", "--precision", "bf16"],
    "torch --compile": ["--backend", "torch", "--compile"],
    "flax fp32": ["--backend", "flax"],
    "flax fp32, --threads 1": ["--backend", "flax", "--threads", "1"],
    "flax bf16": ["--backend", "flax", "--precision", "bf16"],
}


def run(name: str, epochs: int, folder: Path) -> float:
    """Samples per second of one `vit train` run in its epochs after the first."""
    out = folder / name.replace(" ", "_").replace(",", "").replace("-", "")
    argv = [*MODEL, *CONTENDERS[name], "--epochs", str(epochs), "--out", str(out), "--overwrite"]
    code = "import sys; from vit_parity.tools.cli import main; sys.exit(main())"
    subprocess.run([sys.executable, "-c", code, "train", *argv], check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    samples = metrics["data"]["train_samples"] // 32 * 32
    return statistics.median(samples / e["seconds"] for e in metrics["epochs"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated contenders")
    parser.add_argument("--out", help="also write PREFIX.md and PREFIX.json")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CONTENDERS)
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names:
                rates[name].append(run(name, args.epochs, Path(tmp)))
                print(f"round {r + 1}: {name}: {rates[name][-1]:.0f} samples/s", file=sys.stderr)
    base = statistics.median(rates[names[0]])
    lines = [
        f"`python bench/train_switches.py --rounds {args.rounds} --epochs {args.epochs}` ({os.cpu_count()} CPUs; "
        "the demo's ViT on digits, batch 32; medians over rounds of the epochs after the first)",
        "",
        f"| contender | samples/s | vs {names[0]} |",
        "| --- | --- | --- |",
    ]
    for name in names:
        rate = statistics.median(rates[name])
        lines.append(f"| {name} | {rate:.0f} | {rate / base:.2f}x |")
    print("\n".join(lines))
    if args.out:
        Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
        Path(f"{args.out}.json").write_text(json.dumps(rates, indent=2) + "\n")


if __name__ == "__main__":
    main()
