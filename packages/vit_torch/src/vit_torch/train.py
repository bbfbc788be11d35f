"""Training, evaluation and prediction for any vit_torch classifier, on numpy arrays.

``fit`` runs AdamW (decoupled weight decay on the weights of linear and convolution modules only: none
on biases, norms, position embeddings and class tokens) under a linear-warmup + cosine schedule,
shuffling with a seeded numpy generator, and calls ``on_epoch`` after every epoch (the ``vit`` command
saves a checkpoint there). ``predict`` returns logits. Inputs are channels-first, as
``vit_parity.tools.data`` returns them; a model that takes something else than the batch array (NaViT's
lists of images) gets it from a ``feed`` (see ``vit_parity.tools.adapters``).
"""

from __future__ import annotations

import os
import time
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
from vit_parity.core.loop import EpochMetrics, Progress, batches, cross_entropy, random_shift, warmup_cosine
from vit_torch.checkpoint import module_kinds, to_checkpoint
from vit_torch.init import init_weights

__all__ = ["build", "decayed_parameters", "fit", "optimizer", "predict", "save"]

# Module kinds (vit_torch.checkpoint.module_kinds) whose weight decays; nothing else does.
DECAYED_KINDS = ("linear", "conv")


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


def _forward(model: nn.Module, x: np.ndarray, feed: Any) -> torch.Tensor:
    """Logits of ``model`` for the channels-first batch ``x``, through ``feed`` when given."""
    if feed is None:
        return model(torch.from_numpy(np.ascontiguousarray(x)))
    args = spec.map_arrays(lambda a: torch.from_numpy(np.ascontiguousarray(a)), tuple(feed.inputs(x)))
    return feed.logits(model(*args))


def predict(model: nn.Module, x: np.ndarray, *, batch_size: int = 256, feed: Any = None) -> np.ndarray:
    """Logits of ``model`` (in eval mode; its mode is restored) for the channels-first batch ``x``, as float32
    numpy. ``feed`` (a ``vit_parity.tools.adapters.Feed``) builds the inputs of a model that does not take
    the batch array (NaViT) and reads its per-sample logits."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
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
    shuffle: bool = True,
    feed: Any = None,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
    progress: bool | Progress = True,
) -> list[EpochMetrics]:
    """Train ``model`` on ``train = (x, y)`` for ``epochs`` epochs; return each epoch's metrics.

    ``x`` is a channels-first float32 array, ``y`` integer labels. Every epoch uses the full batches
    of a fresh permutation drawn from ``(seed, epoch)`` (the last partial batch is dropped), so a run
    resumed at ``start_epoch`` sees the same batches as an uninterrupted one. ``shift`` translates
    training samples by up to that many pixels. Dropout draws from torch's generator seeded per epoch,
    inside ``torch.random.fork_rng`` so the caller's random state is left alone. ``feed`` (see
    :func:`predict`) turns each batch into the model's inputs.
    """
    x, y = np.asarray(train[0], dtype=np.float32), np.asarray(train[1], dtype=np.int64)
    if len(x) == 0:
        raise ValueError("the training set is empty")
    batch_size = min(batch_size, len(x))
    steps = len(x) // batch_size
    total, warmup = epochs * steps, round(warmup_epochs * steps)
    opt = optimizer(model, lr=lr, weight_decay=weight_decay)
    bar = progress if isinstance(progress, Progress) else Progress(epochs, steps, enabled=bool(progress))
    history: list[EpochMetrics] = []
    for epoch in range(start_epoch, epochs):
        bar.begin(epoch)
        start = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        loss_sum = correct = seen = 0.0
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.default_rng([seed, epoch, 1]).integers(2**31)))
            for i, idx in enumerate(batches(len(x), batch_size, rng=rng if shuffle else None, drop_last=True)):
                step_lr = warmup_cosine(epoch * steps + i, total_steps=total, warmup_steps=warmup, peak_lr=lr)
                for group in opt.param_groups:
                    group["lr"] = step_lr
                yb = torch.from_numpy(y[idx])
                logits = _forward(model, random_shift(x[idx], shift, rng), feed)
                loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += float((logits.detach().argmax(-1) == yb).sum())
                seen += len(idx)
                bar.update(i + 1, loss_sum / seen, correct / seen)
        eval_loss = eval_acc = None
        if eval is not None and len(eval[0]):
            logits = predict(model, eval[0], feed=feed)
            eval_loss = cross_entropy(logits, eval[1])
            eval_acc = float((logits.argmax(-1) == eval[1]).mean())
        metrics = EpochMetrics(
            epoch, step_lr, loss_sum / seen, correct / seen, eval_loss, eval_acc, time.perf_counter() - start
        )
        history.append(metrics)
        bar.end(metrics)
        if on_epoch is not None:
            on_epoch(metrics, model)
    model.eval()
    return history


def save(model: nn.Module, path: str | os.PathLike[str], *, extra: dict | None = None) -> Path:
    """Save ``model`` atomically to the checkpoint folder ``path``, with ``extra`` in its config."""
    ckpt: Checkpoint = to_checkpoint(model)
    ckpt.extra = dict(extra or {})
    return save_checkpoint(ckpt, path)
