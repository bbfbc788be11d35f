"""How close to the machine's limit a model runs: the GEMM peak of each path, and a model's FLOPs.

``python bench/peak.py`` prints the peak at ViT-S's dense-layer shape. compare.py measures it at the start of
every run (the header of its tables) and divides every row's FLOP rate by it.

- :func:`gemm_peak`: GFLOP/s of one ``(m, k) @ (k, n)`` product through torch's default path (``F.linear``: MKL),
  through oneDNN (``torch.ops.mkldnn._linear_pointwise`` on a packed weight: vit_torch.gemm's fast path), through
  XLA (``jax.jit`` of a dot), and in bf16 through torch (``F.linear`` on bf16 tensors) and XLA (a bf16 dot);
  medians of interleaved rounds.
- :func:`torch_flops`: the matrix-product FLOPs of one inference pass and of one training step (forward and
  backward) of a torch model, counted by ``torch.utils.flop_counter`` (products and convolutions; a training
  step is about three forward passes). A flax model's count is its torch twin's: the same products.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

# ViT-S/16 at 224, batch 8: (8 * 197 tokens, dim 384) by (384, MLP 1536), the first feed-forward product
VIT_S_SHAPE = (1576, 384, 1536)
PATHS = ("MKL fp32", "oneDNN fp32", "XLA fp32", "torch bf16", "XLA bf16")


def gemm_peak(m: int, k: int, n: int, rounds: int = 7, repeat: int = 5) -> dict[str, float]:
    """GFLOP/s of the product through each path of :data:`PATHS` that this environment has."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    calls: dict[str, Callable[[], Any]] = {"MKL fp32": lambda: F.linear(x, w)}
    if torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        calls["oneDNN fp32"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    try:
        import jax
        import jax.numpy as jnp

        xj, wj = jnp.asarray(x.numpy()), jnp.asarray(np.ascontiguousarray(w.numpy().T))
        xj16, wj16 = xj.astype(jnp.bfloat16), wj.astype(jnp.bfloat16)
        dot = jax.jit(jnp.dot)
        calls["XLA fp32"] = lambda: dot(xj, wj).block_until_ready()
    except ImportError:
        dot = None
    xb, wb = x.bfloat16(), w.bfloat16()
    calls["torch bf16"] = lambda: F.linear(xb, wb)
    if dot is not None:
        calls["XLA bf16"] = lambda: dot(xj16, wj16).block_until_ready()

    with torch.inference_mode():
        for fn in calls.values():
            fn()  # warm-up: oneDNN builds its primitive, XLA compiles
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(rounds):  # interleaved: a slow spell of the machine hits every path alike
            for name, fn in calls.items():
                start = time.perf_counter()
                for _ in range(repeat):
                    fn()
                samples[name].append((time.perf_counter() - start) / repeat)
    flops = 2 * m * k * n
    return {name: flops / statistics.median(ts) / 1e9 for name, ts in samples.items()}


@contextlib.contextmanager
def _default_gemm() -> Iterator[None]:
    """vit_torch's oneDNN products are invisible to torch's FLOP counter: count them on the default path."""
    saved = os.environ.get("VIT_TORCH_CPU_GEMM")
    os.environ["VIT_TORCH_CPU_GEMM"] = "default"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["VIT_TORCH_CPU_GEMM"]
        else:
            os.environ["VIT_TORCH_CPU_GEMM"] = saved


def torch_flops(model: Any, x: Any) -> dict[str, float]:
    """FLOPs of one inference pass (``infer``) and one training step's forward and backward (``train``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    with _default_gemm():
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as count:
            model(x)
        infer = count.get_total_flops()
        model.train()
        with FlopCounterMode(display=False) as count:
            model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"infer": float(infer), "train": float(count.get_total_flops())}


def peak_of(precision: str, peaks: dict[str, float]) -> float:
    """The peak a row of this precision is measured against: the fastest path of that precision."""
    return max((v for k, v in peaks.items() if k.endswith(precision)), default=float("nan"))


def rate_cell(flops: float | None, seconds: float, peak: float) -> str:
    """``GFLOP/s (percent of peak)`` for a table cell; ``-`` when the FLOPs are unknown."""
    if not flops:
        return "-"
    gflops = flops / seconds / 1e9
    return f"{gflops:.0f} ({100 * gflops / peak:.0f} %)"


def header(peaks: dict[str, float], gemm: str) -> str:
    """The tables' first line on the machine's limit."""
    m, k, n = VIT_S_SHAPE
    rates = ", ".join(f"{p} {v:.0f}" for p, v in peaks.items())
    return f"GEMM peak at ViT-S's feed-forward shape ({m} x {k} by {k} x {n}), GFLOP/s: {rates}. {gemm}"


def gemm_decisions() -> dict[str, int] | None:
    """How many of the product shapes vit_torch's dense layers measured so far (``auto``) went to oneDNN."""
    try:
        from vit_torch import gemm
    except ImportError:
        return None
    chosen = list(gemm.decisions().values())
    return {"onednn": chosen.count("onednn"), "total": len(chosen)}


def gemm_line(meta: dict) -> str:
    """The header line on the machine's limit: the GEMM peaks and what vit_torch's dense layers chose."""
    peaks = meta.get("gemm_peak") or {}
    decided = meta.get("gemm_decisions")
    gemm = f"vit_torch dense layers: VIT_TORCH_CPU_GEMM={meta.get('gemm_mode', 'auto')}"
    if decided is not None:
        gemm += f", oneDNN chosen for {decided['onednn']} of {decided['total']} product shapes measured in this run"
    return header(peaks, gemm + ".") if peaks else gemm + "."


def flop_cells(row: dict, name: str, meta: dict) -> list[str]:
    """Inference and training GFLOP/s of a throughput row, with the percentage of the matching peak."""
    limit = peak_of(name.partition("@")[2] or "fp32", meta.get("gemm_peak") or {})
    flops = row.get("flops") or {}
    return [rate_cell(flops.get(m), statistics.median(row[f"{m}_s"]), limit) for m in ("infer", "train")]


def main() -> None:
    m, k, n = VIT_S_SHAPE
    peak = gemm_peak(m, k, n)
    print(f"GEMM ({m} x {k}) by ({k} x {n}), GFLOP/s: " + ", ".join(f"{p} {v:.0f}" for p, v in peak.items()))


if __name__ == "__main__":
    main()
