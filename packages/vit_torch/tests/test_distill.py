"""Distillation: the students' distillation pass against a recomputation from their parameters, ``to_vit``, the
wrapper's loss against one written out, the frozen teacher, checkpoints, the seed README example and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import vit_torch
from vit_torch.distill import (
    DistillableEfficientViT,
    DistillableT2TViT,
    DistillableViT,
    DistillWrapper,
    distillation_loss,
)
from vit_torch.efficient import Transformer as EfficientTransformer
from vit_torch.efficient import ViT as EfficientViT
from vit_torch.t2t import T2TViT
from vit_torch.vit import ViT

VIT = dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)
T2T = dict(image_size=16, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8, t2t_layers=((2, 2), (2, 2)))
TEACHER = dict(VIT, depth=1)


def student(pool: str = "cls", **kw: object) -> DistillableViT:
    torch.manual_seed(0)
    return DistillableViT(**{**VIT, "pool": pool, **kw}).eval()


def t2t_student(**kw: object) -> DistillableT2TViT:
    torch.manual_seed(0)
    return DistillableT2TViT(**{**T2T, **kw}).eval()


def wrapper(**kw: object) -> DistillWrapper:
    torch.manual_seed(1)
    return DistillWrapper(teacher=ViT(**TEACHER), student=student(), **kw)


def images(b: int = 2) -> Tensor:
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(3))


# --- an independent computation from the parameters ------------------------------------------------------------


def layer_norm(x: Tensor, p: dict[str, Tensor], name: str) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]


def linear(x: Tensor, p: dict[str, Tensor], name: str) -> Tensor:
    y = x @ p[f"{name}.weight"].T
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def transformer(x: Tensor, p: dict[str, Tensor], depth: int, heads: int, prefix: str = "transformer") -> Tensor:
    """Pre-norm blocks (softmax attention written out, exact GELU through erf) and the final norm."""
    for i in range(depth):
        blk = f"{prefix}.blocks.{i}"
        h = layer_norm(x, p, f"{blk}.norm1")
        q, k, v = (
            t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in linear(h, p, f"{blk}.attn.to_qkv").chunk(3, -1)
        )
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + linear((attn @ v).transpose(1, 2).flatten(-2), p, f"{blk}.attn.to_out")
        h = linear(layer_norm(x, p, f"{blk}.norm2"), p, f"{blk}.ff.fc1")
        x = x + linear(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), p, f"{blk}.ff.fc2")
    return layer_norm(x, p, f"{prefix}.norm")


def heads_of(x: Tensor, p: dict[str, Tensor], pool: str) -> tuple[Tensor, Tensor]:
    """The class head on the pooled tokens (the distillation token, last, left out), the distillation head on it."""
    body = x[:, :-1]
    pooled = body[:, 0] if pool == "cls" else body.mean(1)
    return linear(pooled, p, "mlp_head"), linear(x[:, -1], p, "distill_head")


def vit_distill_by_hand(model: DistillableViT, img: Tensor) -> tuple[Tensor, Tensor]:
    """The class and distillation logits of the distillation pass."""
    return heads_of(vit_sequence_by_hand(model, img), dict(model.named_parameters()), model.pool)


def vit_sequence_by_hand(model: DistillableViT, img: Tensor) -> Tensor:
    """The transformer's output on the distillation pass: class token, patches, distillation token."""
    p = dict(model.named_parameters())
    b, c, h, w = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    x = layer_norm(linear(layer_norm(patches, p, "to_patch_embedding.pre_norm"), p, "to_patch_embedding.proj"), p,
                   "to_patch_embedding.post_norm")  # fmt: skip
    pos = p["pos_embedding"]
    cls = (p["cls_token"] + pos[:, :1]).expand(b, -1, -1)
    token = p["distillation_token"].expand(b, -1, -1)  # after the patches, no position
    x = torch.cat((cls, x + pos[:, 1:], token), dim=1)
    return transformer(x, p, model.config["depth"], model.config["heads"])


