"""vit_parity.core.facts: the constructor signatures both backends spell out, CCT's arithmetic, defaults, rates and
presets, and ViViT's argument checks, each checked against both backends or against independent numbers."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import vit_flax.cct
import vit_flax.cct_3d
import vit_torch.cct
import vit_torch.cct_3d
from vit_parity.core import facts, spec
from vit_parity.core.facts import REQUIRED, SIGNATURES, Signature, cct, signature, vivit

RUNTIME = ("dtype", "rngs")  # flax's runtime-only arguments, keyword-only, default None


def constructor_parameters(cls: type, backend: str) -> tuple[inspect.Parameter, ...]:
    """The constructor's parameters without ``self``, annotations and flax's runtime-only arguments.

    ``cls.__init__``, not ``cls``: ``inspect.signature`` of an NNX class shows its metaclass's ``(*args, **kwargs)``.
    """
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if backend == "flax":
        runtime = [(p.name, p.kind, p.default) for p in params if p.name in RUNTIME]
        assert runtime == [(name, inspect.Parameter.KEYWORD_ONLY, None) for name in RUNTIME]
        params = [p for p in params if p.name not in RUNTIME]
    return tuple(p.replace(annotation=inspect.Parameter.empty) for p in params)


def test_every_registry_architecture_has_a_signature() -> None:
    assert sorted(SIGNATURES) == sorted(spec.REGISTRY)


@pytest.mark.parametrize("backend", spec.BACKENDS)
@pytest.mark.parametrize("arch", sorted(spec.REGISTRY))
def test_both_backends_spell_the_facts_signature(arch: str, backend: str) -> None:
    # names, order, defaults and kinds (positional-or-keyword, keyword-only) all count
    got = constructor_parameters(spec.get(arch).load_class(backend), backend)
    assert got == signature(arch).parameters()


def test_signature_views() -> None:
    sig = Signature.of({"a": REQUIRED, "b": None}, c=1, d=REQUIRED)
    assert sig.names == ("a", "b", "c", "d")
    assert sig.required == ("a", "d")
    assert sig.defaults == {"b": None, "c": 1}  # None is a default, REQUIRED marks none
    assert [(p.name, p.kind.name, p.default) for p in sig.parameters()] == [
        ("a", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("b", "POSITIONAL_OR_KEYWORD", None),
        ("c", "KEYWORD_ONLY", 1),
        ("d", "KEYWORD_ONLY", inspect.Parameter.empty),
    ]
    assert repr(REQUIRED) == "REQUIRED"
    with pytest.raises(KeyError, match="no constructor signature for 'vit_4d'; known: "):
        signature("vit_4d")


def test_recorded_config_follows_the_signature() -> None:
    case = spec.get("cct_3d").case()
    model = case.build("torch", spec.get("cct_3d").load_class("torch"))
    assert list(model.config) == list(signature("cct_3d").names)
    assert model.config == {**signature("cct_3d").defaults, **case.config}


def test_facts_are_pure_python() -> None:
    """The facts import the standard library and the numpy-free input checks only."""
    allowed = {"__future__", "collections", "dataclasses", "inspect", "typing"}
    for path in Path(facts.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                ok = module.split(".")[0] in allowed or module.startswith(
                    ("vit_parity.core.facts", "vit_parity.core.validate")
                )
                assert ok, f"{path.name} imports {module}"


# --- CCT: arithmetic against torch's own layers -------------------------------------------------------------

WINDOWS = [  # (size, kernel, stride, padding)
    (1, 1, 1, 0), (2, 3, 1, 1), (7, 3, 2, 1), (8, 2, 2, 0), (9, 4, 3, 2), (16, 7, 2, 3), (5, 5, 1, 2), (3, 2, 1, 1),
]  # fmt: skip


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), WINDOWS)
def test_conv_out_is_the_output_length_of_torchs_conv_and_pool(
    size: int, kernel: int, stride: int, padding: int
) -> None:
    x = torch.zeros(1, 1, size, 1, 1)
    conv = F.conv3d(x, torch.zeros(1, 1, kernel, 1, 1), stride=(stride, 1, 1), padding=(padding, 0, 0))
    pool = F.max_pool3d(x, (kernel, 1, 1), (stride, 1, 1), (padding, 0, 0))
    assert cct.conv_out(size, kernel, stride, padding) == conv.shape[2] == pool.shape[2]


def test_conv_out_by_hand() -> None:
    assert cct.conv_out(224, 7, 2, 3) == 112  # the default spatial convolution: (224 + 6 - 7) // 2 + 1
    assert cct.conv_out(112, 3, 2, 1) == 56  # then the default pool
    assert cct.conv_out(4, 2, 1, 0) == 3
    assert cct.conv_out(2, 3, 1, 0) == 0  # a window larger than the padded input: no output


def cct_geometry(**overrides: object) -> cct.Geometry:
    """:func:`cct.geometry` with the constructor's defaults for what ``overrides`` does not set."""
    defaults = signature("cct_3d").defaults
    names = inspect.signature(cct.geometry).parameters
    return cct.geometry(**{k: v for k, v in {**defaults, **overrides}.items() if k in names})


