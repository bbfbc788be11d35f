"""efficient.ViT: the shell around this library's transformer against a recomputation from its parameters, any module
as the transformer, the transformer alone, checkpoints, the seed README examples (a Nystromformer, x-transformers'
Encoder) and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import vit_torch
from vit_parity.core.features import Features
from vit_torch import layers
from vit_torch.efficient import Transformer, ViT

SHELL = dict(image_size=16, patch_size=4, num_classes=5, dim=16)


def body(depth: int = 2) -> Transformer:
    return Transformer(16, depth, 2, 8, 32)


def model(pool: str = "cls", transformer: nn.Module | None = None, **kw: object) -> ViT:
    torch.manual_seed(0)
    return ViT(**{**SHELL, **kw}, transformer=transformer or body(), pool=pool).eval()


def images(b: int = 2, h: int = 16, w: int = 16) -> Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(3))


# --- an independent computation from the parameters ------------------------------------------------------------


def layer_norm(x: Tensor, p: dict[str, Tensor], name: str) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]


def linear(x: Tensor, p: dict[str, Tensor], name: str) -> Tensor:
    y = x @ p[f"{name}.weight"].T
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def transformer_by_hand(x: Tensor, p: dict[str, Tensor], depth: int, heads: int, prefix: str = "transformer") -> Tensor:
    """Pre-norm blocks (softmax attention written out, exact GELU through erf) and the final norm."""
    for i in range(depth):
        blk = f"{prefix}.blocks.{i}" if prefix else f"blocks.{i}"
        h = layer_norm(x, p, f"{blk}.norm1")
        q, k, v = (
            t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in linear(h, p, f"{blk}.attn.to_qkv").chunk(3, -1)
        )
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + linear((attn @ v).transpose(1, 2).flatten(-2), p, f"{blk}.attn.to_out")
        h = linear(layer_norm(x, p, f"{blk}.norm2"), p, f"{blk}.ff.fc1")
        x = x + linear(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), p, f"{blk}.ff.fc2")
    return layer_norm(x, p, f"{prefix}.norm" if prefix else "norm")


def vit_by_hand(m: ViT, img: Tensor) -> Tensor:
    """Patches as ``(p1, p2, c)``, normalized, projected, normalized; the class token and the top-left positions of
    the grid; the transformer; the class token or the mean of every token; LayerNorm and Linear."""
    p = dict(m.named_parameters())
    b, c, h, w = img.shape
    ph, pw = m.patch_size
    gh, gw = h // ph, w // pw
    patches = img.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, ph * pw * c)
    x = layer_norm(linear(layer_norm(patches, p, "to_patch_embedding.pre_norm"), p, "to_patch_embedding.proj"), p,
                   "to_patch_embedding.post_norm")  # fmt: skip
    full_h, full_w = m.grid
    pos = p["pos_embedding"]
    grid_pos = pos[:, 1:].reshape(1, full_h, full_w, -1)[:, :gh, :gw].reshape(1, gh * gw, -1)
    x = torch.cat(((p["cls_token"] + pos[:, :1]).expand(b, -1, -1), x + grid_pos), dim=1)
    x = transformer_by_hand(x, p, m.transformer.config["depth"], m.transformer.config["heads"])
    pooled = x[:, 0] if m.pool == "cls" else x.mean(1)
    return linear(layer_norm(pooled, p, "mlp_head.norm"), p, "mlp_head.fc")


@pytest.mark.parametrize(("pool", "h", "w"), [("cls", 16, 16), ("mean", 16, 8)])
@torch.no_grad()
def test_the_model_is_the_vit_shell_around_its_transformer(pool: str, h: int, w: int) -> None:
    m, img = model(pool), images(h=h, w=w)
    torch.testing.assert_close(m(img), vit_by_hand(m, img), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_features_name_the_blocks_and_what_the_head_reads() -> None:
    m, img = model(), images()
    logits, f = m(img, return_features=True, return_attn=True)
    assert list(f) == ["block00/attn", "block00", "block01/attn", "block01", "pre_logits"]
    assert f["block00"].shape == (2, 17, 16) and f["block00/attn"].shape == (2, 2, 17, 17)
    torch.testing.assert_close(f["pre_logits"], m.transformer.norm(f["block01"])[:, 0])
    torch.testing.assert_close(m.mlp_head(f["pre_logits"]), logits)
    torch.testing.assert_close(logits, m(img), rtol=1e-5, atol=1e-5)


class Mixer(nn.Module):
    """A user's token mixer mapping (b, n, dim) to (b, n, dim): not a library transformer."""

    def __init__(self, dim: int = 16, out: int | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.fc(x)) + x.mean(1, keepdim=True)[..., : self.fc.out_features]


@pytest.mark.parametrize("pool", ["cls", "mean"])
@torch.no_grad()
def test_any_module_is_the_transformer(pool: str) -> None:
    mixer = Mixer()
    m, img = model(pool, mixer), images()
    assert m.transformer is mixer
    x = mixer(m.tokens(img))
    want = m.mlp_head(x[:, 0] if pool == "cls" else x.mean(1))
    torch.testing.assert_close(m(img), want, rtol=0, atol=0)
    _, f = m(img, return_features=True)
    assert list(f) == ["pre_logits"]  # the user's module records nothing