@pytest.mark.parametrize("pool", ["cls", "mean"])
@torch.no_grad()
def test_the_distillation_pass_is_the_vit_with_a_token_appended(pool: str) -> None:
    model, img = student(pool), images()
    logits, distill = model(img, distill=True)
    want_logits, want_distill = vit_distill_by_hand(model, img)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(distill, want_distill, rtol=1e-5, atol=1e-5)
    # the token attends with the others: the class logits of the distillation pass are not the plain ones
    assert not torch.allclose(logits, model(img), atol=1e-4)


@torch.no_grad()
def test_the_t2t_student_appends_the_token_after_its_tokens_to_token_stage() -> None:
    model, img = t2t_student(pool="mean"), images()
    p = dict(model.named_parameters())
    x = model.tokens(img)  # T2T's own stage (tested in test_t2t): class token, soft-split tokens, positions
    x = torch.cat((x, p["distillation_token"].expand(2, -1, -1)), dim=1)
    want_logits, want_distill = heads_of(transformer(x, p, 1, 2), p, "mean")
    logits, distill = model(img, distill=True)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(distill, want_distill, rtol=1e-5, atol=1e-5)


# --- the default call is the plain model, to_vit ------------------------------------------------------------------


@pytest.mark.parametrize("make", [student, t2t_student], ids=["vit", "t2t"])
@torch.no_grad()
def test_the_default_call_is_the_plain_model_and_to_vit_keeps_its_weights(make: object) -> None:
    model, img = make(), images()
    plain = model.to_vit()
    assert type(plain) is (ViT if isinstance(model, DistillableViT) else T2TViT)
    assert not plain.training  # the student's mode
    assert torch.equal(model(img), plain(img))
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        "distillation_token", "distill_head.weight", "distill_head.bias",
    }  # fmt: skip
    assert plain.config == model.config
    # the default call never reads the distillation token
    before = model(img)
    model.distillation_token.add_(1.0)
    assert torch.equal(model(img), before)
    # a copy: training the plain model leaves the student alone
    plain.mlp_head.weight.add_(1.0)
    assert torch.equal(model(img), before)


def test_to_vit_of_a_t2t_student_with_its_own_transformer_copies_it() -> None:
    torch.manual_seed(0)
    body = vit_torch.layers.Transformer(16, 1, 2, 8, 32)
    model = DistillableT2TViT(image_size=16, num_classes=5, dim=16, transformer=body, t2t_layers=((2, 2), (2, 2)))
    plain = model.eval().to_vit()
    assert plain.transformer is not model.transformer
    with torch.no_grad():
        assert torch.equal(plain(images()), model(images()))


def test_features_on_both_calls() -> None:
    model, img = student(), images()
    with torch.no_grad():
        (logits, _), f = model(img, distill=True, return_features=True, return_attn=True)
        _, g = model(img, return_features=True)
    assert list(f) == ["block00/attn", "block00", "block01/attn", "block01", "pre_logits"]
    assert list(g) == ["block00", "block01", "pre_logits"]
    assert f["block00"].shape == (2, 1 + 4 + 1, 16) and f["block00/attn"].shape == (2, 2, 6, 6)
    torch.testing.assert_close(f["pre_logits"], model.transformer.norm(f["block01"])[:, 0])
    torch.testing.assert_close(model.mlp_head(f["pre_logits"]), logits)


def test_the_distillation_pass_trains_the_token_and_head() -> None:
    model = student().train()
    _, distill = model(images(), distill=True)
    distill.square().mean().backward()
    assert model.distillation_token.grad.abs().sum() > 0 and model.distill_head.weight.grad.abs().sum() > 0


# --- the wrapper's loss ---------------------------------------------------------------------------------------


