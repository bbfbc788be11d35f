"""The per-architecture benchmark: every registry architecture that vit-pytorch also has, at one moderate config.

``python bench/compare.py --archs vit,cct_3d [--rounds 5] [--no-memory] [--only vit_torch,vit-pytorch]``
(``--archs all`` for every entry of :data:`ARCHS`), or ``nox -s bench -- --archs all``. Writes
``bench/archs.md`` and ``bench/archs.json`` (``--out PREFIX`` to change).

Each architecture runs three contenders: ``vit_torch.<arch>``, the reference ``vit-pytorch.<arch>`` (its
class built with the same keyword arguments) and ``vit_flax.<arch>``. The protocol is compare.py's, run
by compare.py's own code (its runners, interleaved rounds, medians, memory-probe subprocesses): this
module only describes the configs, builds the models and their inputs, and writes the table. The table
has one row per architecture, ratios of medians taken within the run: throughput ratios are images per
second of the first over the second (above 1: the first is faster), the memory ratio is the training
step's peak of the first over the second (below 1: the first needs less).

Configs: the seed README example of each architecture, scaled down to run in seconds on a 2-core CPU:
64x64 images and 8-frame 64x64 clips (CCT 64x128 images, CCT-3D 8-frame 32x32 clips: their convolutional
tokenizers cost more than the transformer), ViT-Ti widths (dim 192, 3 heads of 64, MLP 768) over 6
blocks, batch 4, 1000 classes, with the example's other options (pooling, tokenizer, depths, ...).
Regularizers are off, as in compare.py's configs (dropout, layer dropout, stochastic depth, token
dropout): they leave the architecture's work as it is, make a step's cost random where the reference
skips work (CaiT's layer dropout, NaViT's token dropout) and double XLA's compile time. One exception:
CCT-3D keeps attention dropout 0.1 in all three, since the reference's CCT-3D fixes it.
NaViT classifies a list of 4 same-size images, two to a sequence: torch (both libraries) takes the
list of lists, vit_flax the arrays of ``vit_parity.core.packing.pack_images`` with the same grouping.

Adding an architecture is one :class:`Arch` entry in :data:`ARCHS`, under its registry name.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from peak import flop_cells, gemm_decisions, gemm_line

LIBS = ("vit_torch", "vit-pytorch", "vit_flax")
NUM_CLASSES = 1000  # compare.py's labels are drawn from this many classes
DROP = object()  # in Arch.ref_kwargs: leave the argument out of the reference's constructor


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture's benchmark config. Also a compare.py ``Config`` (name, title, batch, shape,
    contenders), so that compare.py's runners and memory probes take it as they are."""

    name: str  # the registry name (vit_parity.core.spec)
    kwargs: Mapping[str, Any]  # constructor arguments of vit_torch, vit_flax and the reference
    shape: tuple[int, ...]  # one sample, channels-first, without the batch axis: (c, h, w) or (c, t, h, w)
    batch: int = 4
    # The reference class, when it is not the vit_torch path with vit_pytorch for vit_torch.
    ref: str | None = None
    # Reference arguments that differ from ``kwargs`` (a value replaces, DROP removes).
    ref_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # NaViT: the batch becomes a list of images, this many to a sequence (0: the model takes the batch array).
    images_per_seq: int = 0
    # Model arguments built first (the efficient ViT's transformer): registry name and constructor arguments.
    models: Mapping[str, tuple[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)

    @property
    def title(self) -> str:
        sides = "x".join(map(str, self.shape[-2:]))
        what = f"{self.shape[1]}-frame {sides} clips" if len(self.shape) == 4 else f"{sides} images"
        if self.images_per_seq:
            what += f", {self.images_per_seq} to a sequence"
        return f"{self.name}: {what}, batch {self.batch}"

    @property
    def contenders(self) -> tuple[str, ...]:
        return tuple(f"{lib}.{self.name}" for lib in LIBS)

    def reference_kwargs(self) -> dict[str, Any]:
        out = dict(self.kwargs)
        for key, value in self.ref_kwargs.items():
            if value is DROP:
                out.pop(key, None)
            else:
                out[key] = value
        return out


# ViT-Ti widths over 6 blocks.
_DIMS = dict(num_classes=NUM_CLASSES, dim=192, depth=6, heads=3, mlp_dim=768, dim_head=64)
_IMAGE = (3, 64, 64)
_CLIP = (3, 8, 64, 64)
_TUBELETS = dict(image_size=64, frames=8, image_patch_size=16, frame_patch_size=2)  # 4 x 4 x 4 = 64 tokens
_CONV_TOKENIZER = dict(
    embedding_dim=192, n_conv_layers=2, kernel_size=7, stride=2, padding=3, pooling_kernel_size=3,
    pooling_stride=2, pooling_padding=1, num_layers=6, num_heads=3, mlp_ratio=3.0, num_classes=NUM_CLASSES,
    positional_embedding="learnable", stochastic_depth_rate=0.0,
)  # fmt: skip
# two branches of 8x8 (64 tokens) and 16x16 patches (16 tokens); the README example's encoder depths, 2 of its 4 blocks
_CROSS_VIT = dict(
    image_size=64, num_classes=NUM_CLASSES, depth=2, sm_dim=96, sm_patch_size=8, sm_enc_depth=2, sm_enc_heads=3,
    sm_enc_mlp_dim=384, lg_dim=192, lg_patch_size=16, lg_enc_depth=3, lg_enc_heads=3, lg_enc_mlp_dim=768,
    cross_attn_depth=2, cross_attn_heads=3, dropout=0.0, emb_dropout=0.0,
)  # fmt: skip

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("vit", dict(_DIMS, image_size=64, patch_size=8), _IMAGE),  # 64 tokens + cls
        Arch("simple_vit", dict(_DIMS, image_size=64, patch_size=8), _IMAGE),
        Arch("deepvit", dict(_DIMS, image_size=64, patch_size=8), _IMAGE),
        # the student's call (the class head); the wrapper's loss adds a teacher's forward pass and one more token
        Arch("distill", dict(_DIMS, image_size=64, patch_size=8), _IMAGE, ref="vit_pytorch.distill:DistillableViT"),
        Arch("cait", dict(_DIMS, image_size=64, patch_size=8, cls_depth=2), _IMAGE),
        Arch("xcit", dict(_DIMS, image_size=64, patch_size=8, cls_depth=2), _IMAGE),
        Arch("t2t", dict(_DIMS, image_size=64, t2t_layers=((7, 4), (3, 2), (3, 2))), _IMAGE),  # 256 -> 64 -> 16 tokens
        Arch("cross_vit", _CROSS_VIT, _IMAGE),
        Arch("cct", dict(_CONV_TOKENIZER, img_size=(64, 128), attention_dropout=0.0), (3, 64, 128)),  # 4x8 tokens
        Arch("vit_3d", dict(_DIMS, **_TUBELETS), _CLIP),
        Arch("simple_vit_3d", dict(_DIMS, **_TUBELETS), _CLIP),
        Arch(
            "vivit",
            dict({k: v for k, v in _DIMS.items() if k != "depth"}, **_TUBELETS, spatial_depth=3, temporal_depth=3),
            _CLIP,
            ref="vit_pytorch.vivit:ViViT",
        ),
        # CIFAR-sized frames: the 3-D convolutions cost several times the transformer at 64x64. The reference
        # fixes attention dropout at 0.1 (it takes no attention_dropout), so all three keep that default.
        Arch("cct_3d", dict(_CONV_TOKENIZER, img_size=32, num_frames=8, frame_kernel_size=3), (3, 8, 32, 32)),
        Arch("navit", dict(_DIMS, image_size=64, patch_size=8), _IMAGE, images_per_seq=2),
        # the seed's schedule: every patch in the first block, then half as many in each
        Arch("ats_vit", dict(_DIMS, image_size=64, patch_size=8, max_tokens_per_depth=(64, 32, 16, 8, 4, 2)), _IMAGE),
        Arch("vit_with_patch_merger", dict(_DIMS, image_size=64, patch_size=8, patch_merge_num_tokens=8), _IMAGE),
        Arch("vit_for_small_dataset", dict(_DIMS, image_size=64, patch_size=8), _IMAGE),
        Arch("parallel_vit", dict(_DIMS, image_size=64, patch_size=8, depth=3), _IMAGE),  # 2 branches: 6 blocks' work
        Arch("learnable_memory_vit", dict(_DIMS, image_size=64, patch_size=8), _IMAGE),  # the base ViT's call
        Arch(
            "efficient",
            dict(image_size=64, patch_size=8, num_classes=NUM_CLASSES, dim=192),
            _IMAGE,
            models={"transformer": ("efficient_transformer", {k: v for k, v in _DIMS.items() if k != "num_classes"})},
        ),
    )
}

