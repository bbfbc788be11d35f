"""Training, evaluation and prediction for any vit_flax classifier, on numpy arrays.

Mirrors ``vit_torch.train``: optax AdamW (decoupled weight decay on the weights of linear and
convolution modules only) under the same linear-warmup + cosine schedule, the same seeded batches, the
same metrics. The training step (:func:`training_step`) is one ``jax.jit`` function of the
``nnx.split`` state of the model and its optimizer, which it donates: what ``fit`` runs is what
``bench/compare.py`` times. It compiles once per model structure and batch shape (the learning rate is
an argument, not a constant, so later runs of the same model reuse the compilation); prediction pads
the last batch so it compiles once too. Inputs are channels-first, as ``vit_parity.tools.data``
returns them (``channels_first=False`` for arrays already channels-last); the channel axis moves to
the end here. A model that takes something else than the batch array (NaViT's packed arrays) gets it
from a ``feed`` (see ``vit_parity.tools.adapters``). Every step reseeds the model's random streams from
``(seed, epoch, step)``, so a run stopped and resumed from its :class:`~vit_parity.core.loop.RunState`
(optimizer moments included) ends with the same weights, bit for bit, as one never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vit_flax.checkpoint import module_kinds, to_checkpoint
from vit_flax.init import init_weights
from vit_parity.core import spec
from vit_parity.core.checkpoint import save as save_checkpoint
from vit_parity.core.config import to_json
from vit_parity.core.loop import EpochMetrics, Progress, RunState, batches, run_epochs

__all__ = [
    "build", "compute_dtype", "decayed_parameters", "fit", "load_optimizer_state", "optimizer", "optimizer_state",
    "predict", "save", "training_step",
]  # fmt: skip
PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}

# How many times the training step has been traced (compiled); tests check that fit compiles it once.
TRACES = {"train_step": 0}

# Module kinds (vit_flax.checkpoint.module_kinds) whose weight (kernel) decays; nothing else does.
DECAYED_KINDS = ("linear", "conv")


def build(arch: str, config: dict, *, seed: int = 0, dtype: jnp.dtype | None = None) -> nnx.Module:
    """The registry architecture ``arch`` built from ``config`` with weights drawn from ``seed`` by the
    shared initializer (``vit_flax.init.init_weights``): the same as ``vit_torch.train.build`` gives.
    Dropout draws from ``nnx.Rngs(seed)``; ``dtype`` is the computation's (parameters stay float32).

    Raises ``TypeError`` when the config cannot be stored in a checkpoint (e.g. a callable argument), so
    that a run fails before training rather than at its first save.
    """
    cls = spec.get(arch).load_class("flax")
    rngs = nnx.Rngs(seed)
    model = cls(**spec.build_models(config, "flax", rngs=rngs), dtype=dtype, rngs=rngs)
    to_json(model.config)
    return init_weights(model, seed)


@contextlib.contextmanager
def compute_dtype(model: nnx.Module, precision: str) -> Iterator[nnx.Module]:
    """Within the context, ``model`` computes in ``precision`` ('fp32' as built, 'bf16' in bfloat16): the
    ``dtype`` of each of its modules is set as building it with ``dtype=`` would (parameters stay float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    saved = [(m, m.dtype) for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module) and hasattr(m, "dtype")]
    try:
        if dtype is not None:
            for module, _ in saved:
                module.dtype = dtype
        yield model
    finally:
        for module, value in saved:
            module.dtype = value


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def decayed_parameters(model: nnx.Module) -> list[str]:
    """Paths of the parameters AdamW decays: the kernels of linear and convolution modules."""
    kinds = module_kinds(model)
    return [
        _dotted(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))
        if path[-1] == "kernel" and kinds.get(_dotted(path[:-1])) in DECAYED_KINDS
    ]  # fmt: skip