def loss_by_hand(w: DistillWrapper, img: Tensor, labels: Tensor, t: float, alpha: float) -> Tensor:
    s, p = w.student, dict(w.student.named_parameters())
    logits, _ = vit_distill_by_hand(s, img)
    x = vit_sequence_by_hand(s, img)[:, -1]
    if w.distill_norm is not None:
        x = layer_norm(x, dict(w.named_parameters()), "distill_norm")
    distill = linear(x, p, "distill_head")
    teacher = w.teacher(img)

    def log_softmax(z: Tensor) -> Tensor:
        return z - z.exp().sum(-1, keepdim=True).log()

    ce = -log_softmax(logits)[torch.arange(2), labels].mean()
    if w.hard:
        d = -log_softmax(distill)[torch.arange(2), teacher.argmax(-1)].mean()
    else:
        target = torch.softmax(teacher / t, -1)
        d = (target * (target.log() - log_softmax(distill / t))).sum() / 2 * t**2
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
@torch.no_grad()
def test_the_loss_is_the_weighted_sum_of_the_class_and_distillation_losses(options: dict, call: dict) -> None:
    w, img, labels = wrapper(**options).eval(), images(), torch.tensor([1, 4])
    t, alpha = call.get("temperature", w.temperature), call.get("alpha", w.alpha)
    got = w(img, labels, **call)
    assert got.shape == ()
    torch.testing.assert_close(got, loss_by_hand(w, img, labels, t, alpha), rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_the_class_loss_and_features_are_the_students() -> None:
    w, img, labels = wrapper().eval(), images(), torch.tensor([0, 3])
    with torch.no_grad():
        ce = nn.functional.cross_entropy(w.student(img, distill=True)[0], labels)
        torch.testing.assert_close(w(img, labels, alpha=0.0), ce)
        loss, f = w(img, labels, return_features=True)
    assert list(f) == ["block00", "block01", "pre_logits"] and f["block00"].shape == (2, 6, 16)
    torch.testing.assert_close(loss, w(img, labels))


# --- the teacher stays as it is -----------------------------------------------------------------------------


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.1),
], ids=["adamw", "sgd"])  # fmt: skip
def test_an_optimizer_over_the_wrapper_never_moves_the_teacher(make_optimizer: object) -> None:
    w = wrapper(temperature=2.0).train()
    teacher = {k: v.clone() for k, v in w.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in w.student.state_dict().items()}
    opt = make_optimizer(w.parameters())
    for _ in range(2):
        opt.zero_grad(set_to_none=False)  # zero tensors, not None: weight decay would see them
        w(images(), torch.tensor([1, 2])).backward()
        assert all(p.grad is None for p in w.teacher.parameters())
        opt.step()
    assert all(torch.equal(v, teacher[k]) for k, v in w.teacher.state_dict().items())
    assert all(not torch.equal(v, student_before[k]) for k, v in w.student.state_dict().items())
    assert w.student.training and not w.teacher.training  # the teacher stays in eval mode


