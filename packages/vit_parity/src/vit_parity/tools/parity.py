"""Cross-backend parity: same weights (converted), same input (relaid), eval mode, same numbers.

Needs both vit_torch and vit_flax. Compares the logits and every transformer block's output. A model holding
BatchNorm is also run once with only its BatchNorm layers in training mode (:func:`batchnorm_train_step`): the
outputs and the updated running statistics must agree as well.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vit_parity.core.spec import ArchSpec, Case, map_arrays, output_leaves

RTOL = 1e-5
ATOL = 1e-5


@dataclass(frozen=True)
class Diff:
    """How far one flax output is from its torch counterpart."""

    name: str
    max_abs: float
    max_rel: float
    ok: bool
    margin: float = float("inf")  # the largest |got - want| / (atol + rtol * |want|): ok when <= 1


def compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> Diff:
    """``ok`` when ``|got - want| <= atol + rtol * |want|`` everywhere.

    ``max_rel`` is the largest ``|got - want| / (|want| + atol)``; ``margin`` the largest
    ``|got - want| / (atol + rtol * |want|)``, the share of the tolerance used (``ok`` when at most 1).
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Diff(f"{name} shape {got.shape} vs {want.shape}", float("inf"), float("inf"), False)
    err = np.abs(got - want)
    tol = atol + rtol * np.abs(want)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(err == 0, 0.0, err / tol)
    return Diff(
        name,
        float(err.max(initial=0.0)),
        float((err / (np.abs(want) + atol)).max(initial=0.0)),
        bool(np.all(err <= tol)),
        float(margin.max(initial=0.0)),
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


def perturb_constants(model: Any, seed: int, *, only: Collection[str] | None = None) -> Any:
    """Give seeded noise to the tensors of a torch ``model`` that its constructor leaves constant; returns it.

    Constructors leave norms at one and zero and layer scales at one constant, under which a swapped norm, a lost
    bias or a scale on the wrong axis would go unseen, and a small scale would hide a wrong GELU or eps below a
    tolerance. Every 1-D floating tensor gets noise of scale 0.5 (a running variance a positive factor), and every
    constant one of more axes (a ``(1, 1, dim)`` layer scale, per-head scales) the same noise along its last axis.
    Weights, embeddings and tokens stay as drawn. ``only`` limits it to those state-dict keys.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if (only is not None and name not in only) or not tensor.is_floating_point() or not tensor.numel():
                continue
            if name.endswith("running_var"):  # a variance stays positive
                tensor *= torch.exp(0.5 * torch.randn(tensor.shape, generator=gen))
            elif tensor.ndim == 1:
                tensor += 0.5 * torch.randn(tensor.shape, generator=gen)
            elif bool((tensor == tensor.flatten()[0]).all()):
                tensor += 0.5 * torch.randn(tensor.shape[-1:], generator=gen)
    return model


def build_pair(spec: ArchSpec, case: Case, seed: int = 0) -> tuple[Any, Any]:
    """A torch model and a flax model of ``case``'s config holding the same (converted) weights, in eval mode;
    the torch model's constant tensors perturbed first (:func:`perturb_constants`)."""
    import torch
    from flax import nnx

    from vit_flax.checkpoint import load_state
    from vit_torch.checkpoint import to_checkpoint

    torch.manual_seed(seed)
    torch_model = perturb_constants(case.build("torch", spec.load_class("torch")).eval(), seed + 1)
    flax_model = case.build("flax", spec.load_class("flax"), rngs=nnx.Rngs(seed))
    load_state(flax_model, to_checkpoint(torch_model))
    flax_model.eval()
    return torch_model, flax_model


def takes_features(model: Any) -> bool:
    """Whether ``model`` returns labelled features (every registry model does; a wrapper may not)."""
    call = model.forward if hasattr(model, "forward") else model.__call__
    return "return_features" in inspect.signature(call).parameters


def run_case(
    spec: ArchSpec,
    case: Case,
    *,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    tamper: Callable[[Any], None] | None = None,
) -> list[Diff]:
    """Compare the logits and every labelled feature (each block's output, pre-logits) of both backends on
    ``case``; ``tamper`` may alter the flax model."""
    return run_case_with_teeth(spec, case, seed=seed, rtol=rtol, atol=atol, tamper=tamper)[0]


def run_case_with_teeth(
    spec: ArchSpec,
    case: Case,
    torch_tampers: Mapping[str, Callable[[Any], None]] | None = None,
    *,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    tamper: Callable[[Any], None] | None = None,
) -> tuple[list[Diff], dict[str, list[Diff]]]:
    """:func:`run_case`, and the same comparison of the flax model's outputs (computed once) with a copy of the
    torch model altered by each of ``torch_tampers`` (a wrong eps, another GELU): the check has teeth when each of
    those fails. Returns the diffs and, per tamper, its diffs."""
    import jax.numpy as jnp
    import torch

    torch_model, flax_model = build_pair(spec, case, seed)
    if tamper is not None:
        tamper(flax_model)
    t_in = map_arrays(torch.from_numpy, case.sample("torch", seed))
    f_in = map_arrays(jnp.asarray, case.sample("flax", seed))
    flax_once = _Once(flax_model)
    diffs = compare_outputs(case, torch_model, flax_once, t_in, f_in, rtol=rtol, atol=atol)
    tampered = {}
    for name, alter in (torch_tampers or {}).items():
        model = copy.deepcopy(torch_model)
        alter(model)
        tampered[name] = compare_outputs(case, model, flax_once, t_in, f_in, rtol=rtol, atol=atol)
    if has_batchnorm(torch_model):  # last: it updates both models' running statistics
        diffs += batchnorm_train_step(case, torch_model, flax_model, t_in, f_in, rtol=rtol, atol=atol)
    return diffs, tampered


class _Once:
    """A model whose first call's result every later call returns (the flax side, compared more than once)."""

    def __init__(self, model: Any) -> None:
        self.model, self.result = model, None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.result is None:
            self.result = self.model(*args, **kwargs)
        return self.result


def compare_outputs(
    case: Case,
    torch_model: Any,
    flax_model: Any,
    t_in: tuple[Any, ...],
    f_in: tuple[Any, ...],
    *,
    prefix: str = "",
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[Diff]:
    """One call of each model on its input: the output leaves (``logits``, ``output.loss`` ...) and every labelled
    feature, each a :class:`Diff` named ``<prefix>/<label>`` (``<label>`` without a prefix); mismatched labels
    fail as such."""
    import torch

    def name(label: str) -> str:
        return f"{prefix}/{label}" if prefix else label

    features = takes_features(torch_model)
    with strict_float32(), torch.no_grad():
        t_out, t_feats = torch_model(*t_in, return_features=True) if features else (torch_model(*t_in), {})
        f_out, f_feats = flax_model(*f_in, return_features=True) if features else (flax_model(*f_in), {})
    t_leaves = output_leaves(case.logits("torch", t_in, t_out))
    f_leaves = output_leaves(case.logits("flax", f_in, f_out))
    t_labels, f_labels = [k for k, _ in t_leaves], [k for k, _ in f_leaves]
    if t_labels != f_labels:
        return [Diff(name(f"outputs: torch {t_labels} vs flax {f_labels}"), np.inf, np.inf, False)]
    diffs = [
        compare(name("logits" if label == "output" else label), np.asarray(f), np.asarray(t), rtol, atol)
        for (label, t), (_, f) in zip(t_leaves, f_leaves)
    ]
    if list(t_feats) != list(f_feats):
        diffs.append(Diff(name(f"features: torch {list(t_feats)} vs flax {list(f_feats)}"), np.inf, np.inf, False))
    for label in t_feats:
        if label in f_feats:
            got = np.asarray(case.feature("flax", f_in, label, f_feats[label]))
            want = np.asarray(case.feature("torch", t_in, label, t_feats[label]))
            diffs.append(compare(name(label), got, want, rtol, atol))
    return diffs


def has_batchnorm(torch_model: Any) -> bool:
    """Whether the torch model holds a BatchNorm layer (then parity also runs :func:`batchnorm_train_step`)."""
    from torch import nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in torch_model.modules())


def batchnorm_train_step(
    case: Case,
    torch_model: Any,
    flax_model: Any,
    t_in: tuple[Any, ...],
    f_in: tuple[Any, ...],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[Diff]:
    """One forward pass with only the BatchNorm layers in training mode, in both backends, on the same input.

    Everything else stays in eval mode (dropout and layer dropout draw nothing), so the two passes compute the same
    function: BatchNorm normalizes with the batch's statistics and updates its running ones. Compares the outputs
    and labelled features (``bn-train/logits``, ``bn-train/block00`` ...), every running mean and variance after
    the update (``bn-train/<torch key>``, flax's converted to the torch layout) and the outputs of an eval pass with
    the updated statistics (``bn-eval-updated/...``: eval-mode parity with statistics other than the initial zeros
    and ones). Both models are put back as they were (weights, statistics, eval mode) before returning.
    """
    import jax
    from flax import nnx
    from torch import nn

    from vit_flax.checkpoint import module_kinds as flax_kinds
    from vit_flax.checkpoint import state_numpy as flax_state
    from vit_parity.core.convert import convert
    from vit_torch.checkpoint import state_numpy as torch_state

    def outputs(prefix: str) -> list[Diff]:
        return compare_outputs(case, torch_model, flax_model, t_in, f_in, prefix=prefix, rtol=rtol, atol=atol)

    saved_torch = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    saved_flax = jax.tree.map(lambda x: x, nnx.state(flax_model, nnx.BatchStat))  # arrays: a snapshot
    try:
        torch_model.eval()
        for m in torch_model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        flax_model.eval()
        for _, node in nnx.iter_graph(flax_model):
            if isinstance(node, nnx.BatchNorm):
                node.use_running_average = False
        diffs = outputs("bn-train")
        want = torch_state(torch_model)
        got = convert(flax_state(flax_model), flax_kinds(flax_model), source="flax", target="torch")
        for k in (k for k in want if k.endswith((".running_mean", ".running_var"))):
            missing = Diff(f"bn-train/{k} missing in flax", np.inf, np.inf, False)
            diffs.append(compare(f"bn-train/{k}", got[k], want[k], rtol, atol) if k in got else missing)
        torch_model.eval()
        flax_model.eval()
        diffs += outputs("bn-eval-updated")
    finally:
        torch_model.load_state_dict(saved_torch)
        torch_model.eval()
        nnx.update(flax_model, saved_flax)
        flax_model.eval()
    return diffs
