"""Distillation in flax: the students' distillation pass against a recomputation from their parameters,
``to_vit``, the wrapper's loss against one written out, an optimizer that leaves the teacher alone (``TRAINABLE``),
checkpoints and bad input (the README's flax example runs in vit_parity's README test)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vit_flax
from vit_flax.distill import (
    TRAINABLE,
    DistillableEfficientViT,
    DistillableT2TViT,
    DistillableViT,
    DistillWrapper,
    distillation_loss,
)
from vit_flax.efficient import Transformer as EfficientTransformer
from vit_flax.efficient import ViT as EfficientViT
from vit_flax.t2t import T2TViT
from vit_flax.vit import ViT

Array = jax.Array
VIT = dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)
T2T = dict(image_size=16, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8, t2t_layers=((2, 2), (2, 2)))
TEACHER = dict(VIT, depth=1)
LABELS = jnp.array([1, 4])


def student(pool: str = "cls", **kw: object) -> DistillableViT:
    model = DistillableViT(**{**VIT, "pool": pool, **kw}, rngs=nnx.Rngs(0))
    model.eval()
    return model


def t2t_student(**kw: object) -> DistillableT2TViT:
    model = DistillableT2TViT(**{**T2T, **kw}, rngs=nnx.Rngs(0))
    model.eval()
    return model


def wrapper(**kw: object) -> DistillWrapper:
    w = DistillWrapper(teacher=ViT(**TEACHER, rngs=nnx.Rngs(1)), student=student(), **kw, rngs=nnx.Rngs(2))
    w.eval()
    return w


def images(b: int = 2) -> Array:
    return jax.random.normal(jax.random.key(3), (b, 16, 16, 3))


def params(model: nnx.Module) -> dict[str, Array]:
    return {".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def numpy_params(model: nnx.Module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in params(model).items()}


# --- an independent computation from the parameters, in numpy (float64) --------------------------------------


def layer_norm(x: np.ndarray, p: dict[str, np.ndarray], name: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p[f"{name}.scale"] + p[f"{name}.bias"]


def linear(x: np.ndarray, p: dict[str, np.ndarray], name: str) -> np.ndarray:
    y = x @ p[f"{name}.kernel"]
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def transformer(x: np.ndarray, p: dict[str, np.ndarray], depth: int, heads: int) -> np.ndarray:
    """Pre-norm blocks (softmax attention written out, exact GELU through erf) and the final norm."""
    b, n, _ = x.shape
    erf = np.vectorize(math.erf)
    for i in range(depth):
        blk = f"transformer.blocks.{i}"
        qkv = linear(layer_norm(x, p, f"{blk}.norm1"), p, f"{blk}.attn.to_qkv")
        q, k, v = (t.reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
        attn = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]))
        x = x + linear((attn @ v).transpose(0, 2, 1, 3).reshape(b, n, -1), p, f"{blk}.attn.to_out")
        h = linear(layer_norm(x, p, f"{blk}.norm2"), p, f"{blk}.ff.fc1")
        x = x + linear(0.5 * h * (1 + erf(h / math.sqrt(2))), p, f"{blk}.ff.fc2")
    return layer_norm(x, p, "transformer.norm")


def heads_of(x: np.ndarray, p: dict[str, np.ndarray], pool: str) -> tuple[np.ndarray, np.ndarray]:
    """The class head on the pooled tokens (the distillation token, last, left out), the distillation head on it."""
    body = x[:, :-1]
    pooled = body[:, 0] if pool == "cls" else body.mean(1)
    return linear(pooled, p, "mlp_head"), linear(x[:, -1], p, "distill_head")


def vit_sequence_by_hand(model: DistillableViT, img: Array) -> np.ndarray:
    """The transformer's output on the distillation pass: class token, patches, distillation token."""
    p, img = numpy_params(model), np.asarray(img, np.float64)
    b, h, w, c = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, ph * pw * c)
    x = layer_norm(linear(layer_norm(patches, p, "to_patch_embedding.pre_norm"), p, "to_patch_embedding.proj"), p,
                   "to_patch_embedding.post_norm")  # fmt: skip
    pos = p["pos_embedding"]
    cls = np.broadcast_to(p["cls_token"] + pos[:, :1], (b, 1, x.shape[-1]))
    token = np.broadcast_to(p["distillation_token"], (b, 1, x.shape[-1]))  # after the patches, no position
    x = np.concatenate((cls, x + pos[:, 1:], token), axis=1)
    return transformer(x, p, model.config["depth"], model.config["heads"])


