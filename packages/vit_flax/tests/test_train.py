"""vit_flax.train: the training loop (one compilation), the optimizer step, prediction, checkpoints."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vit_flax
from vit_flax import train
from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core.loop import warmup_cosine

CONFIG = dict(image_size=8, patch_size=4, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8, channels=1)


def stripes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy channels-first images of stripes; the label is the pattern (as in vit_torch's test)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    r, c = np.mgrid[0:8, 0:8]
    patterns = [r % 2, c % 2, (r + c) % 4 // 2, (r // 2 + c // 2) % 2]
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0] += patterns[label]
    return x, y.astype(np.int64)


def params(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_fit_learns_compiles_once_and_is_reproducible() -> None:
    train_set, eval_set = stripes(256, 0), stripes(64, 1)
    models, histories = [], []
    traces = []
    for _ in range(2):
        model = train.build("vit", CONFIG, seed=3)
        before = train.TRACES["train_step"]
        histories.append(train.fit(model, train_set, eval_set, epochs=4, batch_size=16, lr=3e-3, progress=False))
        models.append(model)
        traces.append(train.TRACES["train_step"] - before)
    # one compilation serves all 64 steps (none if an earlier test compiled this model), and the next run
    assert traces[0] <= 1 and traces[1] == 0
    h = histories[0]
    assert [m.epoch for m in h] == [0, 1, 2, 3]
    assert h[-1].train_loss < h[0].train_loss / 2 and h[-1].eval_acc >= 0.9  # chance is 0.25
    assert h[-1].lr == pytest.approx(warmup_cosine(63, total_steps=64, warmup_steps=16, peak_lr=3e-3), rel=1e-5)
    for a, b in zip(params(models[0]), params(models[1])):
        np.testing.assert_array_equal(a, b)  # same seed, same weights


def test_weight_decay_is_for_linear_and_conv_weights_only() -> None:
    model = train.build("vit", CONFIG, seed=0)
    kinds = vit_flax.checkpoint.module_kinds(model)
    decayed = train.decayed_parameters(model)
    want = sorted(f"{path}.kernel" for path, kind in kinds.items() if kind in ("linear", "conv"))
    assert sorted(decayed) == want and len(want) == 6  # patch projection, qkv, out, fc1, fc2, head (one block)
    assert not any(k.startswith(("pos_embedding", "cls_token")) or "norm" in k for k in decayed)
    # the optimizer decays exactly these: see the next test


def test_resumed_step_is_adamw_with_decay_on_linear_and_conv_weights_only() -> None:
    x, y = stripes(16)
    model = train.build("vit", CONFIG, seed=0)
    before = nnx.clone(model)

    @nnx.jit
    def grad_fn(m: nnx.Module) -> nnx.State:
        def loss_fn(m: nnx.Module) -> jax.Array:
            logits = m(jnp.asarray(np.moveaxis(x, 1, -1)))
            return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

        return nnx.grad(loss_fn)(m)

    grads = grad_fn(before)
    decayed = set(train.decayed_parameters(before))
    lr, wd = 1e-2, 0.1
    seen = []
    # resume a two-epoch run of one full batch per epoch at epoch 1: a single step at half the peak rate
    h = train.fit(model, (x, y), epochs=2, batch_size=16, lr=lr, weight_decay=wd, warmup_epochs=0, start_epoch=1,
                  progress=False, on_epoch=lambda m, mod: seen.append((m.epoch, mod is model)))  # fmt: skip
    assert [m.epoch for m in h] == [1] and seen == [(1, True)] and h[0].eval_acc is None
    step_lr = warmup_cosine(1, total_steps=2, warmup_steps=0, peak_lr=lr)
    assert step_lr == pytest.approx(lr / 2)
    flat0 = dict(nnx.to_flat_state(nnx.state(before, nnx.Param)))
    flat1 = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, g in nnx.to_flat_state(grads):
        p0, p1, g = np.asarray(flat0[path][...]), np.asarray(flat1[path][...]), np.asarray(g[...])
        decay = wd if ".".join(map(str, path)) in decayed else 0.0
        # Adam's first step with bias correction moves by g / (|g| + eps); decoupled decay on weights
        want = p0 - step_lr * (g / (np.abs(g) + 1e-8) + decay * p0)
        np.testing.assert_allclose(p1, want, rtol=1e-5, atol=1e-6, err_msg=str(path))
    with pytest.raises(ValueError, match="empty"):
        train.fit(model, (x[:0], y[:0]), progress=False)


def test_predict_pads_batches_and_takes_either_layout() -> None:
    x, _ = stripes(70)
    model = train.build("vit", CONFIG, seed=0)
    logits = train.predict(model, x, batch_size=64)  # a full batch and a padded one
    want = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(np.moveaxis(x, 1, -1))))
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
    channels_last = train.predict(model, np.moveaxis(x, 1, -1), batch_size=64, channels_first=False)
    np.testing.assert_allclose(channels_last, want, rtol=1e-5, atol=1e-6)


def test_predict_restores_the_mode() -> None:
    x, _ = stripes(20)
    model = train.build("vit", dict(CONFIG, dropout=0.5), seed=0)
    dropouts = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Dropout)]
    assert dropouts
    model.train()
    logits = train.predict(model, x)
    assert not any(m.deterministic for m in dropouts)  # left in training mode, as it was
    model.eval()
    want = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(np.moveaxis(x, 1, -1))))
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)  # predicted in eval mode
    train.predict(model, x)
    assert all(m.deterministic for m in dropouts)


def test_save_keeps_extra_and_weights(tmp_path: Path) -> None:
    x, _ = stripes(64)
    model = train.build("vit", CONFIG, seed=1)
    extra = {"classes": ["a", "b", "c", "d"], "preprocess": {"size": [8, 8]}}
    train.save(model, tmp_path / "ckpt", extra=extra)
    assert ckpt_io.load(tmp_path / "ckpt").extra == extra
    np.testing.assert_array_equal(train.predict(vit_flax.load(tmp_path / "ckpt"), x), train.predict(model, x))


def test_bf16_training_and_prediction() -> None:
    """``precision='bf16'`` computes as a model built with ``dtype=bfloat16`` does; the weights stay float32 and
    the predictions mostly those of float32."""
    x, y = stripes(32)
    config = dict(image_size=8, patch_size=4, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=32, channels=1)
    model = train.build("vit", config, seed=1)
    train.fit(model, (x, y), epochs=1, batch_size=16, lr=3e-3, precision="bf16", progress=False)
    assert {v[...].dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    built_low = train.build("vit", config, dtype=jnp.bfloat16)
    nnx.update(built_low, nnx.state(model, nnx.Param))
    bf16, fp32 = train.predict(model, x, precision="bf16"), train.predict(model, x)
    np.testing.assert_array_equal(bf16, train.predict(built_low, x))
    assert not np.array_equal(fp32, bf16) and np.abs(fp32 - bf16).max() < 0.1
    assert (fp32.argmax(-1) == bf16.argmax(-1)).mean() >= 0.9
    with pytest.raises(ValueError, match="precision must be one of"):
        train.predict(model, x, precision="fp16")