# The reference's class for a registry model argument (the efficient ViT's transformer).
REFERENCE_MODELS = {"efficient_transformer": "vit_pytorch.vit:Transformer"}


def get(name: str) -> Arch:
    """The benchmark config of architecture ``name``; the error lists the known names."""
    try:
        return ARCHS[name]
    except KeyError:
        raise KeyError(f"no benchmark config for {name!r}; known: {', '.join(ARCHS)}") from None


def select(names: str) -> list[Arch]:
    """``all`` or comma-separated registry names."""
    if names.strip() == "all":
        return list(ARCHS.values())
    return [get(n.strip()) for n in names.split(",") if n.strip()]


# --------------------------------------------------------------------------------------------- builders


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _spec(arch: Arch) -> Any:
    from vit_parity.core import spec

    return spec.get(arch.name)


def class_path(contender: str, arch: Arch) -> str:
    lib = contender.split(".")[0]
    if lib == "vit-pytorch":
        return arch.ref or _spec(arch).torch.replace("vit_torch.", "vit_pytorch.", 1)
    return _spec(arch).path("torch" if lib == "vit_torch" else "flax")


def available(contender: str, arch: Arch) -> str | None:
    """None when the contender can be built here, else the reason it cannot."""
    try:
        _load(class_path(contender, arch))
    except (ImportError, AttributeError, KeyError) as err:
        return f"not available: {err}"
    return None


