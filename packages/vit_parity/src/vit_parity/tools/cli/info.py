"""``vit info``: what this environment runs on: versions, the CPU's vector units, threads, devices and the
path vit_torch's dense layers take on this CPU."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform

from vit_parity.tools.cli.common import installed, table

# CPU features that decide which GEMM kernels run (Linux /proc/cpuinfo flag names)
ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`ISA` it has (empty where /proc/cpuinfo is not readable)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return name, [f for f in ISA if f in flags]


def dense_products(dim: int, mlp_dim: int) -> list[tuple[str, int, int]]:
    """A transformer block's dense layers as ``(name, in, out)``: qkv, attention output, the two of the MLP."""
    return [("to_qkv", dim, 3 * dim), ("to_out", dim, dim), ("fc1", dim, mlp_dim), ("fc2", mlp_dim, dim)]


def _gemm_rows(dim: int, mlp_dim: int, tokens: int) -> list[tuple[str, ...]]:
    from vit_torch import gemm

    rows = []
    for name, d_in, d_out in dense_products(dim, mlp_dim):
        shapes = {
            "forward": (tokens, d_in, d_out),  # x (tokens, in) by W^T (in, out)
            "grad_input": (tokens, d_out, d_in),  # grad (tokens, out) by W (out, in)
            "grad_weight": (d_out, tokens, d_in),  # grad^T (out, tokens) by x (tokens, in)
        }
        rows.append((name, f"{d_in} -> {d_out}", *(gemm.decide(op, *shapes[op]) for op in gemm.OPS)))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    cpu, isa = _cpu()
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    print(f"cpu: {cpu}, {os.cpu_count()} cores; vector units: {', '.join(isa) or 'unknown'}")
    dists = ("vit-parity", "vit-torch", "vit-flax", "torch", "jax", "flax", "optax")
    print("packages: " + ", ".join(f"{d} {_version(d)}" for d in dists))
    if installed("torch"):
        import torch

        from vit_torch import gemm

        print(
            f"torch: {torch.get_num_threads()} threads, oneDNN {'yes' if gemm.available() else 'no'}, "
            f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; dense layers: {gemm.ENV}={gemm.mode()}"
        )
    if installed("flax"):
        import jax

        print(f"jax: devices {', '.join(str(d) for d in jax.devices())}")
    if args.gemm:
        if not installed("torch"):
            print("--gemm needs vit_torch")
            return 2
        dim, mlp_dim, tokens = args.gemm
        print(f"\nvit_torch's path for each product of a block of width {dim}, MLP {mlp_dim}, {tokens} tokens:")
        table(("layer", "features", "forward", "grad_input", "grad_weight"), _gemm_rows(dim, mlp_dim, tokens))
    return 0


def gemm_shape(text: str) -> tuple[int, int, int]:
    """``DIM,MLP,TOKENS`` for ``--gemm``."""
    try:
        dim, mlp_dim, tokens = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DIM,MLP,TOKENS (three integers), got {text!r}") from None
    if min(dim, mlp_dim, tokens) < 1:
        raise argparse.ArgumentTypeError(f"DIM, MLP and TOKENS must be positive, got {text!r}")
    return dim, mlp_dim, tokens
