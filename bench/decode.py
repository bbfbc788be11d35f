"""Decoding a folder of video files up front: load time in one or more processes, and `vit train` speed on it.

``python bench/decode.py [--clips 48] [--frames 16] [--side 64] [--codec mpeg4] [--workers 1,2,default]
[--rounds 3] [--epochs 3] [--batch-size 8] [--threads 1] [--no-train] [--json PATH]`` (needs vit_torch and
``pip install './packages/vit_parity[video]'``).

Workload: ``--clips`` synthetic clips of ``--frames`` frames, ``--side`` pixels square, in two classes (a textured
square drifting right or down over noise), encoded with PyAV (``--codec``: mpeg4 or libx264) into ``.mp4`` files in
a temporary folder; the same clips, decoded once, are also saved as ``.npy`` arrays in a twin folder.

- Load: the wall time of ``data.folder(videos, frames=..., workers=w)`` for each ``--workers`` entry (median over
  ``--rounds``, the loads interleaved; a pool's process start-up included; ``default``: no ``workers``, the
  library's choice), and of ``data.folder(arrays)``.
- Train: ``vit train --arch vivit`` (torch, a tiny model: patch 16, tubelets of 2 frames, dim 64, depth 2,
  4 heads; no held-out split, no ``--workers``) for ``--epochs`` epochs on each folder: steps per second from the
  epochs' own times in metrics.json (the first epoch left out: warm-up), and the command's whole wall time (loading
  included); medians over ``--rounds`` runs of each, alternating which runs first. The folder's files are decoded
  before the first step, so the steps/s should match and only the wall time differ.

``--threads`` (default 1) sets torch's intra-op threads: on a shared machine, threads that wait for each other
make timings slow and erratic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vit_parity.tools import data
from vit_parity.tools.training import write_json


def make_clips(root: Path, clips: int, frames: int, side: int, codec: str, seed: int = 0) -> None:
    """``clips`` clips in ``root/right`` and ``root/down``: a textured square drifting that way over noise."""
    import av

    rng = np.random.default_rng(seed)
    box = side // 4
    for k in range(clips):
        label = ("right", "down")[k % 2]
        path = root / label / f"{k:03d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        texture = rng.integers(120, 256, (box, box, 3), dtype=np.uint8)
        y, x = rng.integers(0, side - box, size=2)
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=16)
            stream.width = stream.height = side
            stream.pix_fmt = "yuv420p"
            for t in range(frames):
                frame = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
                dy, dx = (0, t) if label == "right" else (t, 0)
                yy, xx = (y + dy) % (side - box), (x + dx) % (side - box)
                frame[yy : yy + box, xx : xx + box] = texture
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def save_arrays(videos: Path, arrays: Path, frames: int) -> None:
    """The clips of ``videos``, decoded, as ``.npy`` files in the same class folders under ``arrays``."""
    ds = data.folder(videos, frames=frames, workers=1)
    names = [p for d in sorted(videos.iterdir()) for p in sorted(d.iterdir())]
    for path, x in zip(names, ds.x):
        out = arrays / path.parent.name / (path.stem + ".npy")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, x)


def time_loads(configs: dict[str, tuple[Path, dict[str, object]]], rounds: int) -> dict[str, float]:
    """The median wall time of ``data.folder(folder, **kwargs)`` per config, the configs interleaved in each round."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (folder, kwargs) in configs.items():
            start = time.perf_counter()
            data.folder(folder, **kwargs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def time_train(folder: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    from vit_parity.tools import cli

    argv = [
        "train", "--arch", "vivit", "--backend", "torch", "--data", str(folder), "--frames", str(args.frames),
        "--patch-size", "16", "--frame-patch-size", "2", "--dim", "64", "--depth", "2", "--heads", "4",
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--eval-fraction", "0", "--quiet",
        "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    if cli.main(argv) != 0:
        sys.exit("vit train failed")
    wall = time.perf_counter() - start
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    steps = args.clips // args.batch_size
    seconds = [e["seconds"] for e in epochs[1:]] or [epochs[0]["seconds"]]
    return {"steps_per_s": steps / statistics.median(seconds), "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--codec", default="mpeg4")
    p.add_argument(
        "--workers", default="1,2,default", help="comma-separated process counts to time ('default': none given)"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-train", action="store_true", help="time the loads only")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, object] = {
        "workload": {k: getattr(args, k) for k in ("clips", "frames", "side", "codec", "epochs", "batch_size")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        videos, arrays = Path(tmp) / "videos", Path(tmp) / "arrays"
        make_clips(videos, args.clips, args.frames, args.side, args.codec)
        save_arrays(videos, arrays, args.frames)
        configs = {
            f"mp4, workers={w}": (videos, {"frames": args.frames, "workers": None if w == "default" else int(w)})
            for w in args.workers.split(",")
        }
        load = time_loads({**configs, "npy": (arrays, {})}, args.rounds)
        runs: dict[str, list[dict[str, float]]] = {"mp4": [], "npy": []}
        # alternate which goes first: the first run in a process warms torch up
        for r in range(0 if args.no_train else args.rounds):
            for kind in ("mp4", "npy") if r % 2 == 0 else ("npy", "mp4"):
                folder = videos if kind == "mp4" else arrays
                runs[kind].append(time_train(folder, Path(tmp) / f"run_{kind}_{r}", args))
        train = {
            k: {m: statistics.median(x[m] for x in v) for m in ("steps_per_s", "wall_s")} for k, v in runs.items() if v
        }
    result.update(load_s=load, train=train)
    print(f"{args.clips} clips of {args.frames} frames, {args.side}x{args.side}, {args.codec}")
    for name, seconds in load.items():
        print(f"  load {name:<20} {seconds:7.3f} s")
    for name, r in train.items():
        print(f"  vit train on {name:<4} {r['steps_per_s']:7.2f} steps/s  {r['wall_s']:6.2f} s wall")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