def _model_class(name: str, contender: str) -> type:
    from vit_parity.core import spec

    lib = contender.split(".")[0]
    if lib == "vit-pytorch":
        return _load(REFERENCE_MODELS[name])
    return spec.get(name).load_class("torch" if lib == "vit_torch" else "flax")


def build_torch(contender: str, arch: Arch) -> Any:
    cls = _load(class_path(contender, arch))
    models = {k: _model_class(name, contender)(**cfg) for k, (name, cfg) in arch.models.items()}
    return cls(**(arch.reference_kwargs() if contender.startswith("vit-pytorch") else arch.kwargs), **models)


def build_flax(contender: str, arch: Arch) -> Any:
    from flax import nnx

    models = {k: _model_class(name, contender)(**cfg, rngs=nnx.Rngs(1)) for k, (name, cfg) in arch.models.items()}
    return _load(class_path(contender, arch))(**arch.kwargs, **models, rngs=nnx.Rngs(0))


def _groups(arch: Arch) -> list[list[int]]:
    k = arch.images_per_seq
    return [list(range(i, min(i + k, arch.batch))) for i in range(0, arch.batch, k)]


def torch_inputs(arch: Arch, x: Any) -> Any:
    """The torch model's input for the batch tensor ``x``: ``x`` itself, or NaViT's list of lists of images."""
    if not arch.images_per_seq:
        return x
    return [[x[i] for i in group] for group in _groups(arch)]


@dataclasses.dataclass(frozen=True)
class PerImage:
    """Reads one image's logits per sequence slot (``(num_seqs, max_images, classes)`` -> ``(n, classes)``,
    input order); the training step's ``feed`` (compares by value, so the compiled step is reused)."""

    seq: tuple[int, ...]
    slot: tuple[int, ...]

    def logits(self, out: Any) -> Any:
        return out[np.asarray(self.seq), np.asarray(self.slot)]


