"""Throughput and peak memory of vit_torch and vit_flax against vit-pytorch and timm, side by side.

Run through ``nox -s bench`` (which builds the venv from bench/constraints.txt), or directly inside that
venv: ``python bench/compare.py [--configs 224,512,clip] [--rounds 5] [--no-memory] [--only NAME]``.
``--archs NAME,... | all`` runs the per-architecture table instead (configs in bench/archs.py, written to
bench/archs.md and bench/archs.json), under the same protocol.

Protocol
- Every contender of a config is built in the same process from the same seeded inputs. Rounds are
  interleaved: each round times every contender once (inference, then a training step), and the order
  rotates from round to round, so a slow spell of the machine hits all of them alike. Reported figures
  are medians over rounds; ratios are taken between medians of the same run.
- Inference: a forward pass without autograd (torch ``inference_mode``; flax a jitted forward).
  Training step: forward, cross-entropy, backward and an AdamW update (torch.optim.AdamW with
  ``fused=True``, optax.adamw; lr 1e-4). Each contender runs one untimed warm-up of each before the
  rounds; for flax the XLA compilation comes first, timed and reported on its own (``compile s``).
- Flax runs through ``jax.jit`` on the ``nnx.split`` state (the NNX performance idiom); the training
  step is ``vit_flax.train.training_step``, the one ``vit_flax.train.fit`` runs (optax AdamW, decay on
  linear and conv weights), and donates its state buffers. Inputs are channels-last for flax, channels-first for torch.
- Peak memory: one fresh subprocess per contender, inference first, then training. Once the model,
  optimizer and inputs exist and one warm-up step of the mode has run (optimizer state allocated,
  flax compiled), the resident-set high-water mark is reset (``/proc/self/clear_refs``), one step runs,
  and the figure is ``VmHWM`` during the step minus the resident set just before it: the memory the
  step needs on top of the resting model and optimizer state (activations, gradients, workspace).
  glibc's mmap threshold is pinned at 128 KiB in those subprocesses, so freed tensors leave the
  resident set instead of lingering in the heap. tracemalloc is not used: it does not see torch's or
  XLA's allocations.

- bf16: contenders named ``...@bf16`` run torch under ``torch.autocast("cpu", torch.bfloat16)`` and flax built
  with ``dtype=bfloat16`` (parameters stay float32 in both).
- How close to the limit: every run starts with bench/peak.py's GEMM micro-benchmark (MKL, oneDNN, XLA, bf16) at
  ViT-S's feed-forward shape, printed at the top of the tables with the paths vit_torch's dense layers chose; each
  row gives its GFLOP/s (the model's matrix-product FLOPs, counted once by torch's FLOP counter, over the median
  step) and the fraction of the fastest path of its precision.

Writes ``<out>.md`` (the tables) and ``<out>.json`` (every measurement) — default bench/results.*
(bench/archs.* with ``--archs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # bench/archs.py, when this file is not run as a script
    sys.path.insert(0, str(HERE))

import archs  # noqa: E402  the per-architecture configs (--archs)
import peak  # noqa: E402  the GEMM peak and FLOP counts

# ViT-S/16: dim 384, depth 12, heads 6 (dim_head 64), mlp 1536.
VIT_S = dict(dim=384, depth=12, heads=6, mlp_dim=1536, dim_head=64)
NUM_CLASSES = 1000
LR = 1e-4


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    title: str
    batch: int
    shape: tuple[int, ...]  # channels-first, without the batch axis: (c, h, w) or (c, t, h, w)
    contenders: tuple[str, ...]


IMAGE = ("vit_torch.ViT", "vit_torch.SimpleViT", "vit-pytorch.ViT", "vit-pytorch.SimpleViT", "timm.vit_small")
IMAGE += ("vit_flax.ViT", "vit_flax.SimpleViT", "vit_torch.ViT@bf16", "vit_flax.ViT@bf16")
CLIP = ("vit_torch.ViT3D", "vit-pytorch.ViT3D", "vit_torch.ViViT", "vit-pytorch.ViViT", "timm.vit_small")
CLIP += ("vit_flax.ViT3D", "vit_flax.ViViT", "vit_torch.ViT3D@bf16")

CONFIGS = {
    c.name: c
    for c in (
        Config("224", "ViT-S/16, 224x224 (197 tokens), batch 8", 8, (3, 224, 224), IMAGE),
        Config("512", "ViT-S/16, 512x512 (1025 tokens), batch 2", 2, (3, 512, 512), IMAGE),
        Config(
            "clip", "ViT-S dims, 16x128x128 clips, 16x16x2 patches (513 tokens), batch 2", 2, (3, 16, 128, 128), CLIP
        ),
    )
}


# --------------------------------------------------------------------------------------------- builders


def _image_kwargs(cfg: Config) -> dict:
    return dict(image_size=cfg.shape[1:], patch_size=16, num_classes=NUM_CLASSES, **VIT_S)


def _clip_kwargs(cfg: Config) -> dict:
    _, t, h, w = cfg.shape
    return dict(image_size=(h, w), image_patch_size=16, frames=t, frame_patch_size=2, num_classes=NUM_CLASSES)


def _vivit_kwargs(cfg: Config) -> dict:
    kw = {k: v for k, v in VIT_S.items() if k != "depth"}
    depth = VIT_S["depth"]  # 8 spatial + 4 temporal blocks: as many as ViT-S has
    return dict(_clip_kwargs(cfg), spatial_depth=depth - depth // 3, temporal_depth=depth // 3, **kw)


def split_precision(contender: str) -> tuple[str, str]:
    """``vit_torch.ViT@bf16`` -> (``vit_torch.ViT``, ``bf16``): torch under CPU autocast, flax built with
    ``dtype=bfloat16`` (parameters stay float32 in both); no suffix: fp32."""
    base, _, precision = contender.partition("@")
    return base, precision or "fp32"


def config_named(name: str) -> Config | archs.Arch:
    """A config of this file, or a per-architecture one of bench/archs.py (both run through the same runners)."""
    return CONFIGS[name] if name in CONFIGS else archs.get(name)


def build_torch_model(contender: str, cfg: Config):
    if isinstance(cfg, archs.Arch):
        return archs.build_torch(contender, cfg)
    lib, name = split_precision(contender)[0].split(".")
    if lib == "timm":
        import timm

        dims = dict(embed_dim=VIT_S["dim"], depth=VIT_S["depth"], num_heads=VIT_S["heads"], num_classes=NUM_CLASSES)
        if len(cfg.shape) == 3:
            return timm.create_model("vit_small_patch16_224", img_size=cfg.shape[1:], **dims)
        # Clips: the same transformer over the same number of tokens and the same patch size (c * 2 frames
        # per patch), laid out as one 128 x 1024 image of 6 channels.
        c, t, h, w = cfg.shape
        return timm.create_model("vit_small_patch16_224", img_size=(h, w * t // 2), in_chans=c * 2, **dims)
    module = {
        ("vit_torch", "ViT"): "vit_torch.vit:ViT",
        ("vit_torch", "SimpleViT"): "vit_torch.simple_vit:SimpleViT",
        ("vit_torch", "ViT3D"): "vit_torch.vit_3d:ViT",
        ("vit_torch", "ViViT"): "vit_torch.vivit:ViT",
        ("vit-pytorch", "ViT"): "vit_pytorch.vit:ViT",
        ("vit-pytorch", "SimpleViT"): "vit_pytorch.simple_vit:SimpleViT",
        ("vit-pytorch", "ViT3D"): "vit_pytorch.vit_3d:ViT",
        ("vit-pytorch", "ViViT"): "vit_pytorch.vivit:ViViT",
    }[(lib, name)]
    cls = _load(module)
    if name == "ViViT":
        return cls(**_vivit_kwargs(cfg))
    if name == "ViT3D":
        return cls(**_clip_kwargs(cfg), **VIT_S)
    return cls(**_image_kwargs(cfg))


def build_flax_model(contender: str, cfg: Config):
    import jax.numpy as jnp
    from flax import nnx

    if isinstance(cfg, archs.Arch):
        return archs.build_flax(contender, cfg)
    base, precision = split_precision(contender)
    name = base.split(".")[1]
    dtype = jnp.bfloat16 if precision == "bf16" else None
    module = {
        "ViT": "vit_flax.vit:ViT",
        "SimpleViT": "vit_flax.simple_vit:SimpleViT",
        "ViT3D": "vit_flax.vit_3d:ViT",
        "ViViT": "vit_flax.vivit:ViT",
    }[name]
    cls = _load(module)
    if name == "ViViT":
        return cls(**_vivit_kwargs(cfg), dtype=dtype, rngs=nnx.Rngs(0))
    if name == "ViT3D":
        return cls(**_clip_kwargs(cfg), **VIT_S, dtype=dtype, rngs=nnx.Rngs(0))
    return cls(**_image_kwargs(cfg), dtype=dtype, rngs=nnx.Rngs(0))


def _load(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def available(contender: str) -> str | None:
    """None when the contender can be built here, else the reason it cannot."""
    lib, name = split_precision(contender)[0].split(".")
    paths = {
        "vit_torch": {"ViT3D": "vit_torch.vit_3d", "ViViT": "vit_torch.vivit"},
        "vit_flax": {"ViT3D": "vit_flax.vit_3d", "ViViT": "vit_flax.vivit"},
    }
    module = paths.get(lib, {}).get(name, {"vit-pytorch": "vit_pytorch", "timm": "timm"}.get(lib, lib))
    try:
        importlib.import_module(module)
    except ImportError as err:
        return f"not importable: {err}"
    return None


# ---------------------------------------------------------------------------------------------- runners


class Runner:
    """One contender on one config: ``infer()`` and ``train()`` each run one blocking step."""

    framework: str
    compile_s: dict[str, float]

    def infer(self) -> None: ...

    def train(self) -> None: ...


class TorchRunner(Runner):
    framework = "torch"

    def __init__(self, contender: str, cfg: Config, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        self.torch = torch
        self.model = build_torch_model(contender, cfg)
        self.x = torch.randn(cfg.batch, *cfg.shape, generator=torch.Generator().manual_seed(seed))
        if contender.startswith("timm") and len(cfg.shape) == 4:
            c, t, h, w = cfg.shape  # the token-matched image: 2 frames stacked as channels, frame pairs side by side
            self.x = self.x.reshape(cfg.batch, c, t // 2, 2, h, w).permute(0, 1, 3, 4, 2, 5)
            self.x = self.x.reshape(cfg.batch, c * 2, h, t // 2 * w).contiguous()
        if isinstance(cfg, archs.Arch):
            self.x = archs.torch_inputs(cfg, self.x)  # NaViT: a list of lists of images
        self.y = torch.randint(0, NUM_CLASSES, (cfg.batch,), generator=torch.Generator().manual_seed(seed))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, fused=True)  # one kernel per tensor
        self.compile_s = {}
        self.bf16 = split_precision(contender)[1] == "bf16"

    def _autocast(self):
        return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.bf16)

    def infer(self) -> None:
        self.model.eval()
        with self.torch.inference_mode(), self._autocast():
            self.model(self.x)

    def train(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


class FlaxRunner(Runner):
    framework = "flax"

    def __init__(self, contender: str, cfg: Config, seed: int = 0) -> None:
        import jax
        import jax.numpy as jnp
        import numpy as np
        from flax import nnx

        from vit_flax.train import training_step

        self.jax = jax
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((cfg.batch, *cfg.shape), dtype=np.float32)
        self.x = jax.device_put(np.moveaxis(x, 1, -1))  # channels-last
        feed = None  # the training step reads the logits from the model's output as they are
        if isinstance(cfg, archs.Arch):
            self.x, feed = archs.flax_inputs(cfg, x)  # NaViT: packed arrays (a tuple) and per-image logits
        self.y = jax.device_put(rng.integers(0, NUM_CLASSES, cfg.batch))
        self.compile_s = {}

        model = build_flax_model(contender, cfg)
        model.eval()
        graphdef, state = nnx.split(model)

        def forward(state: nnx.State, x: jax.Array | tuple[jax.Array, ...]) -> jax.Array:
            model = nnx.merge(graphdef, state)
            return model(*x) if isinstance(x, tuple) else model(x)

        self.eval_state = jax.tree.map(jnp.array, state)  # a copy: the training step donates its buffers
        self._forward = self._compile("infer", jax.jit(forward), state, self.x)

        # the step vit_flax.train.fit runs: jitted, its state donated
        step, self.train_state = training_step(model, weight_decay=1e-4, feed=feed)
        self.lr, self.seed = jnp.float32(LR), jnp.int32(0)
        self._step = self._compile("train", step, self.train_state, self.x, self.y, self.lr, self.seed)

    def _compile(self, what: str, fn: Callable, *args: object) -> Callable:
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        self.compile_s[what] = time.perf_counter() - start
        return compiled

    def infer(self) -> None:
        self._forward(self.eval_state, self.x).block_until_ready()

    def train(self) -> None:
        self.train_state, loss, _ = self._step(self.train_state, self.x, self.y, self.lr, self.seed)
        loss.block_until_ready()


def make_runner(contender: str, cfg: Config) -> Runner:
    return FlaxRunner(contender, cfg) if contender.startswith("vit_flax") else TorchRunner(contender, cfg)


# ------------------------------------------------------------------------------------------ throughput


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_key(contender: str) -> str:
    """What a contender computes, whatever library or precision runs it: ``vit_flax.ViT@bf16`` -> ``ViT``."""
    return split_precision(contender)[0].split(".", 1)[1]


def count_flops(runners: dict[str, Runner], log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """FLOPs per :func:`model_key`, counted on a torch contender of that model (a flax model has its torch
    twin's products); models that only flax runs here are left out."""
    out: dict[str, dict[str, float]] = {}
    for name, runner in runners.items():
        key = model_key(name)
        if isinstance(runner, TorchRunner) and key not in out:
            try:
                out[key] = peak.torch_flops(runner.model, runner.x)
            except Exception as err:  # a count the counter cannot make costs the column, not the run
                log(f"  no FLOP count for {name}: {type(err).__name__}: {err}")
    return out


def measure_throughput(cfg: Config, contenders: list[str], rounds: int, log: Callable[[str], None]) -> dict:
    runners: dict[str, Runner] = {}
    for name in contenders:
        start = time.perf_counter()
        runners[name] = make_runner(name, cfg)
        built = time.perf_counter()
        runners[name].infer()  # warm-up (flax: already compiled)
        runners[name].train()
        log(f"  built {name} in {built - start:.1f}s, warm-up {time.perf_counter() - built:.1f}s")
    samples: dict[str, dict[str, list[float]]] = {n: {"infer": [], "train": []} for n in runners}
    names = list(runners)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            samples[name]["infer"].append(timed(runners[name].infer))
            samples[name]["train"].append(timed(runners[name].train))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {samples[n]['train'][-1]:.2f}s" for n in names))
    flops = count_flops(runners, log)
    out = {}
    for name, runner in runners.items():
        med = {k: statistics.median(v) for k, v in samples[name].items()}
        out[name] = {
            "flops": flops.get(model_key(name)),
            "framework": runner.framework,
            "infer_img_s": cfg.batch / med["infer"],
            "train_img_s": cfg.batch / med["train"],
            "infer_s": samples[name]["infer"],
            "train_s": samples[name]["train"],
            "compile_s": runner.compile_s,
        }
    runners.clear()
    gc.collect()
    return out


# ------------------------------------------------------------------------------------------ peak memory


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def probe(cfg_name: str, contender: str) -> dict:
    """Runs in a fresh subprocess: the resident memory each step needs above the resting model."""
    runner = make_runner(contender, config_named(cfg_name))
    out = {}
    for mode, step in (("infer", runner.infer), ("train", runner.train)):
        step()  # warm-up: optimizer state exists on both sides, lazy initialisation is done
        gc.collect()
        before = _rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident-set high-water mark to the current resident set
        step()
        peak = _rss_kib("VmHWM")
        out[mode] = {"step_peak_mib": (peak - before) / 1024, "rss_before_mib": before / 1024}
    return out


def measure_memory(cfg: Config, contenders: list[str], log: Callable[[str], None]) -> dict:
    out: dict[str, dict] = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024), MALLOC_TRIM_THRESHOLD_=str(128 * 1024))
    for name in contenders:
        cmd = [sys.executable, __file__, "--probe", cfg.name, name]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe {cfg.name} {name} failed:\n{proc.stderr[-3000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  memory {name}: " + ", ".join(f"{m} {v['step_peak_mib']:.0f} MiB" for m, v in out[name].items()))
    return out


# ---------------------------------------------------------------------------------------------- report


PAIRS = [
    ("vit_torch.ViT", ("timm.vit_small", "vit-pytorch.ViT")),
    ("vit_torch.ViT", ("timm.vit_small",)),
    ("vit_torch.ViT", ("vit-pytorch.ViT",)),
    ("vit_torch.SimpleViT", ("vit-pytorch.SimpleViT",)),
    ("vit_flax.ViT", ("vit_torch.ViT",)),
    ("vit_flax.SimpleViT", ("vit_torch.SimpleViT",)),
    *(
        pair
        for name in ("ViT3D", "ViViT")
        for pair in (
            (f"vit_torch.{name}", ("timm.vit_small",)),
            (f"vit_torch.{name}", (f"vit-pytorch.{name}",)),
            (f"vit_flax.{name}", (f"vit_torch.{name}",)),
        )
    ),
    ("vit_torch.ViT@bf16", ("timm.vit_small",)),
    ("vit_torch.ViT@bf16", ("vit_torch.ViT",)),
    ("vit_flax.ViT@bf16", ("vit_flax.ViT",)),
    ("vit_torch.ViT3D@bf16", ("vit_torch.ViT3D",)),
]


def ratios(result: dict) -> dict[str, dict[str, float]]:
    """The ratios the goals are stated in, for whichever contenders ran: throughput of the first over the
    second (over the faster of several), from the medians and from each one's best round."""
    thr = result["throughput"]
    out: dict[str, dict[str, float]] = {}
    for num, dens in PAIRS:
        if num not in thr or not all(d in thr for d in dens):
            continue
        row = {}
        for what in ("infer", "train"):
            for stat, fn in (("median", statistics.median), ("best", min)):
                den = min(fn(thr[d][f"{what}_s"]) for d in dens)  # the faster contender's time
                row[f"{what} {stat}"] = den / fn(thr[num][f"{what}_s"])
        label = f"{num} / " + (f"faster of {' and '.join(dens)}" if len(dens) > 1 else dens[0])
        out[label] = row
    mem = result.get("memory", {})
    for name in ("vit_torch.ViT", "vit_torch.ViT3D", "vit_torch.ViViT"):
        if name in mem and "timm.vit_small" in mem:
            ours, timm = mem[name]["train"]["step_peak_mib"], mem["timm.vit_small"]["train"]["step_peak_mib"]
            out.setdefault(f"{name} / timm.vit_small", {})["training peak memory"] = ours / timm
    return out


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} threads; torch {meta['torch']}, "
        f"jax {meta['jax']}, flax {meta['flax']}, timm {meta['timm']}, vit-pytorch {meta['vit_pytorch']}; "
        f"{meta['rounds']} interleaved rounds, medians. Command: `{meta['command']}`.",
        "",
        peak.gemm_line(meta),
        "",
    ]
    for cfg_name, result in results["configs"].items():
        cfg = CONFIGS[cfg_name]
        lines += [f"**{cfg.title}**", ""]
        lines += [
            "| model | inference img/s | training img/s | inference GFLOP/s (of peak) | training GFLOP/s (of peak) "
            "| inference peak MiB | training peak MiB | compile s |",
            "| --- |" + " ---: |" * 7,
        ]
        for name, row in result["throughput"].items():
            mem = result.get("memory", {}).get(name)
            mem_cells = [f"{mem[m]['step_peak_mib']:.0f}" if mem else "-" for m in ("infer", "train")]
            comp = row["compile_s"]
            comp_cell = f"{comp['infer']:.1f} + {comp['train']:.1f}" if comp else "-"
            lines.append(
                f"| {name} | {row['infer_img_s']:.2f} | {row['train_img_s']:.2f} | "
                + " | ".join([*peak.flop_cells(row, name, meta), *mem_cells])
                + f" | {comp_cell} |"
            )
        for name, why in result.get("skipped", {}).items():
            lines.append(f"| {name} | skipped: {why} |" + " |" * 6)
        r = ratios(result)
        if r:
            cols = ["infer median", "infer best", "train median", "train best", "training peak memory"]
            lines += ["", "| ratio | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
            for label, row in r.items():
                lines.append(f"| {label} | " + " | ".join(f"{row[c]:.2f}" if c in row else "" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def meta(args: argparse.Namespace) -> dict:
    import torch

    versions = {}
    for dist in ("jax", "flax", "timm", "vit-pytorch"):
        try:
            from importlib.metadata import version

            versions[dist.replace("-", "_")] = version(dist)
        except Exception:  # a missing library is reported as such
            versions[dist.replace("-", "_")] = "absent"
    m, k, n = peak.VIT_S_SHAPE
    return {
        "gemm_peak": peak.gemm_peak(m, k, n),
        "gemm_mode": os.environ.get("VIT_TORCH_CPU_GEMM", "auto"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "command": " ".join(["python", "bench/compare.py", *sys.argv[1:]]),
        **versions,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="224,512,clip", help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated substrings: keep matching contenders")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--archs", default="", help="per-architecture table instead of --configs: comma-separated, or all: "
        + ", ".join(archs.ARCHS),
    )  # fmt: skip
    parser.add_argument(
        "--out", default=None, help="path prefix of the .md and .json written (default bench/results, bench/archs)"
    )
    parser.add_argument(
        "--report", nargs="+", metavar="JSON", help="merge results files into <out> instead of measuring"
    )
    parser.add_argument("--probe", nargs=2, metavar=("CONFIG", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out or str(HERE / ("archs" if args.archs else "results"))
    if args.probe:
        print(json.dumps(probe(*args.probe)))
        return
    if args.report:
        merged: dict = {"meta": {}, "configs": {}}
        for path in args.report:
            part = json.loads(Path(path).read_text())
            merged["meta"] = merged["meta"] or part["meta"]
            merged["meta"]["command"] = " + ".join(
                filter(None, [merged["meta"].get("command"), part["meta"]["command"]])
            )
            merged["configs"].update(part["configs"])
        merged["meta"]["command"] = " + ".join(dict.fromkeys(merged["meta"]["command"].split(" + ")))
        Path(args.out + ".json").write_text(json.dumps(merged, indent=1))
        Path(args.out + ".md").write_text(markdown(merged))
        print(markdown(merged))
        return
    if args.archs:
        sys.exit(archs.main(args, sys.modules[__name__]))

    def log(msg: str) -> None:
        print(msg, flush=True)

    results = {"meta": meta(args), "configs": {}}
    for cfg_name in args.configs.split(","):
        cfg = CONFIGS[cfg_name]
        wanted = [c for c in cfg.contenders if not args.only or any(s in c for s in args.only.split(","))]
        skipped = {c: why for c in wanted if (why := available(c))}
        run = [c for c in wanted if c not in skipped]
        log(f"{cfg.title}: {', '.join(run)}" + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
        result = {"throughput": measure_throughput(cfg, run, args.rounds, log), "skipped": skipped}
        if not args.no_memory:
            result["memory"] = measure_memory(cfg, run, log)
        results["configs"][cfg_name] = result
        results["meta"]["gemm_decisions"] = peak.gemm_decisions()
        # written after every config, so a long run that is cut short still leaves its tables
        Path(args.out + ".json").write_text(json.dumps(results, indent=1))
        Path(args.out + ".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
