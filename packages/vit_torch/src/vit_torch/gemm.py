"""Dense-layer matrix products through oneDNN on CPU where that is faster.

torch's ``F.linear`` on CPU runs MKL's GEMM, which picks its AVX2 kernels on some AVX-512 CPUs (AMD EPYC);
the oneDNN kernels that ship in the same torch build run AVX-512 there and are up to twice as fast.
:func:`linear` is a dense layer (``y = x W^T + b``) whose three matrix products, the forward one and
the two of the backward pass (``grad_x = grad W``, ``grad_W = grad^T x``), each run either through
oneDNN (``torch.ops.mkldnn._linear_pointwise``) or through the default path (``F.linear`` / ``@``).

Where oneDNN runs: CPU, float32 input, weight and bias, plain dense tensors, autocast off, no
``torch.compile`` / ``torch.jit`` tracing, no functorch transform, and a torch built with mkldnn.
Everything else (CUDA, bf16 under autocast, float64, nested tensors, fake tensors) takes the default
path with the default numbers.

Which path: the environment variable ``VIT_TORCH_CPU_GEMM``, read at every call:

- ``auto`` (default): per product and shape, a one-time micro-benchmark of both paths on random
  data of that shape decides; oneDNN is kept only if it is faster by :data:`MARGIN`. Products under
  :data:`MIN_FLOPS` skip the benchmark and take the default path. :func:`decisions` returns the results.
- ``onednn``: oneDNN for every eligible product, whatever its size.
- ``default``: never oneDNN.

Packed weights: oneDNN wants the weight in its own blocked layout. Where no gradient of the weight
is needed (``torch.no_grad``, inference mode, frozen weights) the packed copy is cached per weight
tensor and reused while the weight's storage, version counter and shape stay the same, so an
in-place update (optimizer step, ``load_state_dict``) repacks it; the cache holds one extra copy of
each such weight. In training the forward product passes the dense weight and oneDNN reorders it
once per call; the backward input-gradient product needs ``W^T`` in a different blocked layout, so
it cannot reuse the forward's packed weight.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.weak import WeakTensorKeyDictionary

ENV = "VIT_TORCH_CPU_GEMM"
MODES = ("auto", "onednn", "default")
MARGIN = 1.10  # oneDNN must be at least this much faster to be chosen
MIN_FLOPS = 10_000_000  # products below this (about 0.05 ms) are not worth benchmarking
BENCH_BUDGET_S = 0.25  # at most about this much time per benchmarked shape
OPS = ("forward", "grad_input", "grad_weight")

_DECISIONS: dict[tuple[str, int, int, int], str] = {}
_PACKED: Any = WeakTensorKeyDictionary()
calls: Counter[tuple[str, str]] = Counter()
"""How often each ``(op, path)`` ran, ``path`` being ``"onednn"`` or ``"default"``; for tests and profiling."""


def mode() -> str:
    """The current ``VIT_TORCH_CPU_GEMM`` value (``auto`` when unset)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(MODES)}, got {value!r}")
    return value