class TinyCNN(nn.Sequential):
    """A teacher that is no registry model."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(8, num_classes),
        )  # fmt: skip


def test_any_module_or_callable_teaches_and_batch_statistics_stay() -> None:
    torch.manual_seed(0)
    cnn = TinyCNN()
    w = DistillWrapper(teacher=cnn, student=student(), hard=True).train()
    stats = cnn[1].running_mean.clone()
    w(images(), torch.tensor([0, 1])).backward()
    assert torch.equal(cnn[1].running_mean, stats)  # eval mode: the teacher's batch statistics do not move
    w2 = DistillWrapper(teacher=lambda img: img.mean((2, 3)).repeat(1, 2)[:, :5], student=student())
    assert torch.isfinite(w2(images(), torch.tensor([0, 1])))


# --- checkpoints ----------------------------------------------------------------------------------------------


def test_a_student_checkpoint_is_complete(tmp_path: Path) -> None:
    model, img = student(), images()
    vit_torch.save(model, tmp_path / "student")
    again = vit_torch.load(tmp_path / "student")
    assert isinstance(again, DistillableViT)
    with torch.no_grad():
        for a, b in zip(again(img, distill=True), model(img, distill=True)):
            assert torch.equal(a, b)


def test_a_wrapper_of_registry_models_saves_and_loads(tmp_path: Path) -> None:
    w, img, labels = wrapper(mlp_layernorm=True).eval(), images(), torch.tensor([1, 2])
    assert w.config["teacher"]["__model__"] == "vit" and w.config["student"]["__model__"] == "distill"
    vit_torch.save(w, tmp_path / "wrapper")
    again = vit_torch.load(tmp_path / "wrapper")
    assert isinstance(again.student, DistillableViT) and again.distill_norm is not None
    with torch.no_grad():
        assert torch.equal(again(img, labels), w(img, labels))
    assert not any(p.requires_grad for p in again.teacher.parameters())


def test_a_wrapper_with_another_teacher_says_to_save_the_student(tmp_path: Path) -> None:
    w = DistillWrapper(teacher=TinyCNN(), student=student())
    with pytest.raises(TypeError, match=r"teacher is no registry model.*save the student instead"):
        vit_torch.save(w, tmp_path / "wrapper")
    assert not (tmp_path / "wrapper").exists()
    vit_torch.save(w.student, tmp_path / "student")


# --- the seed README example, bad input ---------------------------------------------------------------------


def test_seed_readme_example() -> None:
    # the seed's teacher is torchvision's resnet50; any module mapping images to 1000 logits does
    teacher = nn.Sequential(
        nn.Conv2d(3, 16, 7, stride=4, padding=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1000)
    )

    v = DistillableViT(
        image_size=256,
        patch_size=32,
        num_classes=1000,
        dim=1024,
        depth=6,
        heads=8,
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
    )

    distiller = DistillWrapper(
        student=v,
        teacher=teacher,
        temperature=3,  # temperature of distillation
        alpha=0.5,  # trade between main loss and distillation loss
        hard=False,  # whether to use soft or hard distillation
    )

    img = torch.randn(2, 3, 256, 256)
    labels = torch.randint(0, 1000, (2,))

    loss = distiller(img, labels)
    loss.backward()

    # after lots of training above ...

    pred = v(img)  # (2, 1000)
    assert pred.shape == (2, 1000) and loss.shape == ()

    v = v.to_vit()
    assert type(v) is ViT


def test_bad_arguments_are_named() -> None:
    s, img = student(), images()
    with pytest.raises(ValueError, match=r"student must be a DistillableViT or DistillableT2TViT.*got ViT"):
        DistillWrapper(teacher=ViT(**TEACHER), student=ViT(**VIT))
    with pytest.raises(ValueError, match="teacher gives logits over 7 classes, the student has 5"):
        DistillWrapper(teacher=ViT(**{**TEACHER, "num_classes": 7}), student=s)
    with pytest.raises(ValueError, match="teacher gives logits over 3 classes, the student has 5"):
        DistillWrapper(teacher=TinyCNN(3), student=s)(img, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="teacher must be a module or callable"):
        DistillWrapper(teacher=3, student=s)
    for bad in (0, -1.0, "3"):
        with pytest.raises(ValueError, match="temperature must be a number > 0"):
            DistillWrapper(teacher=TinyCNN(), student=s, temperature=bad)
    for bad in (-0.1, 1.5, None):
        with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
            DistillWrapper(teacher=TinyCNN(), student=s, alpha=bad)
    w = DistillWrapper(teacher=TinyCNN(), student=s)
    with pytest.raises(ValueError, match="temperature must be a number > 0, got 0"):
        w(img, torch.tensor([0, 1]), temperature=0)
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 2"):
        w(img, torch.tensor([0, 1]), alpha=2)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\).*got \(2, 5\)"):
        w(img, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="img"):
        w(torch.randn(2, 3, 12, 16), torch.tensor([0, 1]))
    with pytest.raises(TypeError):
        s(img, True)  # the flag is keyword-only


# --- the efficient-attention student (a ViT around a transformer of one's choice) ----------------------------------


class TokenMixer(nn.Module):
    """A user's transformer: not a library one."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.tanh(self.fc(x)) * x.mean(1, keepdim=True)


