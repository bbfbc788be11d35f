"""Training, evaluation and prediction for any vit_flax classifier, on numpy arrays.

Mirrors ``vit_torch.train``: optax AdamW (decoupled weight decay on weights with two or more axes)
under the same linear-warmup + cosine schedule, the same seeded batches, the same metrics. The train
step is compiled once with ``nnx.jit`` (the learning rate is an argument, not a constant, so later runs
of the same model reuse the compilation); prediction pads the last batch so it compiles once too.
Inputs are channels-first, as ``vit_parity.data`` returns them (``channels_first=False`` for arrays
already channels-last); the channel axis moves to the end here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vit_flax.checkpoint import to_checkpoint
from vit_parity import spec
from vit_parity.checkpoint import save as save_checkpoint
from vit_parity.data import batches, random_shift
from vit_parity.training import EpochMetrics, Progress, cross_entropy, warmup_cosine

__all__ = ["build", "fit", "optimizer", "predict", "save", "train_step"]

# How many times the train step has been traced (compiled); tests check that fit compiles it once.
TRACES = {"train_step": 0}


def build(arch: str, config: dict, *, seed: int = 0) -> nnx.Module:
    """The registry architecture ``arch`` built from ``config`` with parameters and dropout seeded by ``seed``."""
    cls = spec.get(arch).load_class("flax")
    return cls(**config, rngs=nnx.Rngs(seed))


def _decay_mask(params: nnx.State) -> nnx.State:
    return jax.tree.map(lambda p: p.ndim >= 2, params)


# One transformation for every run: the learning rate and weight decay are state (set per step and
# per run), not constants baked into the compiled step, so a new run of the same model reuses it.
_ADAMW = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
    learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, mask=_decay_mask
)


def optimizer(model: nnx.Module, *, weight_decay: float) -> nnx.Optimizer:
    """AdamW with weight decay on parameters of two or more axes only; ``train_step`` sets the rate."""
    opt = nnx.Optimizer(model, _ADAMW, wrt=nnx.Param)
    opt.opt_state.hyperparams["weight_decay"][...] = jnp.float32(weight_decay)
    return opt


def _train_step(
    model: nnx.Module, opt: nnx.Optimizer, x: jax.Array, y: jax.Array, lr: jax.Array, smoothing: jax.Array
) -> tuple[jax.Array, jax.Array]:
    TRACES["train_step"] += 1

    def loss_fn(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        logits = model(x)
        targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing)
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.opt_state.hyperparams["learning_rate"][...] = lr
    opt.update(model, grads)
    return loss, (logits.argmax(-1) == y).sum()


train_step = nnx.jit(_train_step)


@nnx.jit
def _forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


def _to_layout(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_first else x


def predict(model: nnx.Module, x: np.ndarray, *, batch_size: int = 256, channels_first: bool = True) -> np.ndarray:
    """Logits of ``model`` (in eval mode) for the batch ``x``, as float32 numpy.

    Every batch is padded to the same size (``min(batch_size, len(x))``) so one compilation serves all.
    """
    n = len(x)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    batch_size = min(batch_size, n)
    model.eval()
    out = []
    for idx in batches(n, batch_size):
        xb = _to_layout(np.asarray(x[idx], dtype=np.float32), channels_first)
        pad = batch_size - len(idx)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), dtype=xb.dtype)])
        out.append(np.asarray(_forward(model, jnp.asarray(xb)), dtype=np.float32)[: len(idx)])
    return np.concatenate(out)


def fit(
    model: nnx.Module,
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
    channels_first: bool = True,
    on_epoch: Callable[[EpochMetrics, nnx.Module], None] | None = None,
    progress: bool | Progress = True,
) -> list[EpochMetrics]:
    """Train ``model`` on ``train = (x, y)`` for ``epochs`` epochs; return each epoch's metrics.

    The same contract as ``vit_torch.train.fit``: full batches of a permutation drawn from
    ``(seed, epoch)``, ``shift`` pixel translations, resumable at ``start_epoch``. Dropout draws from
    the model's own ``nnx.Rngs``.
    """
    x, y = np.asarray(train[0], dtype=np.float32), np.asarray(train[1], dtype=np.int64)
    if len(x) == 0:
        raise ValueError("the training set is empty")
    batch_size = min(batch_size, len(x))
    steps = len(x) // batch_size
    total, warmup = epochs * steps, round(warmup_epochs * steps)
    opt = optimizer(model, weight_decay=weight_decay)
    smoothing = jnp.float32(label_smoothing)
    bar = progress if isinstance(progress, Progress) else Progress(epochs, steps, enabled=bool(progress))
    history: list[EpochMetrics] = []
    for epoch in range(start_epoch, epochs):
        bar.begin(epoch)
        start = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        loss_sum = correct = seen = 0.0
        model.train()
        for i, idx in enumerate(batches(len(x), batch_size, rng=rng if shuffle else None, drop_last=True)):
            step_lr = warmup_cosine(epoch * steps + i, total_steps=total, warmup_steps=warmup, peak_lr=lr)
            xb = jnp.asarray(_to_layout(random_shift(x[idx], shift, rng), channels_first))
            yb = jnp.asarray(y[idx], dtype=jnp.int32)
            loss, hits = train_step(model, opt, xb, yb, jnp.float32(step_lr), smoothing)
            loss_sum += float(loss) * len(idx)
            correct += float(hits)
            seen += len(idx)
            bar.update(i + 1, loss_sum / seen, correct / seen)
        eval_loss = eval_acc = None
        if eval is not None and len(eval[0]):
            logits = predict(model, eval[0], channels_first=channels_first)
            eval_loss = cross_entropy(logits, eval[1])
            eval_acc = float((logits.argmax(-1) == eval[1]).mean())
            model.train()
        metrics = EpochMetrics(
            epoch, step_lr, loss_sum / seen, correct / seen, eval_loss, eval_acc, time.perf_counter() - start
        )
        history.append(metrics)
        bar.end(metrics)
        if on_epoch is not None:
            on_epoch(metrics, model)
    model.eval()
    return history


def save(model: nnx.Module, path: str | os.PathLike[str], *, extra: dict | None = None) -> Path:
    """Save ``model`` atomically to the checkpoint folder ``path``, with ``extra`` in its config."""
    ckpt = to_checkpoint(model)
    ckpt.extra = dict(extra or {})
    return save_checkpoint(ckpt, path)