def available() -> bool:
    """Whether this torch build has the oneDNN linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def decisions() -> dict[tuple[str, int, int, int], str]:
    """The ``auto`` decisions made so far: ``(op, m, k, n)`` of an ``(m, k) @ (k, n)`` product to its path."""
    return dict(_DECISIONS)


def adopt(earlier: dict[tuple[str, int, int, int], str]) -> None:
    """Take ``earlier`` ``auto`` decisions (a resumed training run's) so the same products take the same paths
    as before: the paths give last-bit differences, and a resumed run must compute as the run it continues."""
    for (op, m, k, n), path in earlier.items():
        if op not in OPS or path not in ("onednn", "default"):
            raise ValueError(f"not a GEMM decision: {(op, m, k, n)!r} -> {path!r}")
        _DECISIONS[(op, int(m), int(k), int(n))] = path


def decide(op: str, m: int, k: int, n: int) -> str:
    """The path product ``op`` (one of :data:`OPS`) of shape ``(m, k) @ (k, n)`` takes on plain float32 CPU
    operands under the current mode: ``"onednn"`` or ``"default"`` (``auto`` measures it now if it has not yet)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    probe = torch.empty(0)
    return _path(op, m, k, n, probe) if available() else "default"


def clear() -> None:
    """Forget the ``auto`` decisions, the packed weights and the call counts."""
    _DECISIONS.clear()
    _PACKED.clear()
    calls.clear()


def _plain(t: Tensor | None) -> bool:
    """A dense CPU float32 tensor that no transform or tracer wraps (``None`` passes)."""
    if t is None:
        return True
    return (
        type(t) in (Tensor, nn.Parameter)
        and t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.layout == torch.strided
        and not t.is_nested
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
    )


def _eligible(*tensors: Tensor | None) -> bool:
    """Whether oneDNN may run on these operands in the current context."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return all(_plain(t) for t in tensors) and available()


def _onednn_mm(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b_t.T + bias`` by oneDNN; ``b_t`` (``(n, k)``, dense or packed) plays the weight."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


def _default(op: str, a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """The default path of each product (the same calls that plain autograd of ``F.linear`` makes)."""
    if op == "forward":
        return F.linear(a, b, bias)
    if op == "grad_input":
        return a @ b
    return a.T @ b


def _onednn(op: str, a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """The oneDNN path of each product; operands as in :func:`_default`."""
    if op == "forward":
        return _onednn_mm(a, b, bias)
    if op == "grad_input":
        return _onednn_mm(a, b.T)
    return _onednn_mm(a.T, b.T)


def _time(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _benchmark(op: str, m: int, k: int, n: int) -> str:
    """Time both paths of one product shape on random data (interleaved, medians) and pick one."""
    gen = torch.Generator().manual_seed(0)
    if op == "forward":  # x (m, k), W (n, k)
        a, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    elif op == "grad_input":  # grad (m, k), W (k, n)
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    else:  # grad (k, m), x (k, n)
        a, b = torch.randn(k, m, generator=gen), torch.randn(k, n, generator=gen)
    paths = {"default": lambda: _default(op, a, b), "onednn": lambda: _onednn(op, a, b)}
    with torch.no_grad():
        start = time.perf_counter()
        for fn in paths.values():  # warm-up: oneDNN builds its primitive on the first call
            fn()
        per_round = time.perf_counter() - start
        rounds = max(1, min(5, int(BENCH_BUDGET_S / max(per_round, 1e-9))))
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, fn in paths.items():
                times[name].append(_time(fn))
    med = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
    return "onednn" if med["onednn"] * MARGIN < med["default"] else "default"


def _path(op: str, m: int, k: int, n: int, *tensors: Tensor | None) -> str:
    """Which path runs product ``op`` of shape ``(m, k) @ (k, n)`` on these operands now."""
    if not _eligible(*tensors) or m == 0 or k == 0 or n == 0:
        return "default"
    choice = mode()
    if choice != "auto":
        return choice
    if 2 * m * k * n < MIN_FLOPS:
        return "default"
    key = (op, m, k, n)
    if key not in _DECISIONS:
        _DECISIONS[key] = _benchmark(op, m, k, n)
    return _DECISIONS[key]


def _packed(weight: Tensor) -> Tensor:
    """oneDNN's blocked copy of ``weight``, cached while its storage, version and shape stay the same."""
    try:
        stamp = (weight.data_ptr(), weight._version, tuple(weight.shape))
    except RuntimeError:  # inference tensors have no version counter: nothing safe to key on
        return weight
    hit = _PACKED.get(weight)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    _PACKED[weight] = (stamp, packed)
    return packed


def _count(op: str, path: str) -> None:
    if not torch.compiler.is_compiling():  # a compiled graph takes the default path and counts nothing
        calls[op, path] += 1


def forward_mm(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, cache: bool = False) -> Tensor:
    """``x W^T + b`` for ``x`` of shape ``(..., k)``; ``cache`` reuses a packed weight (no weight gradient)."""
    x2 = x.reshape(-1, x.shape[-1])
    path = _path("forward", x2.shape[0], weight.shape[1], weight.shape[0], x, weight, bias)
    _count("forward", path)
    if path == "default":
        return F.linear(x, weight, bias)
    w = _packed(weight) if cache else weight
    return _onednn_mm(x2.contiguous(), w, bias).reshape(*x.shape[:-1], weight.shape[0])


def grad_input_mm(grad: Tensor, weight: Tensor) -> Tensor:
    """``grad W`` for ``grad`` of shape ``(..., n)`` and ``W`` of shape ``(n, k)``."""
    g2 = grad.reshape(-1, grad.shape[-1])
    path = _path("grad_input", g2.shape[0], weight.shape[0], weight.shape[1], grad, weight)
    _count("grad_input", path)
    if path == "default":
        return grad @ weight
    return _onednn("grad_input", g2.contiguous(), weight).reshape(*grad.shape[:-1], weight.shape[1])


def grad_weight_mm(grad: Tensor, x: Tensor) -> Tensor:
    """``grad^T x`` over all leading axes: the weight gradient, shape ``(n, k)``."""
    g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
    path = _path("grad_weight", g2.shape[1], g2.shape[0], x2.shape[1], g2, x2)
    _count("grad_weight", path)
    if path == "default":
        return g2.T @ x2
    return _onednn("grad_weight", g2.contiguous(), x2.contiguous())


class _Linear(torch.autograd.Function):
    """``F.linear`` whose three products go through the functions above (forward, input and weight gradient)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return forward_mm(x, weight, bias, cache=not weight.requires_grad)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    @once_differentiable  # oneDNN's ops have no derivatives of their own: no double backward
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_input_mm(grad, weight)
        if ctx.needs_input_grad[1]:
            grad_w = grad_weight_mm(grad, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` (same numbers to float32 rounding) with its products on the faster path.

    ``x`` is ``(..., in_features)``, ``weight`` ``(out_features, in_features)``, ``bias`` ``(out_features,)``.
    Falls back to ``F.linear`` itself wherever oneDNN may not run or ``VIT_TORCH_CPU_GEMM=default``.
    """
    if x.dim() < 2 or not _eligible(x, weight, bias) or mode() == "default":
        return F.linear(x, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not needs_grad:
        return forward_mm(x, weight, bias, cache=True)
    return _Linear.apply(x, weight, bias)