TOKENIZERS = [  # constructor arguments: one or two convolutions, odd and even kernels, padded pools
    dict(img_size=16, num_frames=4, kernel_size=3, stride=2, padding=1),
    dict(img_size=(20, 12), num_frames=5, frame_kernel_size=2, frame_stride=2, kernel_size=5, stride=2, padding=1),
    dict(img_size=16, num_frames=4, n_conv_layers=2, kernel_size=3, stride=1, padding=1, frame_kernel_size=2,
         frame_padding=0, frame_pooling_kernel_size=3, frame_pooling_padding=1),
    dict(img_size=(17, 9), num_frames=7, n_conv_layers=3, kernel_size=4, stride=1, padding=2,
         frame_pooling_kernel_size=2, frame_pooling_stride=2, pooling_kernel_size=2, pooling_stride=1,
         pooling_padding=0),
]  # fmt: skip


@pytest.mark.parametrize("args", TOKENIZERS)
def test_token_grid_is_the_shape_torchs_layers_leave(args: dict) -> None:
    geo = cct_geometry(embedding_dim=8, num_heads=2, **args)
    tok = geo.tokenizer
    x = torch.zeros(1, tok.channels[0], *geo.size)
    for c_in, c_out in zip(tok.channels, tok.channels[1:]):
        weight = torch.zeros(c_out, c_in, *tok.kernel)
        x = F.relu(F.conv3d(x, weight, None, tok.stride, tok.padding))
        x = F.max_pool3d(x, tok.pool_kernel, tok.pool_stride, tok.pool_padding)
    assert geo.grid == tok.grid(geo.size) == tuple(x.shape[2:])
    assert tok.channels[-1] == 8 and len(tok.channels) == args.get("n_conv_layers", 1) + 1
    assert all(c == cct.INNER_CHANNELS for c in tok.channels[1:-1])


def test_default_geometry_by_hand() -> None:
    geo = cct_geometry()
    assert geo.size == (8, 224, 224)
    assert geo.tokenizer.kernel == (3, 7, 7) and geo.tokenizer.stride == (1, 2, 2)
    assert geo.tokenizer.padding == (1, 3, 3)  # frame padding 3 // 2
    assert geo.tokenizer.pool_kernel == (1, 3, 3) and geo.tokenizer.pool_padding == (0, 1, 1)  # 1 // 2
    assert geo.grid == (8, 56, 56)  # 224 -> conv 112 -> pool 56; frames 8 -> 8 -> 8
    assert geo.tokenizer.channels == (3, 768)
    assert len(geo.rates) == 12 and geo.rates[0] == 0.0 and geo.rates[-1] == pytest.approx(0.1)


@pytest.mark.parametrize(("kernel", "padding"), [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)])
def test_frame_paddings_default_to_half_the_kernel(kernel: int, padding: int) -> None:
    assert cct.default_padding(kernel) == padding
    geo = cct_geometry(frame_kernel_size=kernel, frame_pooling_kernel_size=kernel, num_frames=8)
    assert geo.tokenizer.padding[0] == geo.tokenizer.pool_padding[0] == padding
    given = cct_geometry(frame_kernel_size=kernel, frame_padding=0, frame_pooling_padding=0, num_frames=8)
    assert given.tokenizer.padding[0] == given.tokenizer.pool_padding[0] == 0


def test_stochastic_depth_rates_are_linear_from_zero() -> None:
    assert cct.stochastic_depth_rates(3, 0.1) == pytest.approx((0.0, 0.05, 0.1))
    assert cct.stochastic_depth_rates(5, 0.2) == pytest.approx((0.0, 0.05, 0.1, 0.15, 0.2))
    assert cct.stochastic_depth_rates(2, 0.3) == pytest.approx((0.0, 0.3))
    assert cct.stochastic_depth_rates(1, 0.1) == (0.0,)
    assert cct.stochastic_depth_rates(0, 0.1) == ()
    assert cct_geometry(num_layers=3, stochastic_depth_rate=0.5).rates == pytest.approx((0.0, 0.25, 0.5))


