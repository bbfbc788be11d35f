"""vit_torch.train: the training loop, the optimizer step, prediction and checkpoints with extras."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vit_torch
from vit_parity.core import checkpoint as ckpt_io
from vit_parity.core.loop import warmup_cosine
from vit_torch import train


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIG = dict(image_size=8, patch_size=4, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8, channels=1)


def stripes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images of stripes; the label is the pattern (rows, columns, diagonals, checkerboard)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    r, c = np.mgrid[0:8, 0:8]
    patterns = [r % 2, c % 2, (r + c) % 4 // 2, (r // 2 + c // 2) % 2]
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0] += patterns[label]
    return x, y.astype(np.int64)


def test_fit_learns_and_is_reproducible() -> None:
    train_set, eval_set = stripes(256, 0), stripes(64, 1)
    models, histories = [], []
    for _ in range(2):
        model = train.build("vit", CONFIG, seed=3)
        histories.append(train.fit(model, train_set, eval_set, epochs=4, batch_size=16, lr=3e-3, progress=False))
        models.append(model)
    h = histories[0]
    assert [m.epoch for m in h] == [0, 1, 2, 3]
    assert h[-1].train_loss < h[0].train_loss / 2 and h[-1].eval_acc >= 0.9  # chance is 0.25
    assert h[-1].lr == pytest.approx(warmup_cosine(4 * 16 - 1, total_steps=64, warmup_steps=16, peak_lr=3e-3))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed, same weights
    assert not models[0].training


def test_weight_decay_is_for_linear_and_conv_weights_only() -> None:
    model = train.build("vit", CONFIG, seed=0)
    kinds = vit_torch.checkpoint.module_kinds(model)
    decayed = train.decayed_parameters(model)
    want = sorted(f"{path}.weight" for path, kind in kinds.items() if kind in ("linear", "conv"))
    assert sorted(decayed) == want and len(want) == 6  # patch projection, qkv, out, fc1, fc2, head (one block)
    assert not any(k.startswith(("pos_embedding", "cls_token")) or "norm" in k for k in decayed)
    groups = train.optimizer(model, lr=1e-3, weight_decay=0.1).param_groups
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert sorted(by_id[id(p)] for p in groups[0]["params"]) == want and groups[0]["weight_decay"] == 0.1
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == len(by_id) - len(want)


def test_resumed_step_is_adamw_with_decay_on_linear_and_conv_weights_only() -> None:
    x, y = stripes(16)
    model = train.build("vit", CONFIG, seed=0)
    before = copy.deepcopy(model)
    loss = F.cross_entropy(before(torch.from_numpy(x)), torch.from_numpy(y))
    grads = torch.autograd.grad(loss, list(before.parameters()))
    decayed = set(train.decayed_parameters(before))
    lr, wd = 1e-2, 0.1
    seen = []
    # resume a two-epoch run of one full batch per epoch at epoch 1: a single step at half the peak rate
    h = train.fit(model, (x, y), epochs=2, batch_size=16, lr=lr, weight_decay=wd, warmup_epochs=0, start_epoch=1,
                  progress=False, on_epoch=lambda m, mod: seen.append((m.epoch, mod is model)))  # fmt: skip
    assert [m.epoch for m in h] == [1] and seen == [(1, True)] and h[0].eval_acc is None
    step_lr = warmup_cosine(1, total_steps=2, warmup_steps=0, peak_lr=lr)
    assert step_lr == pytest.approx(lr / 2)
    for (name, p0), g, p1 in zip(before.named_parameters(), grads, model.parameters()):
        decay = wd if name in decayed else 0.0
        # Adam's first step with bias correction moves by g / (|g| + eps); AdamW decays first
        want = p0.detach() * (1 - step_lr * decay) - step_lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p1.detach(), want, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="empty"):
        train.fit(model, (x[:0], y[:0]), progress=False)


def test_predict_batches_and_restores_mode() -> None:
    x, _ = stripes(70)
    model = train.build("vit", dict(CONFIG, dropout=0.5), seed=0).train()
    logits = train.predict(model, x, batch_size=64)
    assert model.training  # left as it was
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)


def test_save_keeps_extra_and_weights(tmp_path: Path) -> None:
    x, _ = stripes(64)
    model = train.build("vit", CONFIG, seed=1)
    extra = {"classes": ["a", "b", "c", "d"], "preprocess": {"size": [8, 8]}}
    train.save(model, tmp_path / "ckpt", extra=extra)
    assert ckpt_io.load(tmp_path / "ckpt").extra == extra
    np.testing.assert_array_equal(train.predict(vit_torch.load(tmp_path / "ckpt"), x), train.predict(model, x))


def test_compiled_and_bf16_training() -> None:
    """``compile`` trains through torch.compile (the same losses as eager); ``precision='bf16'`` through CPU
    autocast: the weights stay float32 and the predictions mostly those of float32."""
    x, y = stripes(48)
    config = dict(image_size=8, patch_size=4, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=32, channels=1)
    kw = dict(epochs=2, batch_size=16, lr=3e-3, progress=False)
    eager, compiled = train.build("vit", config, seed=1), train.build("vit", config, seed=1)
    want = [m.train_loss for m in train.fit(eager, (x, y), **kw)]
    got = [m.train_loss for m in train.fit(compiled, (x, y), compile="aot_eager", **kw)]
    np.testing.assert_allclose(got, want, rtol=1e-5)

    low = train.build("vit", config, seed=1)
    train.fit(low, (x, y), precision="bf16", **kw)
    assert {p.dtype for p in low.parameters()} == {torch.float32}
    fp32, bf16 = train.predict(low, x), train.predict(low, x, precision="bf16")
    assert not np.array_equal(fp32, bf16) and np.abs(fp32 - bf16).max() < 0.1
    assert (fp32.argmax(-1) == bf16.argmax(-1)).mean() >= 0.9
    with pytest.raises(ValueError, match="precision must be one of"):
        train.predict(low, x, precision="fp16")