def _key(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _decay_mask(decayed: frozenset[str], params: Any) -> Any:
    def leaf(path: tuple, _: Any) -> bool:
        names = [_key(k) for k in path]
        if names and names[-1] == "value":  # a Variable's value
            names = names[:-1]
        return ".".join(names) in decayed

    return jax.tree_util.tree_map_with_path(leaf, params)


@functools.lru_cache(maxsize=64)
def _adamw(decayed: frozenset[str]) -> optax.GradientTransformation:
    # One transformation per set of decayed parameters: the learning rate and weight decay are state
    # (set per step and per run), not constants, so a new run of the same model reuses the compilation.
    return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        mask=functools.partial(_decay_mask, decayed),
    )  # fmt: skip


def optimizer(model: nnx.Module, *, weight_decay: float) -> nnx.Optimizer:
    """AdamW with weight decay on :func:`decayed_parameters` only; the training step sets the rate."""
    opt = nnx.Optimizer(model, _adamw(frozenset(decayed_parameters(model))), wrt=nnx.Param)
    opt.opt_state.hyperparams["weight_decay"][...] = jnp.float32(weight_decay)
    return opt


# where AdamW's moments and update counts lie in an nnx.Optimizer of optax.inject_hyperparams(optax.adamw)
_MOMENTS = ("opt_state", "inner_state", 0)
_COUNTS = (("step",), ("opt_state", "count"), ("opt_state", "inner_state", 0, "count"))


def optimizer_state(opt: nnx.Optimizer | nnx.State) -> tuple[int, dict[str, dict[str, np.ndarray]]]:
    """AdamW's update count and moments ``{"mu": {path: array}, "nu": {path: array}}`` keyed by parameter path,
    of an :func:`optimizer` or of its state (``state[1]`` of :func:`training_step`)."""
    moments: dict[str, dict[str, np.ndarray]] = {"mu": {}, "nu": {}}
    steps = 0
    for path, var in nnx.to_flat_state(opt if isinstance(opt, nnx.State) else nnx.state(opt, nnx.OptState)):
        if path[:3] == _MOMENTS and len(path) > 4 and path[3] in moments:
            moments[path[3]][_dotted(path[4:])] = np.asarray(var[...]).copy()
        elif path == _COUNTS[0]:
            steps = int(var[...])
    return steps, moments


def load_optimizer_state(opt: nnx.Optimizer, steps: int, moments: dict[str, dict[str, np.ndarray]]) -> None:
    """Restore what :func:`optimizer_state` returned into ``opt`` (an :func:`optimizer` of the same model)."""
    flat = nnx.to_flat_state(nnx.state(opt, nnx.OptState))
    have = {(path[3], _dotted(path[4:])) for path, _ in flat if path[:3] == _MOMENTS and len(path) > 4}
    given = {(name, key) for name, d in moments.items() for key in d}
    if given - have:
        raise ValueError(f"the optimizer state does not fit this model: unknown {sorted(given - have)[:5]}")
    new = []
    for path, var in flat:
        value = None
        if path[:3] == _MOMENTS and len(path) > 4 and (path[3], _dotted(path[4:])) in given:
            value = np.asarray(moments[path[3]][_dotted(path[4:])])
            if value.shape != var[...].shape:
                raise ValueError(f"the optimizer state of {_dotted(path[4:])} is shaped {value.shape}, not {var.shape}")
        elif path in _COUNTS:
            value = np.asarray(steps)
        if value is not None:
            new.append((path, var.replace(jnp.asarray(value, dtype=var[...].dtype))))
    nnx.update(opt, nnx.from_flat_state(new))


def _reseed(model: nnx.Module, seed: jax.Array) -> None:
    """Give every random stream of ``model`` its own key drawn from ``seed`` (a step's :func:`dropout_seed`)."""
    base = jax.random.key(seed)
    streams = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)]
    for i, stream in enumerate(streams):
        stream.key[...] = jax.random.fold_in(base, i)
        stream.count[...] = jnp.zeros_like(stream.count[...])


def _call(model: nnx.Module, x: Any, feed: Any) -> jax.Array:
    if feed is None:
        return model(x)
    return feed.logits(model(*x))


