"""Training, evaluation and prediction for any vit_torch classifier, on numpy arrays.

``fit`` runs AdamW (decoupled weight decay on the weights of linear and convolution modules only: none
on biases, norms, position embeddings and class tokens) under a linear-warmup + cosine schedule,
shuffling with a seeded numpy generator, and calls ``on_epoch`` and ``on_checkpoint`` after every epoch
(the ``vit`` command saves a checkpoint there, optimizer state included). Given a ``stop`` callable it
stops cleanly after the step in hand, and a run resumed from its :class:`~vit_parity.core.loop.RunState`
ends with the same weights, bit for bit, as one never stopped. ``predict`` returns logits. Inputs are channels-first, as
``vit_parity.tools.data`` returns them; a model that takes something else than the batch array (NaViT's
lists of images) gets it from a ``feed`` (see ``vit_parity.tools.adapters``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vit_parity.core import spec
from vit_parity.core.checkpoint import Checkpoint
from vit_parity.core.checkpoint import save as save_checkpoint
from vit_parity.core.config import to_json
from vit_parity.core.loop import EpochMetrics, Progress, RunState, batches, run_epochs
from vit_torch import gemm
from vit_torch.checkpoint import module_kinds, to_checkpoint
from vit_torch.init import init_weights

__all__ = [
    "build", "decayed_parameters", "fit", "load_optimizer_state", "optimizer", "optimizer_state", "predict", "save",
]  # fmt: skip

# Module kinds (vit_torch.checkpoint.module_kinds) whose weight decays; nothing else does.
DECAYED_KINDS = ("linear", "conv")
PRECISIONS = ("fp32", "bf16")


def build(arch: str, config: dict, *, seed: int = 0) -> nn.Module:
    """The registry architecture ``arch`` built from ``config`` with weights drawn from ``seed`` by the
    shared initializer (``vit_torch.init.init_weights``): the same as ``vit_flax.train.build`` gives.

    Raises ``TypeError`` when the config cannot be stored in a checkpoint (e.g. a callable argument), so
    that a run fails before training rather than at its first save.
    """
    cls = spec.get(arch).load_class("torch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**spec.build_models(config, "torch"))
    to_json(model.config)
    return init_weights(model, seed)


def decayed_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters AdamW decays: the weights of linear and convolution modules."""
    kinds = module_kinds(model)
    return [
        name for name, _ in model.named_parameters()
        if name.endswith(".weight") and kinds.get(name.rpartition(".")[0]) in DECAYED_KINDS
    ]  # fmt: skip


def optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on :func:`decayed_parameters` only."""
    decayed = set(decayed_parameters(model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decayed], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def optimizer_state(opt: torch.optim.AdamW, model: nn.Module) -> tuple[int, dict[str, dict[str, np.ndarray]]]:
    """AdamW's update count and moments ``{"mu": {name: array}, "nu": {name: array}}`` keyed by parameter name."""
    names = {p: n for n, p in model.named_parameters()}
    moments: dict[str, dict[str, np.ndarray]] = {"mu": {}, "nu": {}}
    steps = 0
    for param, state in opt.state.items():
        if "exp_avg" in state:
            moments["mu"][names[param]] = state["exp_avg"].detach().cpu().numpy().copy()
            moments["nu"][names[param]] = state["exp_avg_sq"].detach().cpu().numpy().copy()
            steps = int(state["step"])
    return steps, moments


def load_optimizer_state(
    opt: torch.optim.AdamW, model: nn.Module, steps: int, moments: dict[str, dict[str, np.ndarray]]
) -> None:
    """Restore what :func:`optimizer_state` returned into ``opt`` (an :func:`optimizer` of ``model``)."""
    params = dict(model.named_parameters())
    mu, nu = moments.get("mu", {}), moments.get("nu", {})
    unknown = sorted((set(mu) | set(nu)) - set(params))
    if unknown or set(mu) != set(nu):
        raise ValueError(f"the optimizer state does not fit this model: unknown parameters {unknown[:5]}")
    for name in mu:
        param = params[name]
        if tuple(mu[name].shape) != tuple(param.shape) or tuple(nu[name].shape) != tuple(param.shape):
            raise ValueError(f"the optimizer state of {name} is shaped {mu[name].shape}, the parameter {param.shape}")
        opt.state[param] = {
            "step": torch.tensor(float(steps), dtype=torch.float32),
            "exp_avg": torch.from_numpy(np.array(mu[name], dtype=np.float32)).to(param.device),
            "exp_avg_sq": torch.from_numpy(np.array(nu[name], dtype=np.float32)).to(param.device),
        }


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _forward(model: nn.Module, x: np.ndarray, feed: Any) -> torch.Tensor:
    """Logits of ``model`` for the channels-first batch ``x``, through ``feed`` when given."""
    if feed is None:
        return model(torch.from_numpy(np.ascontiguousarray(x)))
    args = spec.map_arrays(lambda a: torch.from_numpy(np.ascontiguousarray(a)), tuple(feed.inputs(x)))
    return feed.logits(model(*args))