def vit_distill_by_hand(model: DistillableViT, img: Array) -> tuple[np.ndarray, np.ndarray]:
    return heads_of(vit_sequence_by_hand(model, img), numpy_params(model), model.pool)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_the_distillation_pass_is_the_vit_with_a_token_appended(pool: str) -> None:
    model, img = student(pool), images()
    logits, distill = model(img, distill=True)
    want_logits, want_distill = vit_distill_by_hand(model, img)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distill, want_distill, rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits, model(img), atol=1e-4)  # the token attends with the others


def test_the_t2t_student_appends_the_token_after_its_tokens_to_token_stage() -> None:
    model, img = t2t_student(pool="mean"), images()
    p = numpy_params(model)
    x = np.asarray(model.tokens(img), np.float64)  # T2T's own stage (tested in test_t2t)
    x = np.concatenate((x, np.broadcast_to(p["distillation_token"], (2, 1, 16))), axis=1)
    want_logits, want_distill = heads_of(transformer(x, p, 1, 2), p, "mean")
    logits, distill = model(img, distill=True)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distill, want_distill, rtol=1e-5, atol=1e-5)


# --- the default call is the plain model, to_vit ------------------------------------------------------------------


@pytest.mark.parametrize("make", [student, t2t_student], ids=["vit", "t2t"])
def test_the_default_call_is_the_plain_model_and_to_vit_keeps_its_weights(make: object) -> None:
    model, img = make(), images()
    plain = model.to_vit()
    assert type(plain) is (ViT if isinstance(model, DistillableViT) else T2TViT)
    assert plain.dropout.deterministic  # the student's eval mode
    np.testing.assert_array_equal(model(img), plain(img))
    assert set(params(model)) - set(params(plain)) == {
        "distillation_token", "distill_head.kernel", "distill_head.bias",
    }  # fmt: skip
    assert plain.config == model.config
    before = model(img)
    model.distillation_token[...] = model.distillation_token[...] + 1.0  # the default call never reads it
    np.testing.assert_array_equal(model(img), before)
    plain.mlp_head.kernel[...] = plain.mlp_head.kernel[...] + 1.0  # a copy
    np.testing.assert_array_equal(model(img), before)