@torch.no_grad()
def test_a_library_transformer_records_its_blocks_and_the_registry_one_is_the_same() -> None:
    torch.manual_seed(0)
    plain = layers.Transformer(16, 2, 2, 8, 32)
    ours = body()
    ours.load_state_dict(plain.state_dict())  # the same keys
    img = images()
    a, b = model(transformer=plain), model(transformer=ours)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(img), b(img), rtol=0, atol=0)
    assert list(a(img, return_features=True)[1]) == ["block00", "block01", "pre_logits"]


@torch.no_grad()
def test_the_transformer_alone() -> None:
    torch.manual_seed(0)
    t = body().eval()
    x = torch.randn(2, 5, 16)
    p = {f"transformer.{k}": v for k, v in t.named_parameters()}
    torch.testing.assert_close(t(x), transformer_by_hand(x, p, 2, 2), rtol=1e-5, atol=1e-5)
    out, f = t(x, return_features=True)
    assert list(f) == ["block00", "block01", "pre_logits"]
    torch.testing.assert_close(f["pre_logits"], out, rtol=0, atol=0)
    assert t.config == dict(dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32, dropout=0.0)
    with pytest.raises(ValueError, match=r"features= .* or return_features/return_attn, not both"):
        t(x, features=Features(), return_features=True)
    with pytest.raises(ValueError, match=r"x must be a \(b, n, 16\) token sequence, got shape \(2, 5, 8\)"):
        t(torch.randn(2, 5, 8))


def test_hooks_and_gradients() -> None:
    m, img = model().train(), images()
    x = m.tokens(img)
    assert x.shape == (2, 17, 16)
    assert m.encode(x).shape == (2, 17, 16) and m.pool_tokens(x).shape == (2, 16)
    m(img).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


# --- checkpoints -------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_with_the_library_transformer(tmp_path: Path) -> None:
    m, img = model("mean", image_size=(16, 12), channels=3), images(w=12)
    assert m.config["transformer"] == {"__model__": "efficient_transformer", "config": m.transformer.config}
    vit_torch.save(m, tmp_path / "efficient")
    back = vit_torch.load(tmp_path / "efficient")
    assert isinstance(back.transformer, Transformer) and back.config == m.config
    with torch.no_grad():
        torch.testing.assert_close(back(img), m(img), rtol=0, atol=0)
    with pytest.raises(TypeError, match="constructor argument 'transformer'"):
        vit_torch.save(model(transformer=Mixer()), tmp_path / "user")


# --- the seed README examples (their packages are installed by their own test session) --------------------------


def test_seed_readme_nystromformer() -> None:
    nystrom_attention = pytest.importorskip("nystrom_attention")
    Nystromformer = nystrom_attention.Nystromformer

    efficient_transformer = Nystromformer(dim=512, depth=12, heads=8, num_landmarks=256)

    v = ViT(dim=512, image_size=2048, patch_size=32, num_classes=1000, transformer=efficient_transformer)

    # the seed's picture is (1, 3, 2048, 2048), 4096 patches: over two minutes on a 2-core CPU. The model takes any
    # picture up to image_size; a smaller one runs the same transformer on fewer tokens.
    img = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert v(img).shape == (1, 1000)


def test_seed_readme_x_transformers_encoder() -> None:
    x_transformers = pytest.importorskip("x_transformers")
    Encoder = x_transformers.Encoder

    v = ViT(
        dim=512,
        image_size=224,
        patch_size=16,
        num_classes=1000,
        transformer=Encoder(
            dim=512,  # set to be the same as the wrapper
            depth=12,
            heads=8,
            ff_glu=True,  # ex. feed forward GLU variant https://arxiv.org/abs/2002.05202
            residual_attn=True,  # ex. residual attention https://arxiv.org/abs/2012.11747
        ),
    )

    img = torch.randn(1, 3, 224, 224)
    assert v(img).shape == (1, 1000)


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(transformer=Transformer(32, 1, 2, 8, 32)), r"transformer is 32 wide, .* dim=16 wide: it must be 16"),
        (dict(transformer=layers.Transformer(8, 1, 2, 8, 32)), r"transformer is 8 wide, .* dim=16 wide"),
        (dict(transformer=lambda x: x), r"transformer must be a torch.nn.Module mapping .* got function"),
        (dict(transformer=None), r"transformer must be a torch.nn.Module .* got NoneType"),
        (dict(pool="max"), r"pool must be one of \('cls', 'mean'\), got 'max'"),
        (dict(image_size=18), r"image_size \(18, 18\) must be divisible by patch_size \(4, 4\)"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ViT(**{**SHELL, "transformer": body(), **kwargs})


class Pair(nn.Module):
    """Returns a tuple, as some transformers do when asked for more."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


@pytest.mark.parametrize(
    ("transformer", "match"),
    [
        (
            Mixer(16, 8),
            r"transformer must map .* with dim=16: given shape \(2, 17, 16\), it returned shape \(2, 17, 8\)",
        ),
        (Pair(), r"transformer must map .* it returned something that is no array"),
    ],
)
def test_a_transformer_that_changes_the_shape_is_named(transformer: nn.Module, match: str) -> None:
    m = model(transformer=transformer)
    with pytest.raises(ValueError, match=match):
        m(images())


def test_bad_images_are_named() -> None:
    m = model()
    with pytest.raises(ValueError, match=r"img must have channels=3 .* got 1"):
        m(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="img height 20 is larger than the model's 16"):
        m(torch.randn(1, 3, 20, 16))
    with pytest.raises(ValueError, match="img width 6 must be a positive multiple of the patch size 4"):
        m(torch.randn(1, 3, 16, 6))