def _make_step(graphdef: Any, feed: Any, label_smoothing: float) -> Callable:
    def step(
        state: nnx.State, x: Any, y: jax.Array, lr: jax.Array, seed: jax.Array
    ) -> tuple[nnx.State, jax.Array, jax.Array]:
        TRACES["train_step"] += 1
        model, opt = nnx.merge(graphdef, state)
        _reseed(model, seed)

        def loss_fn(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
            logits = _call(model, x, feed)
            targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), label_smoothing)
            return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.opt_state.hyperparams["learning_rate"][...] = lr
        opt.update(model, grads)
        return nnx.state((model, opt)), loss, (logits.argmax(-1) == y).sum()

    return jax.jit(step, donate_argnums=0)


# Compiled steps by (graphdef, feed, label smoothing): a graph definition holds the model's config (a
# dict), so it compares by value but does not hash; a short list searched by equality stands in.
_STEPS: list[tuple[tuple[Any, Any, float], Callable]] = []


def training_step(
    model: nnx.Module,
    *,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.0,
    feed: Any = None,
    resume: RunState | None = None,
) -> tuple[Callable, nnx.State]:
    """The training step and its initial state, the ``nnx.split`` state of ``model`` and a new AdamW
    :func:`optimizer` (the model is put in training mode first; ``resume`` restores the optimizer's moments).

    ``step(state, x, y, lr, seed)`` reseeds the model's random streams from ``seed`` (an int32 scalar) and runs
    forward, cross-entropy (``label_smoothing``), backward and the AdamW update at learning rate ``lr``; it
    returns ``(state, loss, correct predictions)``. It is ``jax.jit`` compiled with ``state`` donated, so the
    arrays of the state passed in (and of ``model``) are invalid afterwards: write the latest state back with
    ``nnx.update(model, state[0])`` (``state[1]`` is the optimizer's). ``x`` is the channels-last batch, or
    ``feed.inputs`` of the channels-first batch.
    """
    model.train()
    opt = optimizer(model, weight_decay=weight_decay)
    if resume is not None and resume.moments:
        load_optimizer_state(opt, resume.optimizer_steps, resume.moments)
    graphdef, state = nnx.split((model, opt))
    key = (graphdef, feed, float(label_smoothing))
    step = next((fn for cached, fn in _STEPS if cached == key), None)
    if step is None:
        step = _make_step(graphdef, feed, float(label_smoothing))
        _STEPS.append((key, step))
        del _STEPS[:-16]
    return step, state


@functools.partial(nnx.jit, static_argnames=("feed",))
def _forward(model: nnx.Module, x: Any, feed: Any = None) -> jax.Array:
    return _call(model, x, feed)