def test_to_vit_keeps_the_compute_dtype_and_a_users_transformer() -> None:
    model = DistillableViT(**VIT, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert model.to_vit().mlp_head.dtype == jnp.bfloat16
    body = vit_flax.layers.Transformer(16, 1, 2, 8, 32, rngs=nnx.Rngs(5))
    t = DistillableT2TViT(image_size=16, num_classes=5, dim=16, transformer=body, t2t_layers=((2, 2), (2, 2)))
    t.eval()
    plain = t.to_vit()
    assert plain.transformer is not t.transformer
    np.testing.assert_array_equal(plain(images()), t(images()))


def test_features_on_both_calls() -> None:
    model, img = student(), images()
    (logits, distill), f = model(img, distill=True, return_features=True, return_attn=True)
    _, g = model(img, return_features=True)
    assert list(f) == ["block00/attn", "block00", "block01/attn", "block01", "pre_logits"]
    assert list(g) == ["block00", "block01", "pre_logits"]
    assert f["block00"].shape == (2, 6, 16) and f["block00/attn"].shape == (2, 2, 6, 6)
    np.testing.assert_allclose(model.mlp_head(f["pre_logits"]), logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(distill, model(img, distill=True)[1], rtol=1e-5, atol=1e-6)


# --- the wrapper's loss ---------------------------------------------------------------------------------------


def loss_by_hand(w: DistillWrapper, img: Array, labels: Array, t: float, alpha: float) -> float:
    s, p = w.student, numpy_params(w.student)
    logits, _ = vit_distill_by_hand(s, img)
    x = vit_sequence_by_hand(s, img)[:, -1]
    if w.distill_norm is not None:
        x = layer_norm(x, numpy_params(w), "distill_norm")
    distill = linear(x, p, "distill_head")
    teacher, labels = np.asarray(w.teacher(img), np.float64), np.asarray(labels)
    ce = -log_softmax(logits)[np.arange(2), labels].mean()
    if w.hard:
        d = -log_softmax(distill)[np.arange(2), teacher.argmax(-1)].mean()
    else:
        target = softmax(teacher / t)
        d = (target * (np.log(target) - log_softmax(distill / t))).sum() / 2 * t**2
    return (1 - alpha) * ce + alpha * d


@pytest.mark.parametrize(
    ("options", "call"),
    [
        (dict(temperature=3.0, alpha=0.5), {}),
        (dict(temperature=2.0, alpha=0.3, mlp_layernorm=True), {}),
        (dict(hard=True, alpha=0.7), {}),
        (dict(temperature=3.0, alpha=0.5), dict(temperature=0.5, alpha=0.9)),  # overridden per call
    ],
)
def test_the_loss_is_the_weighted_sum_of_the_class_and_distillation_losses(options: dict, call: dict) -> None:
    w, img = wrapper(**options), images()
    t, alpha = call.get("temperature", w.temperature), call.get("alpha", w.alpha)
    got = w(img, LABELS, **call)
    assert got.shape == ()
    np.testing.assert_allclose(got, loss_by_hand(w, img, LABELS, t, alpha), rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_the_class_loss_and_features_are_the_students() -> None:
    w, img = wrapper(), images()
    ce = optax.softmax_cross_entropy_with_integer_labels(w.student(img, distill=True)[0], LABELS).mean()
    np.testing.assert_allclose(w(img, LABELS, alpha=0.0), ce, rtol=1e-6)
    loss, f = w(img, LABELS, return_features=True)
    assert list(f) == ["block00", "block01", "pre_logits"] and f["block00"].shape == (2, 6, 16)
    np.testing.assert_array_equal(loss, w(img, LABELS))


# --- the teacher stays as it is -----------------------------------------------------------------------------


def test_an_optimizer_over_trainable_never_moves_the_teacher() -> None:
    w, img = wrapper(temperature=2.0), images()
    w.train()
    assert w.teacher.dropout.deterministic and not w.student.dropout.deterministic  # the teacher stays in eval
    teacher, student_before = params(w.teacher), params(w.student)
    opt = nnx.Optimizer(w, optax.adamw(1e-2, weight_decay=0.1), wrt=TRAINABLE)

    @nnx.jit
    def step(w: DistillWrapper, opt: nnx.Optimizer) -> nnx.State:
        grads = nnx.grad(lambda m: m(img, LABELS))(w)
        opt.update(w, nnx.filter_state(grads, TRAINABLE))  # as nnx.grad(..., argnums=nnx.DiffState(0, TRAINABLE))
        return grads

    grads = step(w, opt)
    teacher_grads = [v[...] for k, v in nnx.to_flat_state(grads) if k[0] == "teacher"]
    assert teacher_grads and not any(bool(jnp.any(g)) for g in teacher_grads)  # stop_gradient
    for k, v in params(w.teacher).items():
        np.testing.assert_array_equal(v, teacher[k])
    assert all(not np.array_equal(v, student_before[k]) for k, v in params(w.student).items())
    # a zero gradient does not keep a parameter still: weight decay moves whatever the optimizer holds
    kernel = teacher["mlp_head.kernel"]
    tx = optax.adamw(1e-2, weight_decay=0.1)
    assert bool(jnp.any(tx.update(jnp.zeros_like(kernel), tx.init(kernel), kernel)[0]))


class TinyCNN(nnx.Module):
    """A teacher that is no registry model (channels-last)."""

    def __init__(self, num_classes: int = 5, *, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(3, 8, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, num_classes, rngs=rngs)

    def __call__(self, img: Array) -> Array:
        return self.head(jax.nn.relu(self.norm(self.conv(img))).mean((1, 2)))


def test_any_module_or_callable_teaches_and_batch_statistics_stay() -> None:
    cnn = TinyCNN(rngs=nnx.Rngs(0))
    w = DistillWrapper(teacher=cnn, student=student(), hard=True)
    w.train()
    assert cnn.norm.use_running_average and not w.student.dropout.deterministic
    stats = cnn.norm.mean[...]
    w(images(), LABELS)  # a training call
    np.testing.assert_array_equal(cnn.norm.mean[...], stats)
    w2 = DistillWrapper(teacher=lambda img: jnp.tile(img.mean((1, 2)), 2)[:, :5], student=student())
    assert bool(jnp.isfinite(w2(images(), LABELS)))


# --- checkpoints ----------------------------------------------------------------------------------------------


def test_a_student_checkpoint_is_complete(tmp_path: Path) -> None:
    model, img = student(), images()
    vit_flax.save(model, tmp_path / "student")
    again = vit_flax.load(tmp_path / "student")
    assert isinstance(again, DistillableViT)
    for a, b in zip(again(img, distill=True), model(img, distill=True)):
        np.testing.assert_array_equal(a, b)


def test_a_wrapper_of_registry_models_saves_and_loads(tmp_path: Path) -> None:
    w, img = wrapper(mlp_layernorm=True), images()
    assert w.config["teacher"]["__model__"] == "vit" and w.config["student"]["__model__"] == "distill"
    vit_flax.save(w, tmp_path / "wrapper")
    again = vit_flax.load(tmp_path / "wrapper")
    assert isinstance(again.student, DistillableViT) and again.distill_norm is not None
    np.testing.assert_array_equal(again(img, LABELS), w(img, LABELS))


def test_a_wrapper_with_another_teacher_says_to_save_the_student(tmp_path: Path) -> None:
    w = DistillWrapper(teacher=TinyCNN(rngs=nnx.Rngs(0)), student=student())
    with pytest.raises(TypeError, match=r"teacher is no registry model.*save the student instead"):
        vit_flax.save(w, tmp_path / "wrapper")
    assert not (tmp_path / "wrapper").exists()
    vit_flax.save(w.student, tmp_path / "student")


# --- bad input --------------------------------------------------------------------------


def test_bad_arguments_are_named() -> None:
    s, img = student(), images()
    with pytest.raises(ValueError, match=r"student must be a DistillableViT or DistillableT2TViT.*got ViT"):
        DistillWrapper(teacher=ViT(**TEACHER), student=ViT(**VIT))
    with pytest.raises(ValueError, match="teacher gives logits over 7 classes, the student has 5"):
        DistillWrapper(teacher=ViT(**{**TEACHER, "num_classes": 7}), student=s)
    with pytest.raises(ValueError, match="teacher gives logits over 3 classes, the student has 5"):
        DistillWrapper(teacher=TinyCNN(3, rngs=nnx.Rngs(0)), student=s)(img, LABELS)
    with pytest.raises(ValueError, match="teacher must be an nnx module or callable"):
        DistillWrapper(teacher=3, student=s)
    for bad in (0, -1.0, "3"):
        with pytest.raises(ValueError, match="temperature must be a number > 0"):
            DistillWrapper(teacher=lambda x: x, student=s, temperature=bad)
    for bad in (-0.1, 1.5, None):
        with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
            DistillWrapper(teacher=lambda x: x, student=s, alpha=bad)
    w = DistillWrapper(teacher=TinyCNN(rngs=nnx.Rngs(0)), student=s)
    with pytest.raises(ValueError, match="temperature must be a number > 0, got 0"):
        w(img, LABELS, temperature=0)
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 2"):
        w(img, LABELS, alpha=2)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\).*got \(2, 5\)"):
        w(img, jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="img"):
        w(jnp.zeros((2, 12, 16, 3)), LABELS)
    with pytest.raises(TypeError):
        s(img, True)  # the flag is keyword-only


# --- the efficient-attention student (a ViT around a transformer of one's choice) ----------------------------------


class TokenMixer(nnx.Module):
    """A user-written transformer: not a library one."""

    def __init__(self, dim: int = 16, *, rngs: nnx.Rngs) -> None:
        self.fc = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return x + jnp.tanh(self.fc(x)) * x.mean(1, keepdims=True)


def efficient_student(pool: str = "cls", transformer: nnx.Module | None = None) -> DistillableEfficientViT:
    body = transformer if transformer is not None else EfficientTransformer(16, 2, 2, 8, 32, rngs=nnx.Rngs(1))
    model = DistillableEfficientViT(
        image_size=16, patch_size=8, num_classes=5, dim=16, transformer=body, pool=pool, rngs=nnx.Rngs(0)
    )
    model.eval()
    return model


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_the_efficient_student_appends_the_token_to_its_transformer(pool: str) -> None:
    model, img = efficient_student(pool), images()
    p = numpy_params(model)
    x = np.asarray(model.tokens(img), np.float64)  # the shell's own tokens (tested in test_efficient)
    x = transformer(np.concatenate((x, np.broadcast_to(p["distillation_token"], (2, 1, 16))), axis=1), p, 2, 2)
    body = x[:, :-1]
    pooled = body[:, 0] if pool == "cls" else body.mean(1)
    want_logits = linear(layer_norm(pooled, p, "mlp_head.norm"), p, "mlp_head.fc")  # the head's LayerNorm, Linear
    logits, distill = model(img, distill=True)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distill, linear(x[:, -1], p, "distill_head"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits, model(img), atol=1e-4)  # the token attends with the others


@pytest.mark.parametrize("user", [False, True], ids=["library-transformer", "user-transformer"])
def test_the_efficient_student_default_call_is_the_plain_model_and_to_vit_copies_it(user: bool) -> None:
    model, img = efficient_student(transformer=TokenMixer(rngs=nnx.Rngs(2)) if user else None), images()
    plain = model.to_vit()
    assert type(plain) is EfficientViT
    assert plain.transformer is not model.transformer and type(plain.transformer) is type(model.transformer)
    np.testing.assert_array_equal(model(img), plain(img))
    assert set(params(model)) - set(params(plain)) == {
        "distillation_token", "distill_head.kernel", "distill_head.bias",
    }  # fmt: skip
    if not user:  # the student's eval mode reaches the copy's dropout
        assert all(b.attn.out_drop.deterministic for b in plain.transformer.blocks)
    _, f = model(img, distill=True, return_features=True)
    assert list(f) == (["pre_logits"] if user else ["block00", "block01", "pre_logits"])


def test_the_wrapper_teaches_an_efficient_student() -> None:
    s, img = efficient_student(), images()
    w = DistillWrapper(teacher=ViT(**TEACHER, rngs=nnx.Rngs(1)), student=s, temperature=2.0, alpha=0.4)
    w.train()
    loss, grads = nnx.jit(nnx.value_and_grad(lambda m: m(img, LABELS)))(w)  # one compiled pass
    assert loss.shape == () and bool(jnp.isfinite(loss))
    flat = {".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(grads, nnx.Param))}
    student_grads = {k: g for k, g in flat.items() if k.startswith("student.")}
    assert "student.distillation_token" in student_grads and "student.distill_head.kernel" in student_grads
    assert all(bool(jnp.any(g != 0)) for g in student_grads.values())
    assert not any(bool(jnp.any(g)) for k, g in flat.items() if k.startswith("teacher."))
    w.eval()
    logits, distill = s(img, distill=True)
    want = distillation_loss(logits, distill, w.teacher(img), LABELS, temperature=2.0, alpha=0.4, hard=False)
    np.testing.assert_allclose(w(img, LABELS), want, rtol=1e-6)


def test_an_efficient_student_checkpoint_is_complete(tmp_path: Path) -> None:
    model, img = efficient_student("mean"), images()
    assert model.config["transformer"]["__model__"] == "efficient_transformer"
    vit_flax.save(model, tmp_path / "student")
    again = vit_flax.load(tmp_path / "student")
    assert isinstance(again, DistillableEfficientViT)
    for a, b in zip(again(img, distill=True), model(img, distill=True)):
        np.testing.assert_array_equal(a, b)