def predict(
    model: nn.Module, x: np.ndarray, *, batch_size: int = 256, feed: Any = None, precision: str = "fp32"
) -> np.ndarray:
    """Logits of ``model`` (in eval mode; its mode is restored) for the channels-first batch ``x``, as float32
    numpy. ``feed`` (a ``vit_parity.tools.adapters.Feed``) builds the inputs of a model that does not take
    the batch array (NaViT) and reads its per-sample logits. ``precision='bf16'`` runs under CPU autocast."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode(), _autocast(precision):
            for idx in batches(len(x), batch_size):
                out.append(_forward(model, x[idx], feed).float().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    eval: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.0,
    shift: int = 0,
    seed: int = 0,
    start_epoch: int = 0,
    resume: RunState | None = None,
    shuffle: bool = True,
    feed: Any = None,
    precision: str = "fp32",
    compile: bool | str = False,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
    on_checkpoint: Callable[[RunState, nn.Module, EpochMetrics | None], None] | None = None,
    stop: Callable[[], bool] | None = None,
    progress: bool | Progress = True,
) -> list[EpochMetrics]:
    """Train ``model`` on ``train = (x, y)`` for ``epochs`` epochs; return each epoch's metrics.

    ``x`` is a channels-first float32 array, ``y`` integer labels. Every epoch uses the full batches
    of a fresh permutation drawn from ``(seed, epoch)`` (the last partial batch is dropped); each step's
    shifts (``shift``: translations by up to that many pixels) and dropout draw from ``(seed, epoch,
    step)`` (torch's generator is reseeded per step inside ``torch.random.fork_rng``, so the caller's
    random state is left alone). ``feed`` (see :func:`predict`) turns each batch into the model's inputs.
    ``precision='bf16'`` runs forward and backward under CPU autocast (weights and AdamW stay float32);
    ``compile=True`` trains through ``torch.compile(model)`` (a string names its backend, e.g. 'aot_eager').

    After every epoch ``on_epoch(metrics, model)`` and ``on_checkpoint(state, model, metrics)`` run, with
    the :class:`RunState` to resume from. When ``stop()`` turns true, the step in hand is finished,
    ``on_checkpoint(state, model, None)`` runs (within an epoch; at its end the epoch's call served) and
    :class:`~vit_parity.core.loop.Interrupted` is raised. ``resume`` continues from such a state (its
    model weights loaded into ``model``) and ends where an uninterrupted run does; ``start_epoch`` starts
    at an epoch with a fresh optimizer.
    """
    run = resume if resume is not None else RunState(epoch=start_epoch)
    opt = optimizer(model, lr=lr, weight_decay=weight_decay)
    if run.moments:
        load_optimizer_state(opt, model, run.optimizer_steps, run.moments)
    gemm.adopt({tuple(key): path for *key, path in run.numerics.get("gemm", [])})
    backend = {"backend": compile} if isinstance(compile, str) else {}
    net = torch.compile(model, **backend) if compile else model
    autocast = _autocast(precision)

    def train_step(xb: np.ndarray, yb: np.ndarray, step_lr: float, seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        for group in opt.param_groups:
            group["lr"] = step_lr
        labels = torch.from_numpy(yb)
        with autocast:
            logits = _forward(net, xb, feed)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach()), float((logits.detach().argmax(-1) == labels).sum())

    def snapshot(epoch: int, step: int, sums: tuple[float, float, int]) -> RunState:
        count, moments = optimizer_state(opt, model)
        paths = [[*key, path] for key, path in sorted(gemm.decisions().items())]
        return RunState(epoch, step, *sums, optimizer_steps=count, moments=moments, numerics={"gemm": paths})

    model.train()
    with torch.random.fork_rng(devices=[]):  # the steps reseed torch's generator; the caller's is left alone
        history = run_epochs(
            train, eval, train_step, model=model, snapshot=snapshot,
            predict=lambda held_out: predict(model, held_out, feed=feed, precision=precision),
            epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs, shift=shift, seed=seed,
            shuffle=shuffle, run=run, on_epoch=on_epoch, on_checkpoint=on_checkpoint, stop=stop, progress=progress,
        )  # fmt: skip
    model.eval()
    return history


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    extra: dict | None = None,
    optimizer: dict[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """Save ``model`` atomically to the checkpoint folder ``path``, with ``extra`` in its config and the
    optimizer ``moments`` of a run (:func:`optimizer_state`) when given."""
    ckpt: Checkpoint = to_checkpoint(model)
    ckpt.extra = dict(extra or {})
    ckpt.optimizer = dict(optimizer or {})
    return save_checkpoint(ckpt, path)