def _to_layout(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_first else x


def _inputs(x: np.ndarray, feed: Any, channels_first: bool) -> Any:
    """The model's input(s) for the batch ``x`` as JAX arrays: the array itself, or ``feed.inputs(x)``."""
    if feed is None:
        return jnp.asarray(_to_layout(x, channels_first))
    if not channels_first:
        x = np.moveaxis(x, -1, 1)
    return tuple(spec.map_arrays(jnp.asarray, tuple(feed.inputs(x))))


def _modes(model: nnx.Module) -> list[tuple[nnx.Module, str, Any]]:
    """The train/eval switches (``deterministic``, ``use_running_average``) of every submodule, as set now."""
    return [
        (module, name, getattr(module, name))
        for _, module in nnx.iter_graph(model)
        if isinstance(module, nnx.Module)
        for name in ("deterministic", "use_running_average")
        if hasattr(module, name)
    ]


def predict(
    model: nnx.Module,
    x: np.ndarray,
    *,
    batch_size: int = 256,
    channels_first: bool = True,
    feed: Any = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Logits of ``model`` (in eval mode; its mode is restored) for the batch ``x``, as float32 numpy.

    Every batch is padded to the same size (``min(batch_size, len(x))``) so one compilation serves all.
    ``feed`` (a ``vit_parity.tools.adapters.Feed``) builds the inputs of a model that does not take the
    batch array (NaViT's packed arrays) and reads its per-sample logits. ``precision='bf16'`` computes in
    bfloat16 (:func:`compute_dtype`).
    """
    n = len(x)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    batch_size = min(batch_size, n)
    modes = _modes(model)
    model.eval()
    out = []
    try:
        for idx in batches(n, batch_size):
            xb = np.asarray(x[idx], dtype=np.float32)
            pad = batch_size - len(idx)
            if pad:
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), dtype=xb.dtype)])
            with compute_dtype(model, precision):
                logits = _forward(model, _inputs(xb, feed, channels_first), feed=feed)
            out.append(np.asarray(logits, dtype=np.float32)[: len(idx)])
    finally:
        for module, name, value in modes:
            setattr(module, name, value)
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
    resume: RunState | None = None,
    shuffle: bool = True,
    channels_first: bool = True,
    feed: Any = None,
    precision: str = "fp32",
    compile: bool = True,
    on_epoch: Callable[[EpochMetrics, nnx.Module], None] | None = None,
    on_checkpoint: Callable[[RunState, nnx.Module, EpochMetrics | None], None] | None = None,
    stop: Callable[[], bool] | None = None,
    progress: bool | Progress = True,
) -> list[EpochMetrics]:
    """Train ``model`` on ``train = (x, y)`` for ``epochs`` epochs; return each epoch's metrics.

    The same contract as ``vit_torch.train.fit``: full batches of a permutation drawn from
    ``(seed, epoch)``, each step's ``shift`` pixel translations and dropout drawn from ``(seed, epoch,
    step)``, ``on_epoch`` and ``on_checkpoint`` after every epoch, a clean stop when ``stop()`` turns true
    (:class:`~vit_parity.core.loop.Interrupted`), ``resume`` from a :class:`RunState` ending where an
    uninterrupted run does. ``precision='bf16'`` computes in bfloat16 (:func:`compute_dtype`; parameters
    and AdamW stay float32). The step is always compiled (``compile`` is accepted for symmetry). Each step
    is :func:`training_step`; ``model`` holds the trained weights whenever ``on_epoch`` runs and when
    ``fit`` returns. ``feed`` (see :func:`predict`) turns each batch into the model's inputs.
    """
    del compile  # the step is jax.jit compiled whatever is asked
    run = resume if resume is not None else RunState(epoch=start_epoch)
    with compute_dtype(model, precision):
        step, state = training_step(
            model, weight_decay=weight_decay, label_smoothing=label_smoothing, feed=feed, resume=run
        )

        def train_step(xb: np.ndarray, yb: np.ndarray, step_lr: float, seed: int) -> tuple[float, float]:
            nonlocal state
            batch = _inputs(xb, feed, channels_first)
            labels = jnp.asarray(yb, dtype=jnp.int32)
            state, loss, hits = step(state, batch, labels, jnp.float32(step_lr), jnp.int32(seed))
            return float(loss), float(hits)

        def sync() -> None:
            nnx.update(model, state[0])  # the step donated the model's arrays: hand it the latest ones

        def snapshot(epoch: int, i: int, sums: tuple[float, float, int]) -> RunState:
            sync()
            count, moments = optimizer_state(state[1])
            return RunState(epoch, i, *sums, optimizer_steps=count, moments=moments)

        history = run_epochs(
            train, eval, train_step, model=model, snapshot=snapshot, end_epoch=sync,
            predict=lambda held_out: predict(
                model, held_out, channels_first=channels_first, feed=feed, precision=precision
            ),
            epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs, shift=shift, seed=seed,
            shuffle=shuffle, run=run, on_epoch=on_epoch, on_checkpoint=on_checkpoint, stop=stop, progress=progress,
        )  # fmt: skip
    model.eval()
    return history


def save(
    model: nnx.Module,
    path: str | os.PathLike[str],
    *,
    extra: dict | None = None,
    optimizer: dict[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """Save ``model`` atomically to the checkpoint folder ``path``, with ``extra`` in its config and the
    optimizer ``moments`` of a run (:func:`optimizer_state`) when given."""
    ckpt = to_checkpoint(model)
    ckpt.extra = dict(extra or {})
    ckpt.optimizer = dict(optimizer or {})
    return save_checkpoint(ckpt, path)
