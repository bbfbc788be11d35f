"""NaViT on a mixed-resolution workload: how full the packer fills its sequences, and what packing saves.

``python bench/navit.py [--images 512] [--min-side 32] [--max-side 256] [--patch 8] [--group-max-seq-len 1024]
[--rounds 3] [--backends torch,flax] [--json PATH]``, or ``nox -s bench_navit`` (both backends, writes
bench/navit.json).

Workload: ``--images`` images (3 channels) whose height and width are drawn independently and uniformly
from ``--min-side`` to ``--max-side`` in steps of the patch size (seeded).

- Fill: the fraction of real tokens when the packer (``vit_parity.core.packing.pack``, first-fit decreasing)
  groups the images into sequences of ``--group-max-seq-len`` tokens, against padding every image to
  the largest size (``--max-side`` squared), one image a sequence.
- Speed: the same model (eval mode, no gradients) classifies the whole workload twice per round: packed
  (the packer's sequences, ``--seqs-per-call`` sequences a forward call) and padded (every image
  zero-padded to ``--max-side`` squared, one image a sequence, as many sequences a call). Rounds alternate
  which goes first; the figures are medians over rounds and the speed-up is their ratio, within one run.
  torch runs ``vit_torch.na_vit.NaViT`` (masked attention); flax runs ``vit_flax.na_vit.NaViT`` through
  one jitted function: both ways use the same static shape ``(seqs_per_call, group_max_seq_len)``, so
  flax compiles once and the padded way simply needs more calls. ``--nested`` also times the torch
  nested-tensor model (slow on CPU: torch's jagged attention falls back to a per-sequence math kernel).
  ``--threads`` (default 1) sets torch's and XLA's intra-op threads: on a shared machine, threads that
  wait for each other make timings slow and erratic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vit_parity.core import packing


def workload(n: int, min_side: int, max_side: int, patch: int, seed: int) -> list[np.ndarray]:
    """``n`` channels-first float32 images with sides drawn from ``min_side..max_side`` in steps of ``patch``."""
    rng = np.random.default_rng(seed)
    sides = rng.integers(min_side // patch, max_side // patch + 1, size=(n, 2)) * patch
    return [rng.standard_normal((3, int(h), int(w)), dtype=np.float32) for h, w in sides]


def pad_to(image: np.ndarray, side: int) -> np.ndarray:
    c, h, w = image.shape
    out = np.zeros((c, side, side), np.float32)
    out[:, :h, :w] = image
    return out


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def timed_rounds(ways: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Each round runs every way once, in an order that rotates from round to round."""
    names = list(ways)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}/{rounds} {name}: {times[name][-1]:.2f} s", flush=True)
    return times


def bench_torch(args: argparse.Namespace, cfg: dict, images: list[np.ndarray], layout: packing.Packing) -> dict:
    import torch

    from vit_torch.na_vit import NaViT
    from vit_torch.na_vit_nested_tensor import NaViT as NestedNaViT

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = NaViT(**cfg).eval()
    tensors = [torch.from_numpy(im) for im in images]
    packed_calls = [[[tensors[i] for i in g] for g in call] for call in chunks(list(layout.groups), args.seqs_per_call)]
    padded = [torch.from_numpy(pad_to(im, args.max_side)) for im in images]
    padded_calls = [[[im] for im in call] for call in chunks(padded, args.seqs_per_call)]

    def run(calls: list) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode():
                for call in calls:
                    model(call)

        return go

    ways = {"packed": run(packed_calls), "padded": run(padded_calls)}
    if args.nested:
        nested = NestedNaViT(**cfg).eval()
        nested.load_state_dict(model.state_dict())

        def go_nested() -> None:
            with torch.inference_mode():
                for call in chunks(tensors, args.seqs_per_call * 4):
                    nested(call)

        ways["nested"] = go_nested
    with torch.inference_mode():  # warm-up: allocator, kernels
        model(packed_calls[0])
        model(padded_calls[0])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return summarize(timed_rounds(ways, args.rounds))


