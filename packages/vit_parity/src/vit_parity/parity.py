"""Cross-backend parity: same weights (converted), same input (relaid), eval mode, same numbers.

Needs both vit_torch and vit_flax. Compares the logits and every transformer block's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vit_parity.spec import ArchSpec, Case, map_arrays

RTOL = 1e-5
ATOL = 1e-5


@dataclass(frozen=True)
class Diff:
    """How far one flax output is from its torch counterpart."""

    name: str
    max_abs: float
    max_rel: float
    ok: bool


def compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> Diff:
    """``ok`` when ``|got - want| <= atol + rtol * |want|`` everywhere.

    ``max_rel`` is the largest ``|got - want| / (|want| + atol)``.
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Diff(f"{name} shape {got.shape} vs {want.shape}", float("inf"), float("inf"), False)
    err = np.abs(got - want)
    return Diff(
        name,
        float(err.max(initial=0.0)),
        float((err / (np.abs(want) + atol)).max(initial=0.0)),
        bool(np.all(err <= atol + rtol * np.abs(want))),
    )


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Full-precision fp32 matmuls in both frameworks (no TF32 on GPUs)."""
    import jax
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("float32"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def build_pair(spec: ArchSpec, case: Case, seed: int = 0) -> tuple[Any, Any]:
    """A torch model and a flax model of ``case``'s config holding the same (converted) weights, in eval mode."""
    import torch
    from flax import nnx

    from vit_flax.checkpoint import load_state
    from vit_torch.checkpoint import to_checkpoint

    torch.manual_seed(seed)
    torch_model = spec.load_class("torch")(**case.config).eval()
    flax_model = spec.load_class("flax")(**case.config, rngs=nnx.Rngs(seed))
    load_state(flax_model, to_checkpoint(torch_model))
    flax_model.eval()
    return torch_model, flax_model


def run_case(
    spec: ArchSpec,
    case: Case,
    *,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    tamper: Callable[[Any], None] | None = None,
) -> list[Diff]:
    """Compare logits and block outputs of both backends on ``case``; ``tamper`` may alter the flax model."""
    import jax.numpy as jnp
    import torch

    import vit_flax.layers as flax_layers
    import vit_torch.layers as torch_layers

    torch_model, flax_model = build_pair(spec, case, seed)
    if tamper is not None:
        tamper(flax_model)
    t_in = map_arrays(torch.from_numpy, case.sample("torch", seed))
    f_in = map_arrays(jnp.asarray, case.sample("flax", seed))
    t_inter, f_inter = torch_layers.Intermediates(), flax_layers.Intermediates()
    with strict_float32(), torch.no_grad():
        t_out = torch_model(*t_in, intermediates=t_inter)
        f_out = flax_model(*f_in, intermediates=f_inter)
    logits = (np.asarray(case.logits("flax", f_in, f_out)), case.logits("torch", t_in, t_out).numpy())
    diffs = [compare("logits", *logits, rtol, atol)]
    if len(t_inter.blocks) != len(f_inter.blocks):
        diffs.append(Diff(f"blocks: torch {len(t_inter.blocks)} vs flax {len(f_inter.blocks)}", np.inf, np.inf, False))
    for i, (t, f) in enumerate(zip(t_inter.blocks, f_inter.blocks)):
        got, want = np.asarray(case.tokens("flax", f_in, f)), case.tokens("torch", t_in, t).numpy()
        diffs.append(compare(f"block {i}", got, want, rtol, atol))
    return diffs