def test_cct_argument_checks() -> None:
    with pytest.raises(ValueError, match=r"positional_embedding must be one of \('learnable', 'sine', 'none'\)"):
        cct_geometry(positional_embedding="rope")
    with pytest.raises(ValueError, match="embedding_dim 24 must be divisible by num_heads 5"):
        cct_geometry(embedding_dim=24, num_heads=5)
    with pytest.raises(ValueError, match=r"the tokenizer leaves no tokens for num_frames x img_size \(4, 2, 16\)"):
        cct_geometry(img_size=(2, 16), num_frames=4, kernel_size=3, padding=0)
    with pytest.raises(ValueError, match="img_size must be a positive int or a tuple of 2 positive ints"):
        cct_geometry(img_size=(16, 16, 16))
    cct.check_tokens((1, 3, 4, 8, 8), (2, 1, 1))
    with pytest.raises(ValueError, match=r"video of shape \(1, 3, 4, 2, 16\) is too small: the tokenizer leaves"):
        cct.check_tokens((1, 3, 4, 2, 16), (2, 0, 4))


# --- CCT on images: the same arithmetic over two axes ----------------------------------------------------------


def cct_image_geometry(**overrides: object) -> cct.Geometry:
    """:func:`cct.image_geometry` with the image constructor's defaults for what ``overrides`` does not set."""
    defaults = signature("cct").defaults
    names = inspect.signature(cct.image_geometry).parameters
    return cct.image_geometry(**{k: v for k, v in {**defaults, **overrides}.items() if k in names})


IMAGE_TOKENIZERS = [  # constructor arguments: one to three convolutions, odd and even kernels, padded pools
    dict(img_size=16, kernel_size=3, stride=2, padding=1),
    dict(img_size=(20, 12), kernel_size=5, stride=2, padding=1, pooling_kernel_size=2, pooling_padding=0),
    dict(img_size=(17, 9), n_conv_layers=3, kernel_size=4, stride=1, padding=2, pooling_kernel_size=2,
         pooling_stride=1, pooling_padding=1),
]  # fmt: skip


@pytest.mark.parametrize("args", IMAGE_TOKENIZERS)
def test_image_token_grid_is_the_shape_torchs_2d_layers_leave(args: dict) -> None:
    geo = cct_image_geometry(embedding_dim=8, num_heads=2, **args)
    tok = geo.tokenizer
    x = torch.zeros(1, tok.channels[0], *geo.size)
    for c_in, c_out in zip(tok.channels, tok.channels[1:]):
        x = F.relu(F.conv2d(x, torch.zeros(c_out, c_in, *tok.kernel), None, tok.stride, tok.padding))
        x = F.max_pool2d(x, tok.pool_kernel, tok.pool_stride, tok.pool_padding)
    assert geo.grid == tok.grid(geo.size) == tuple(x.shape[2:])
    assert tok.channels[-1] == 8 and len(tok.channels) == args.get("n_conv_layers", 1) + 1


def test_default_image_geometry_by_hand() -> None:
    geo = cct_image_geometry()
    assert geo.size == (224, 224)
    tok = geo.tokenizer
    assert (tok.kernel, tok.stride, tok.padding) == ((7, 7), (2, 2), (3, 3))
    assert (tok.pool_kernel, tok.pool_stride, tok.pool_padding) == ((3, 3), (2, 2), (1, 1))
    assert geo.grid == (56, 56)  # 224 -> conv 112 -> pool 56
    assert geo.tokenizer.channels == (3, 768)
    assert len(geo.rates) == 12 and geo.rates[0] == 0.0 and geo.rates[-1] == pytest.approx(0.1)
    assert cct_image_geometry(num_layers=3, stochastic_depth_rate=0.5).rates == pytest.approx((0.0, 0.25, 0.5))


def test_image_cct_argument_checks() -> None:
    with pytest.raises(ValueError, match=r"positional_embedding must be one of \('learnable', 'sine', 'none'\)"):
        cct_image_geometry(positional_embedding="rope")
    with pytest.raises(ValueError, match="embedding_dim 24 must be divisible by num_heads 5"):
        cct_image_geometry(embedding_dim=24, num_heads=5)
    with pytest.raises(ValueError, match=r"the tokenizer leaves no tokens for img_size \(2, 16\) \(grid \(0, 4\)\)"):
        cct_image_geometry(img_size=(2, 16), kernel_size=3, padding=0)
    with pytest.raises(ValueError, match="img_size must be a positive int or a tuple of 2 positive ints"):
        cct_image_geometry(img_size=(16, 16, 16))
    with pytest.raises(ValueError, match=r"img of shape \(1, 3, 2, 16\) is too small: the tokenizer leaves"):
        cct.check_tokens((1, 3, 2, 16), (0, 4), "img")