def bench_flax(args: argparse.Namespace, cfg: dict, images: list[np.ndarray], layout: packing.Packing) -> dict:
    import jax
    from flax import nnx

    from vit_flax.na_vit import NaViT

    model = NaViT(**cfg, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, *arrays: nnx.merge(graphdef, state)(*arrays))
    last = [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in images]
    shape = dict(group_max_seq_len=args.group_max_seq_len, num_seqs=args.seqs_per_call)
    m = layout.max_images
    packed = [
        model.pack([last[i] for g in call for i in g], groups=_renumber(call), max_images=m, **shape).arrays
        for call in chunks(list(layout.groups), args.seqs_per_call)
    ]
    padded = []
    for call in chunks(images, args.seqs_per_call):
        big = [pad_to(im, args.max_side).transpose(1, 2, 0) for im in call]
        padded.append(model.pack(big, groups=[[i] for i in range(len(call))], max_images=m, **shape).arrays)

    def run(calls: list) -> Callable[[], None]:
        def go() -> None:
            for arrays in calls:
                out = forward(state, *arrays)
            out.block_until_ready()

        return go

    start = time.perf_counter()
    forward(state, *packed[0]).block_until_ready()
    compile_s = time.perf_counter() - start
    forward(state, *padded[0]).block_until_ready()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), compiled once in {compile_s:.1f} s")
    result = summarize(timed_rounds({"packed": run(packed), "padded": run(padded)}, args.rounds))
    result["compile_s"] = compile_s
    return result


def _renumber(groups: list[tuple[int, ...]]) -> list[list[int]]:
    """Groups of input indices as groups of positions in the concatenated list of their images."""
    out, k = [], 0
    for g in groups:
        out.append(list(range(k, k + len(g))))
        k += len(g)
    return out


def summarize(times: dict[str, list[float]]) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"rounds_s": times, "median_s": med, "speedup": med["padded"] / med["packed"]}
    if "nested" in med:
        out["nested_speedup"] = med["padded"] / med["nested"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--min-side", type=int, default=32)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--group-max-seq-len", type=int, default=1024)
    parser.add_argument("--seqs-per-call", type=int, default=8, help="sequences per forward call, both ways")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dim-head", type=int, default=16)
    parser.add_argument("--mlp-dim", type=int, default=64)
    parser.add_argument("--backends", default="torch", help="comma-separated: torch, flax (flax adds ~4 min here)")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads of torch and XLA (0: their defaults); on a shared "
        "machine one thread a process times far more steadily than threads that wait for each other",
    )  # fmt: skip
    parser.add_argument("--nested", action="store_true", help="also time the torch nested-tensor model")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    if args.threads == 1:  # before JAX is imported
        os.environ["XLA_FLAGS"] = " ".join(
            [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
        ).strip()

    cfg = dict(
        image_size=args.max_side, patch_size=args.patch, num_classes=1000, dim=args.dim, depth=args.depth,
        heads=args.heads, dim_head=args.dim_head, mlp_dim=args.mlp_dim,
    )  # fmt: skip
    images = workload(args.images, args.min_side, args.max_side, args.patch, args.seed)
    lengths = [im.shape[1] * im.shape[2] // args.patch**2 for im in images]
    layout = packing.pack(lengths, args.group_max_seq_len)
    padded_len = (args.max_side // args.patch) ** 2
    fill = {
        "packed": layout.fill,
        "padded_to_largest": sum(lengths) / (len(images) * padded_len),
        "sequences_packed": len(layout.groups),
        "sequences_padded": len(images),
        "tokens": sum(lengths),
    }
    print(
        f"{args.images} images, sides {args.min_side}..{args.max_side} step {args.patch} (seed {args.seed}): "
        f"{fill['tokens']} tokens of {args.patch}x{args.patch} patches"
    )
    print(
        f"packer fill at group_max_seq_len {args.group_max_seq_len}: {layout.fill:.2%} "
        f"({len(layout.groups)} sequences); padding every image to {args.max_side}x{args.max_side}: "
        f"{fill['padded_to_largest']:.2%} ({len(images)} sequences of {padded_len})"
    )
    results: dict = {
        "command": " ".join(["python", "bench/navit.py", *(argv if argv is not None else sys.argv[1:])]),
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "model": cfg,
        "fill": fill,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
    }
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        print(f"\n{backend}: packed vs padded forward passes over the workload")
        fn = {"torch": bench_torch, "flax": bench_flax}[backend]
        res = fn(args, cfg, images, layout)
        results[backend] = res
        med = res["median_s"]
        line = f"{backend}: packed {med['packed']:.2f} s, padded {med['padded']:.2f} s (medians of {args.rounds})"
        line += f" -> packed is {res['speedup']:.2f}x faster"
        if "nested" in med:
            line += f"; nested {med['nested']:.2f} s"
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