def efficient_student(pool: str = "cls", transformer: nn.Module | None = None) -> DistillableEfficientViT:
    torch.manual_seed(0)
    body = transformer if transformer is not None else EfficientTransformer(16, 2, 2, 8, 32)
    return DistillableEfficientViT(
        image_size=16, patch_size=8, num_classes=5, dim=16, transformer=body, pool=pool
    ).eval()


@pytest.mark.parametrize("pool", ["cls", "mean"])
@torch.no_grad()
def test_the_efficient_student_appends_the_token_to_its_transformer(pool: str) -> None:
    model, img = efficient_student(pool), images()
    p = dict(model.named_parameters())
    x = model.tokens(img)  # the shell's own tokens (tested in test_efficient): class token, patches, positions
    x = transformer(torch.cat((x, p["distillation_token"].expand(2, -1, -1)), dim=1), p, 2, 2)
    body = x[:, :-1]
    pooled = body[:, 0] if pool == "cls" else body.mean(1)
    want_logits = linear(layer_norm(pooled, p, "mlp_head.norm"), p, "mlp_head.fc")  # the head's LayerNorm, Linear
    logits, distill = model(img, distill=True)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(distill, linear(x[:, -1], p, "distill_head"), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits, model(img), atol=1e-4)  # the token attends with the others


@pytest.mark.parametrize("user", [False, True], ids=["library-transformer", "user-transformer"])
@torch.no_grad()
def test_the_efficient_student_default_call_is_the_plain_model_and_to_vit_copies_it(user: bool) -> None:
    model, img = efficient_student(transformer=TokenMixer() if user else None), images()
    plain = model.to_vit()
    assert type(plain) is EfficientViT and not plain.training
    assert plain.transformer is not model.transformer and type(plain.transformer) is type(model.transformer)
    assert torch.equal(model(img), plain(img))
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        "distillation_token", "distill_head.weight", "distill_head.bias",
    }  # fmt: skip
    logits, distill = model(img, distill=True)
    assert logits.shape == distill.shape == (2, 5)
    _, f = model(img, distill=True, return_features=True)
    assert list(f) == (["pre_logits"] if user else ["block00", "block01", "pre_logits"])


def test_the_wrapper_teaches_an_efficient_student() -> None:
    torch.manual_seed(1)
    s = efficient_student().train()
    w = DistillWrapper(teacher=ViT(**TEACHER), student=s, temperature=2.0, alpha=0.4)
    img, labels = images(), torch.tensor([1, 3])
    loss = w(img, labels)
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())  # distillation token and head too
    assert all(p.grad is None for p in w.teacher.parameters())
    with torch.no_grad():
        logits, distill = s(img, distill=True)
        want = distillation_loss(logits, distill, w.teacher(img), labels, temperature=2.0, alpha=0.4, hard=False)
        torch.testing.assert_close(w(img, labels), want)  # no dropout in this student: the same numbers


def test_an_efficient_student_checkpoint_is_complete(tmp_path: Path) -> None:
    model, img = efficient_student("mean"), images()
    assert model.config["transformer"]["__model__"] == "efficient_transformer"
    vit_torch.save(model, tmp_path / "student")
    again = vit_torch.load(tmp_path / "student")
    assert isinstance(again, DistillableEfficientViT)
    with torch.no_grad():
        for a, b in zip(again(img, distill=True), model(img, distill=True)):
            assert torch.equal(a, b)


def test_an_efficient_student_names_its_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"transformer is 32 wide, .* dim=16 wide"):
        efficient_student(transformer=EfficientTransformer(32, 1, 2, 8, 32))
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\)"):
        efficient_student(pool="max")
