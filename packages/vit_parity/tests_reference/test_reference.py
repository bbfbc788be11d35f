"""The reference check: vit-pytorch's own models, their weights imported here, give the same logits.

For every case of the spec registry whose architecture vit-pytorch has, the reference model is built with the
matching arguments (seeded, its weights perturbed so that no norm stays at one and zero), its state dict goes
through :func:`vit_parity.tools.reference.import_state`, the checkpoint loads into vit_torch, and the logits on
the case's input agree within rtol = atol = 1e-5 in eval mode. Where the two models differ on purpose, the
difference is tested as such. Needs vit-pytorch: ``nox -s reference``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from vit_parity.core.spec import REGISTRY, Case, map_arrays
from vit_parity.tools import reference
from vit_parity.tools.parity import perturb_constants
from vit_parity.tools.reference import ReferenceImportError
from vit_torch.checkpoint import load_state, module_kinds, state_numpy

RTOL = ATOL = 1e-5
SEED = 0

# vit-pytorch's nested NaViTs build a strided nested tensor for their pooling queries, and torch warns about it
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")

# Registry architectures that vit-pytorch has no counterpart of (none so far: every one is from its README).
REFERENCE_LACKS: frozenset[str] = frozenset()

# Registry architectures checked by tests of their own (below, or in test_<module>.py beside this file): the
# reference's DistillableT2TViT and DistillableEfficientViT fail on every call, the distillation wrapper's check
# builds a teacher and a student, the efficient ViT and the memory adapter take a model built from the registry.
CHECKED_APART = {
    "distill_t2t": "test_distill_t2t_fails_in_the_reference",
    "distill_wrapper": "test_distill_wrapper_gives_the_reference_loss",
    "efficient": "test_efficient.py::test_efficient_gives_the_reference_logits_around_its_transformer",
    "distill_efficient": "test_efficient.py::test_distill_efficient_fails_in_the_reference",
    "learnable_memory_vit_adapter": "test_learnable_memory_vit.py::test_adapter_gives_the_reference_logits",
    # the reference draws its token sampling's noise in eval mode too: the check gives both the same draw
    "ats_vit": "test_ats_vit.py::test_ats_vit_gives_the_reference_logits_on_the_same_draw",
}

# Cases whose config the import refuses on purpose (the table's `differences` say why), with a word of the reason.
REFUSED = {
    ("vit", "mean"): "pool='mean'",
    ("vit_3d", "cubic-4-mean"): "pool='mean'",
    ("distill", "mean"): "pool='mean'",
    ("t2t", "default-splits-mean-rect-smaller-input"): "square image_size",
    ("cait", "layer-dropout-rect-smaller-input"): "square image_size",
    ("cross_vit", "same-width-smaller-input"): "square image_size",
    ("learnable_memory_vit", "mean-rect-smaller-input"): "pool='mean'",
}

# Cases whose config imports but whose input the two libraries treat differently: the reason, and the
# full-size input (sizes of the case's input) on which the same weights must agree instead.
INPUT_DIFFERS: dict[tuple[str, str], tuple[str, dict[str, int]]] = {
    ("vit", "smaller-input"): (
        "on a smaller image the reference adds the first entries of its flattened position table, this ViT the "
        "top-left part of its position grid",
        {"h": 32, "w": 32},
    ),
    ("simple_vit", "smaller-input"): (
        "the reference adds its whole sin-cos table and fails on a smaller image",
        {"h": 32, "w": 32},
    ),
    ("vit_3d", "shorter-clip-rect"): (
        "on a lower video the reference adds the first entries of its flattened position table, this ViT the "
        "matching part of its (t, h, w) grid",
        {"t": 6, "h": 16, "w": 8},
    ),
    ("vivit", "factorized-encoder-mean-shorter-clip"): (
        "on a narrower video the reference adds the first entries of each frame's flattened positions, this ViViT "
        "the matching part of its grid",
        {"t": 8, "h": 16, "w": 16},
    ),
    ("deepvit", "mean-rect-smaller-input"): (
        "on a smaller image the reference adds the first entries of its flattened position table, this DeepViT the "
        "top-left part of its position grid",
        {"h": 16, "w": 16},
    ),
    ("xcit", "kernel-5-layer-dropout-rect-smaller-input"): (
        "on a smaller image the reference adds the first entries of its flattened position table, this XCiT the "
        "top-left part of its position grid",
        {"h": 16, "w": 16},
    ),
    ("cct", "sine-two-convs-even-kernel-smaller-input"): (
        "the reference adds its whole positional table and fails on a smaller image",
        {"h": 16, "w": 12},
    ),
    ("cct_3d", "sine-two-convs-shorter-clip"): (
        "the reference adds its whole positional table and fails on a shorter clip",
        {"t": 4, "h": 16, "w": 16},
    ),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The machine's cores are shared: one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cases() -> list[Any]:
    return [
        pytest.param(arch, case, id=f"{arch}-{case.name}")
        for arch, spec in REGISTRY.items()
        if arch not in REFERENCE_LACKS and arch not in CHECKED_APART
        for case in spec.cases
    ]


def _table(arch: str) -> reference.Table:
    if arch not in reference.TABLES:
        pytest.fail(
            f"{arch} is in the registry and vit-pytorch has it, but vit_parity.tools.reference.TABLES has no table "
            f"for it: add one (see that module's docstring), or list {arch!r} in REFERENCE_LACKS if vit-pytorch "
            "has no such model"
        )
    return reference.TABLES[arch]


def reference_class(arch: str) -> type:
    module, _, name = _table(arch).reference.partition(":")
    return getattr(importlib.import_module(module), name)


def build_reference(arch: str, config: dict[str, Any], seed: int = SEED) -> torch.nn.Module:
    """The reference model of ``config`` (its arguments), seeded, in eval mode, with its norms perturbed.

    Its constructor leaves the norms at one and zero, under which a swapped norm or a lost bias would go unseen:
    the tensors the import reads get :func:`~vit_parity.tools.parity.perturb_constants`' seeded noise, a constant
    one of several axes (the masked NaViT's per-head query/key scales) along its last axis, the same for every
    head (this library shares them across heads; see the refusal test).
    """
    torch.manual_seed(seed)
    model = reference_class(arch)(**config)
    if arch == "distill":  # the reference keeps the distillation token and head in its wrapper
        model = reference_wrapper(model, config["num_classes"])
        model.forward = model.student.forward  # the check reads the student's class logits
    model.eval()
    try:
        kept = {k for k, v in reference.reference_keys(arch, reference.our_config(arch, config)).items() if v}
    except ReferenceImportError:  # a config the import refuses: tests of the difference
        kept = set(model.state_dict())
    return perturb_constants(model, seed + 1, only=kept)


TEACHER = dict(image_size=16, patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32)


def reference_wrapper(student: torch.nn.Module, num_classes: int, **options: Any) -> torch.nn.Module:
    """vit-pytorch's DistillWrapper around its ``student``, with a small reference ViT teacher of
    ``num_classes`` (for 16 x 16 images)."""
    from vit_pytorch.distill import DistillWrapper
    from vit_pytorch.vit import ViT

    return DistillWrapper(teacher=ViT(**TEACHER, num_classes=num_classes), student=student, **options)


def imported(arch: str, ref_model: torch.nn.Module | dict[str, np.ndarray], config: dict[str, Any]) -> torch.nn.Module:
    """This library's model holding the reference model's weights (or a state dict), through the importer, in eval
    mode."""
    state = ref_model if isinstance(ref_model, dict) else state_numpy(ref_model)
    ckpt = reference.import_state(arch, state, config)
    torch.manual_seed(SEED + 2)  # our constructor's own draws are all overwritten
    model = REGISTRY[arch].load_class("torch")(**ckpt.config)
    assert ckpt.kinds == module_kinds(model), "the kinds the rules name are not the model's"
    return load_state(model, ckpt).eval()


def torch_inputs(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return map_arrays(torch.from_numpy, inputs)


def logits(arch: str, case: Case, model: torch.nn.Module, inputs: tuple[Any, ...]) -> np.ndarray:
    with torch.no_grad():
        out = model(*torch_inputs(inputs))
    return case.logits("torch", inputs, out).detach().numpy()


def full_size(case: Case, sizes: dict[str, int]) -> tuple[np.ndarray, ...]:
    inp = case.inputs[0]
    return (dataclasses.replace(inp, sizes={**inp.sizes, **sizes}).sample(SEED),)


@pytest.mark.parametrize(("arch", "case"), _cases())
def test_same_logits(arch: str, case: Case) -> None:
    """The reference model's weights, imported, give its logits (on the case's input or, where the libraries
    treat that input differently, on the full-size one)."""
    _table(arch)
    config = reference.reference_config(arch, case.config)
    if (arch, case.name) in REFUSED:
        with pytest.raises(ReferenceImportError, match=REFUSED[arch, case.name]):
            reference.our_config(arch, config)
        return
    ref_model = build_reference(arch, config)
    ours = imported(arch, ref_model, config)
    differs = INPUT_DIFFERS.get((arch, case.name))
    inputs = case.sample("torch", SEED) if differs is None else full_size(case, differs[1])
    want, got = logits(arch, case, ref_model, inputs), logits(arch, case, ours, inputs)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("arch", "name"), sorted(INPUT_DIFFERS))
def test_input_treated_differently(arch: str, name: str) -> None:
    """On these inputs the two libraries differ on purpose: the reference fails, or its logits are not ours."""
    case = REGISTRY[arch].case(name)
    config = reference.reference_config(arch, case.config)
    ref_model = build_reference(arch, config)
    ours = imported(arch, ref_model, config)
    inputs = case.sample("torch", SEED)
    got = logits(arch, case, ours, inputs)
    try:
        want = logits(arch, case, ref_model, inputs)
    except RuntimeError:
        return  # the reference has no answer for this input
    assert not np.allclose(got, want, rtol=RTOL, atol=ATOL), INPUT_DIFFERS[arch, name][0]


def test_vit_mean_pool_has_no_class_token_in_the_reference() -> None:
    """vit-pytorch's ViT with pool='mean' builds no class token (a (0, dim) parameter) and averages the patch
    tokens; ours keeps its class token in the average, so the import refuses, saying why."""
    config = dict(image_size=16, patch_size=8, num_classes=10, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)
    state = build_reference("vit", {**config, "pool": "mean"}).state_dict()
    assert tuple(state["cls_token"].shape) == (0, 16) and tuple(state["pos_embedding"].shape) == (4, 16)
    with pytest.raises(ReferenceImportError, match="no class token"):
        reference.import_state("vit", state_numpy(build_reference("vit", config)), {**config, "pool": "mean"})


def test_vit_3d_mean_pool_normalizes_elsewhere() -> None:
    """vit_3d with pool='mean': the same weights (the state dicts do not depend on pool) give other logits,
    because the reference normalizes the mean of the tokens and ours averages normalized tokens."""
    case = REGISTRY["vit_3d"].case("cubic-4-mean")
    config = reference.reference_config("vit_3d", case.config)
    with pytest.raises(ReferenceImportError, match="normalizes the mean"):
        reference.our_config("vit_3d", config)
    ref_model = build_reference("vit_3d", config)
    ckpt = reference.import_state("vit_3d", state_numpy(ref_model), {**config, "pool": "cls"})
    ours = load_state(REGISTRY["vit_3d"].load_class("torch")(**case.config), ckpt).eval()
    inputs = case.sample("torch", SEED)
    assert not np.allclose(logits("vit_3d", case, ours, inputs), logits("vit_3d", case, ref_model, inputs), 1e-3)


@pytest.mark.parametrize("arch", ["simple_vit", "simple_vit_3d"])
def test_one_wide_head_keeps_a_projection_in_the_reference(arch: str) -> None:
    """With heads=1 and dim_head=dim the reference's SimpleViT keeps its output projection; this library's
    attention has none (as its ViT and the reference's ViT), so the import refuses."""
    config = {**REGISTRY[arch].cases[0].config, "heads": 1, "dim_head": REGISTRY[arch].cases[0].config["dim"]}
    state = build_reference(arch, reference.reference_config(arch, config)).state_dict()
    assert "transformer.layers.0.0.to_out.weight" in state
    with pytest.raises(ReferenceImportError, match="no output"):
        reference.our_config(arch, config)


def test_cct_3d_one_head_keeps_a_projection_in_the_reference() -> None:
    case = REGISTRY["cct_3d"].cases[0]
    config = {**reference.reference_config("cct_3d", case.config), "num_heads": 1}
    state = build_reference("cct_3d", config).state_dict()
    assert "classifier.blocks.0.self_attn.proj.weight" in state
    with pytest.raises(ReferenceImportError, match="num_heads=1"):
        reference.our_config("cct_3d", config)


def test_masked_navit_per_head_scales_are_refused() -> None:
    """The masked NaViT learns one query/key norm scale per head; this library shares one across heads: an
    import of scales that differ between heads is refused, naming the key."""
    case = REGISTRY["navit"].cases[0]
    config = reference.reference_config("navit", case.config)
    state = state_numpy(build_reference("navit", config))
    state["transformer.layers.0.0.q_norm.gamma"][1] += 0.1
    with pytest.raises(ReferenceImportError, match=r"q_norm\.gamma.*differ between heads"):
        reference.import_state("navit", state, config)


@pytest.mark.parametrize("arch", ["navit_nested", "navit_nested_3d"])
def test_nested_navit_qk_layernorm_needs_centred_projections(arch: str) -> None:
    """The nested-tensor reference NaViTs normalize queries and keys with a LayerNorm, this library with an
    RMSNorm: the import centres each head's query and key projections (test_same_logits), and without that step
    the logits differ."""
    case = REGISTRY[arch].cases[0]
    config = reference.reference_config(arch, case.config)
    ref_model = build_reference(arch, config)
    state = state_numpy(ref_model)
    ckpt = reference.import_state(arch, state, config)
    raw = np.concatenate([state[f"transformer.layers.0.0.{p}.weight"] for p in ("to_queries", "to_keys", "to_values")])
    assert not np.array_equal(ckpt.tensors["transformer.blocks.0.attn.to_qkv.weight"], raw)
    ckpt.tensors["transformer.blocks.0.attn.to_qkv.weight"] = raw
    ours = load_state(REGISTRY[arch].load_class("torch")(**ckpt.config), ckpt).eval()
    inputs = case.sample("torch", SEED)
    assert not np.allclose(logits(arch, case, ours, inputs), logits(arch, case, ref_model, inputs), 1e-3, 1e-3)


def test_nested_navit_3d_registers_are_refused() -> None:
    """The reference's 3-D nested NaViT adds 4 register tokens by default; this NaViT has none."""
    config = reference.reference_config("navit_nested_3d", REGISTRY["navit_nested_3d"].cases[0].config)
    with pytest.raises(ReferenceImportError, match="register tokens"):
        reference.our_config("navit_nested_3d", {k: v for k, v in config.items() if k != "num_registers"})


def test_vivit_fused_attention_keeps_dropout_in_eval_mode() -> None:
    """A reference bug: ViViT's fused attention path (use_flash_attn=True, its default) passes its dropout rate
    to scaled_dot_product_attention whatever the mode, so with dropout > 0 two eval-mode calls disagree. The
    check builds it with the explicit softmax (the table's check_with), which has the same weights."""
    case = REGISTRY["vivit"].case("factorized-encoder-cls")
    assert case.config["dropout"] > 0
    config = {**reference.reference_config("vivit", case.config), "use_flash_attn": True}
    model = build_reference("vivit", config)
    video = torch.from_numpy(case.sample("torch", SEED)[0])
    with torch.no_grad():
        assert not torch.allclose(model(video), model(video))
    assert reference.TABLES["vivit"].check_with == {"use_flash_attn": False}


def test_cross_vit_one_wide_head_keeps_a_projection_in_the_reference() -> None:
    """vit-pytorch's CrossViT always projects its attention's output; with one head as wide as a stream this
    library's attention has no projection, so the import refuses."""
    case = REGISTRY["cross_vit"].case("projected")
    config = {**reference.reference_config("cross_vit", case.config), "sm_enc_heads": 1, "sm_enc_dim_head": 16}
    state = build_reference("cross_vit", config).state_dict()
    assert "multi_scale_encoder.layers.0.0.layers.0.0.to_out.0.weight" in state
    with pytest.raises(ReferenceImportError, match="no output projection"):
        reference.our_config("cross_vit", config)


@pytest.mark.parametrize("arch", ["cait", "xcit"])
def test_layer_dropout_draws_in_eval_mode_in_the_reference(arch: str) -> None:
    """A reference bug: CaiT's and XCiT's layer dropout never reads ``self.training``, so with ``layer_dropout > 0``
    two eval-mode calls disagree; ours draws only in training. The check builds the reference without it (the
    table's check_with: the same weights)."""
    config = {**reference.reference_config(arch, REGISTRY[arch].cases[0].config), "layer_dropout": 0.5, "depth": 4}
    model = build_reference(arch, config)
    img = torch.from_numpy(REGISTRY[arch].cases[0].sample("torch", SEED)[0])
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(img)
        assert any(not torch.allclose(first, model(img)) for _ in range(5))
    ours = imported(arch, model, config)
    with torch.no_grad():
        assert torch.equal(ours(img), ours(img))
    assert reference.TABLES[arch].check_with == {"layer_dropout": 0.0}


def test_distill_t2t_fails_in_the_reference() -> None:
    """A reference bug: vit-pytorch's DistillableT2TViT fails on every call (its shared forward pass repeats a 2-D
    class token, and T2T-ViT's is 3-D), so it has no weights to import; ours works (its own tests, and parity)."""
    from einops import EinopsError
    from vit_pytorch.distill import DistillableT2TViT

    case = REGISTRY["distill_t2t"].cases[0]
    config = {k: v for k, v in case.config.items() if k != "t2t_layers"}  # the reference's default splits

    student = DistillableT2TViT(**config).eval()
    img = torch.from_numpy(case.sample("torch", SEED)[0])
    with pytest.raises(EinopsError, match="expected 2 dims"):
        student(img)
    with pytest.raises(EinopsError, match="expected 2 dims"):
        reference_wrapper(student, config["num_classes"])(img, torch.zeros(img.shape[0], dtype=torch.long))


@pytest.mark.parametrize(("hard", "mlp_layernorm"), [(False, True), (True, False)])
def test_distill_wrapper_gives_the_reference_loss(hard: bool, mlp_layernorm: bool) -> None:
    """A reference DistillWrapper (a reference ViT teacher, a reference DistillableViT student): its student and
    teacher imported ("distill" reads the wrapper's state dict, "vit" the teacher's), ours gives the same class
    logits, distillation logits and loss within 1e-5."""
    from vit_torch.distill import DistillWrapper

    case = REGISTRY["distill"].case("cls")
    config = reference.reference_config("distill", case.config)
    torch.manual_seed(SEED)
    student = reference_class("distill")(**config)
    options = dict(temperature=2.5, alpha=0.4, hard=hard, mlp_layernorm=mlp_layernorm)
    wrapper = reference_wrapper(student, config["num_classes"], **options).eval()
    state = state_numpy(perturb_constants(wrapper, SEED + 1))  # norms away from one and zero
    norm = {k.removeprefix("distill_mlp.0."): v for k, v in state.items() if k.startswith("distill_mlp.0.")}
    # the optional LayerNorm before the distillation head is the wrapper's here too (its `distill_norm`)
    ours_student = imported("distill", {k: v for k, v in state.items() if not k.startswith("distill_mlp.0.")}, config)
    teacher_state = {k.removeprefix("teacher."): v for k, v in state.items() if k.startswith("teacher.")}
    ours_teacher = imported("vit", teacher_state, {**TEACHER, "num_classes": config["num_classes"]})
    ours = DistillWrapper(teacher=ours_teacher, student=ours_student, **options).eval()
    if mlp_layernorm:
        ours.distill_norm.load_state_dict({k: torch.from_numpy(v) for k, v in norm.items()})
    img = torch.from_numpy(case.sample("torch", SEED)[0])
    labels = torch.arange(img.shape[0]) % config["num_classes"]
    with torch.no_grad():
        want_logits, tokens = student(img, distill_token=wrapper.distillation_token)
        want_distill = wrapper.distill_mlp(tokens)
        got_logits, got_distill = ours_student(img, distill=True)
        want_loss, got_loss = wrapper(img, labels), ours(img, labels)
    if not mlp_layernorm:  # else the wrapper's norm comes between the token and the head
        np.testing.assert_allclose(got_distill.numpy(), want_distill.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got_logits.numpy(), want_logits.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got_loss.numpy(), want_loss.numpy(), rtol=RTOL, atol=ATOL)