# --- CCT presets ---------------------------------------------------------------------------------------------

PAPER = {  # name: (layers, heads, mlp ratio, embedding dim), Hassani et al. (2021)
    "cct_2": (2, 2, 1, 128), "cct_4": (4, 2, 1, 128), "cct_6": (6, 4, 2, 256), "cct_7": (7, 4, 2, 256),
    "cct_8": (8, 4, 2, 256), "cct_14": (14, 6, 3, 384), "cct_16": (16, 6, 3, 384),
}  # fmt: skip


def test_preset_table() -> None:
    assert {name: tuple(p) for name, p in cct.PRESETS.items()} == PAPER
    assert list(cct.PRESETS) == list(PAPER)


@pytest.mark.parametrize(("kernel_size", "stride", "padding"), [(3, 1, 1), (1, 1, 1), (5, 1, 2), (7, 2, 3), (9, 3, 4)])
def test_preset_stride_and_padding_follow_the_kernel(kernel_size: int, stride: int, padding: int) -> None:
    # stride max(1, k // 2 - 1), padding max(1, k // 2)
    kwargs = cct.preset("cct_7", kernel_size=kernel_size)
    assert (kwargs["kernel_size"], kwargs["stride"], kwargs["padding"]) == (kernel_size, stride, padding)


def test_preset_arguments() -> None:
    assert cct.preset("cct_7", img_size=32) == dict(
        num_layers=7, num_heads=4, mlp_ratio=2, embedding_dim=256, kernel_size=3, stride=1, padding=1, img_size=32
    )
    assert cct.preset("cct_2", kernel_size=7, stride=3, padding=0)["stride"] == 3
    assert cct.preset("cct_2", kernel_size=7, padding=0)["padding"] == 0
    with pytest.raises(TypeError, match=r"cct_2 sets \['num_layers'\] itself"):
        cct.preset("cct_2", num_layers=3)
    with pytest.raises(KeyError, match="unknown CCT preset 'cct_3'"):
        cct.preset("cct_3")


@pytest.mark.parametrize("name", list(PAPER))
def test_both_backends_build_the_presets_from_the_facts(name: str) -> None:
    args = dict(img_size=32, num_frames=4, num_classes=7)
    want = {**signature("cct_3d").defaults, **cct.preset(name, **args)}
    assert name in vit_torch.cct_3d.__all__ and name in vit_flax.cct_3d.__all__
    with torch.device("meta"):  # shapes only
        assert getattr(vit_torch.cct_3d, name)(**args).config == want
    if name == "cct_2":  # each flax model traces its own initialization: one is enough
        assert nnx.eval_shape(lambda: vit_flax.cct_3d.cct_2(**args)).config == want


@pytest.mark.parametrize("name", ["cct_2", "cct_16"])
def test_both_backends_build_the_image_presets_from_the_facts(name: str) -> None:
    args = dict(img_size=32, num_classes=7)
    want = {**signature("cct").defaults, **cct.preset(name, **args)}
    assert name in vit_torch.cct.__all__ and name in vit_flax.cct.__all__
    with torch.device("meta"):  # shapes only
        assert getattr(vit_torch.cct, name)(**args).config == want
    if name == "cct_2":  # each flax model traces its own initialization: one is enough
        assert nnx.eval_shape(lambda: vit_flax.cct.cct_2(**args)).config == want


# --- ViViT ---------------------------------------------------------------------------------------------------


def test_vivit_argument_checks() -> None:
    for variant in vivit.VARIANTS:
        for pool in vivit.POOLS:
            vivit.check_arguments(pool=pool, variant=variant, spatial_depth=2, temporal_depth=2)
    vivit.check_arguments(pool="cls", variant="factorized_encoder", spatial_depth=2, temporal_depth=1)
    with pytest.raises(ValueError, match="spatial_depth and temporal_depth must be equal, got 2 and 1"):
        vivit.check_arguments(pool="cls", variant="factorized_self_attention", spatial_depth=2, temporal_depth=1)
    with pytest.raises(ValueError, match=r"variant must be one of \('factorized_encoder', 'factorized_self_att"):
        vivit.check_arguments(pool="cls", variant="joint", spatial_depth=1, temporal_depth=1)
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        vivit.check_arguments(pool="max", variant="factorized_encoder", spatial_depth=1, temporal_depth=1)
    assert signature("vivit").defaults["variant"] == vivit.VARIANTS[0]
    assert signature("vivit").defaults["pool"] == vivit.POOLS[0]