def flax_inputs(arch: Arch, x: np.ndarray) -> tuple[Any, PerImage | None]:
    """The flax model's input for the channels-first batch ``x`` and the training step's ``feed``: the
    channels-last batch and None, or NaViT's packed arrays (a tuple) and how to read per-image logits."""
    import jax

    last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    if not arch.images_per_seq:
        return jax.device_put(last), None
    from vit_parity.core.packing import pack_images

    patch = arch.kwargs["patch_size"]
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    groups = _groups(arch)
    tokens = arch.images_per_seq * int(np.prod([s // p for s, p in zip(x.shape[2:], patch)]))
    packed = pack_images(
        list(last), patch_size=patch, group_max_seq_len=tokens, max_images=arch.images_per_seq,
        num_seqs=len(groups), groups=groups,
    )  # fmt: skip
    seq, slot = packed.packing.slots()
    return tuple(jax.device_put(a) for a in packed.arrays), PerImage(tuple(seq.tolist()), tuple(slot.tolist()))


# ---------------------------------------------------------------------------------------------- report

# (label, numerator library, denominator library)
PAIRS = (("torch/ref", "vit_torch", "vit-pytorch"), ("flax/torch", "vit_flax", "vit_torch"))


def medians(result: dict) -> dict[str, dict[str, float]]:
    """Per contender: median seconds and images per second of each mode, and the peak MiB of each step."""
    out: dict[str, dict[str, float]] = {}
    for name, row in result["throughput"].items():
        m = out[name] = {}
        for mode in ("infer", "train"):
            m[f"{mode}_s"] = statistics.median(row[f"{mode}_s"])
            m[f"{mode}_img_s"] = row[f"{mode}_img_s"]
        for mode, mem in result.get("memory", {}).get(name, {}).items():
            m[f"{mode}_peak_mib"] = mem["step_peak_mib"]
    return out


def ratios(arch: Arch, result: dict) -> dict[str, float]:
    """``<pair> infer`` / ``<pair> train``: throughput ratios of the medians (and ``... best``: of each one's
    best round); ``<pair> memory``: training-step peak ratio. Pairs whose contenders did not run are left out."""
    med, thr, out = result["medians"], result["throughput"], {}
    for label, num, den in PAIRS:
        a, b = f"{num}.{arch.name}", f"{den}.{arch.name}"
        if a in thr and b in thr:
            for mode in ("infer", "train"):
                out[f"{label} {mode}"] = med[b][f"{mode}_s"] / med[a][f"{mode}_s"]
                out[f"{label} {mode} best"] = min(thr[b][f"{mode}_s"]) / min(thr[a][f"{mode}_s"])
        if "train_peak_mib" in med.get(a, {}) and "train_peak_mib" in med.get(b, {}):
            out[f"{label} memory"] = med[a]["train_peak_mib"] / med[b]["train_peak_mib"]
    return out


# vit_torch's own rate: GFLOP/s of its median step and the fraction of the run's fp32 GEMM peak
RATE_COLUMNS = ("vit_torch inference GFLOP/s (of peak)", "vit_torch training GFLOP/s (of peak)")

COLUMNS = (
    ("torch/ref infer", "torch/ref inference"),
    ("torch/ref train", "torch/ref training"),
    ("torch/ref memory", "torch/ref training memory"),
    ("flax/torch infer", "flax/torch inference"),
    ("flax/torch train", "flax/torch training"),
    ("flax/torch memory", "flax/torch training memory"),
)


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} threads; torch {meta['torch']}, "
        f"jax {meta['jax']}, flax {meta['flax']}, vit-pytorch {meta['vit_pytorch']}; {meta['rounds']} interleaved "
        f"rounds, medians. Command: `{meta['command']}`.",
        "",
        gemm_line(meta),
        "",
        "Throughput ratios: images per second of the first over the second (above 1: faster). Memory ratios: "
        "peak memory of one training step over the resting model, first over second (below 1: less).",
        "",
        "| architecture | " + " | ".join([*(title for _, title in COLUMNS), *RATE_COLUMNS]) + " |",
        "| --- |" + " ---: |" * (len(COLUMNS) + len(RATE_COLUMNS)),
    ]
    notes = []
    for name, result in results["archs"].items():
        if "error" in result or "ratios" not in result:
            why = result["error"].splitlines()[-1] if "error" in result else "skipped, see below"
            lines.append(f"| {name} | {why} |" + " |" * (len(COLUMNS) + len(RATE_COLUMNS) - 1))
            if result.get("skipped"):
                notes.append(f"{name}: skipped " + "; ".join(f"{c} ({w})" for c, w in result["skipped"].items()))
            continue
        r = result["ratios"]
        torch_row = result["throughput"].get(f"vit_torch.{name}")
        rates = flop_cells(torch_row, name, meta) if torch_row else ["-", "-"]
        cells = [*(f"{r[k]:.2f}" if k in r else "-" for k, _ in COLUMNS), *rates]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if result.get("skipped"):
            notes.append(f"{name}: skipped " + "; ".join(f"{c} ({why})" for c, why in result["skipped"].items()))
    lines += ["", "Configs (constructor arguments shared by the three libraries, batch, input):", ""]
    for result in results["archs"].values():
        cfg = result["config"]
        args = ", ".join(f"{k}={v!r}" for k, v in cfg["kwargs"].items())
        for key, sub in cfg.get("models", {}).items():  # a model argument: its registry name and arguments
            args += f", {key}={sub['arch']}(" + ", ".join(f"{k}={v!r}" for k, v in sub["kwargs"].items()) + ")"
        ref = f"; reference {cfg['ref']}" + (f" with {cfg['ref_kwargs']}" if cfg["ref_kwargs"] else "")
        lines.append(f"- {cfg['title']}: `{args}`{ref}")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _describe_ref(arch: Arch) -> str:
    try:
        return class_path("vit-pytorch.x", arch)
    except KeyError as err:
        return f"unknown: {err}"


def describe(arch: Arch) -> dict:
    return {
        "title": arch.title,
        "batch": arch.batch,
        "shape": list(arch.shape),
        "kwargs": dict(arch.kwargs),
        "ref": _describe_ref(arch),
        "ref_kwargs": {k: ("<dropped>" if v is DROP else v) for k, v in arch.ref_kwargs.items()},
        "images_per_seq": arch.images_per_seq,
        "models": {k: {"arch": name, "kwargs": dict(cfg)} for k, (name, cfg) in arch.models.items()},
    }


# -------------------------------------------------------------------------------------------------- run


def main(args: argparse.Namespace, compare: ModuleType) -> int:
    """Measures ``args.archs`` with compare.py's machinery (``compare``: that module); writes
    ``<args.out>.md`` and ``.json`` after every architecture. Returns 1 if an architecture failed."""

    def log(msg: str) -> None:
        print(msg, flush=True)

    results: dict = {"meta": compare.meta(args), "archs": {}}
    failed = []
    for arch in select(args.archs):
        wanted = [c for c in arch.contenders if not args.only or any(s in c for s in args.only.split(","))]
        skipped = {c: why for c in wanted if (why := available(c, arch))}
        run = [c for c in wanted if c not in skipped]
        log(f"{arch.title}: {', '.join(run)}" + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
        result: dict = {"config": describe(arch), "skipped": skipped}
        if not run:
            results["archs"][arch.name] = result
            continue
        try:
            result["throughput"] = compare.measure_throughput(arch, run, args.rounds, log)
            if not args.no_memory:
                result["memory"] = compare.measure_memory(arch, run, log)
            result["medians"] = medians(result)
            result["ratios"] = ratios(arch, result)
        except Exception:  # one broken architecture must not cost the others' figures
            result = {"config": result["config"], "error": traceback.format_exc()}
            failed.append(arch.name)
            log(result["error"])
        results["archs"][arch.name] = result
        results["meta"]["gemm_decisions"] = gemm_decisions()
        # written after every architecture, so a long run that is cut short still leaves its table
        Path(args.out + ".json").write_text(json.dumps(results, indent=1, default=repr))
        Path(args.out + ".md").write_text(markdown(results))
    print(markdown(results))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
