"""Tokens-to-Token ViT: the soft split against a loop over windows, the model against a recomputation from its
parameters, the README example, ``transformer=``, the hooks a distillable subclass uses, and bad arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import vit_torch
from vit_parity.core.facts import t2t as facts
from vit_torch.layers import Transformer
from vit_torch.t2t import T2TViT
from vit_torch.unfold import unfold

TINY = dict(num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """Independent soft split of a ``(b, c, h, w)`` array: visit every window in row-major order, read every pixel
    (zero outside the map) and list it channel first, then row, then column."""
    b, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    rows, cols = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((b, rows * cols, c * kh * kw), x.dtype)
    for r in range(rows):
        for q in range(cols):
            for ch in range(c):
                for i in range(kh):
                    for j in range(kw):
                        y, z = r * sh - ph + i, q * sw - pw + j
                        if 0 <= y < h and 0 <= z < w:
                            out[:, r * cols + q, (ch * kh + i) * kw + j] = x[:, ch, y, z]
    return out


GEOMETRIES = [  # (h, w), kernel, stride, padding
    ((8, 8), (3, 3), (2, 2), (1, 1)),
    ((9, 7), (7, 7), (4, 4), (2, 2)),
    ((6, 10), (2, 3), (1, 2), (0, 1)),
    ((5, 5), (4, 4), (4, 4), (2, 2)),
    ((4, 6), (2, 2), (3, 1), (0, 0)),  # stride larger than the kernel: pixels skipped
]


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), GEOMETRIES)
def test_unfold_lists_each_window_channel_then_row_then_column(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> None:
    x = torch.randn(2, 3, *size)
    tokens, grid = unfold(x, kernel, stride, padding)
    want = windows(x.numpy(), kernel, stride, padding)
    np.testing.assert_array_equal(tokens.numpy(), want)
    assert grid == facts.unfold_grid(size, kernel, stride, padding)
    assert tokens.shape[1] == grid[0] * grid[1]


def test_unfold_takes_ints_and_refuses_maps_smaller_than_the_window() -> None:
    x = torch.randn(1, 2, 5, 6)
    a, grid = unfold(x, 3, 2, 1)
    b, _ = unfold(x, (3, 3), (2, 2), (1, 1))
    assert torch.equal(a, b) and grid == (3, 3)
    with pytest.raises(ValueError, match=r"at least as large as the window 8 \(padding 1\), got shape \(1, 2, 5, 6\)"):
        unfold(x, 8, 1, 1)  # (5 + 2 - 8) // 1 + 1 = 0 rows
    with pytest.raises(ValueError, match=r"takes a \(b, c, h, w\) map"):
        unfold(torch.randn(2, 5, 6), 3)


# --- the soft-split arithmetic (vit_parity.core.facts.t2t) ------------------------------------------------------


def test_split_grids_widths_and_min_side_by_hand() -> None:
    assert facts.split_grids((224, 224), facts.DEFAULT_LAYERS) == ((56, 56), (28, 28), (14, 14))
    assert facts.widths(3, facts.DEFAULT_LAYERS) == (147, 1323, 11907)
    assert facts.split_padding(4) == 2 and facts.split_padding(3) == 1 and facts.split_padding(1) == 0
    assert facts.min_side(facts.DEFAULT_LAYERS) == 3  # (3 + 4 - 7) // 4 + 1 = 1, then 1 and 1
    assert facts.min_side(((3, 1), (3, 1))) == 5  # no padding: each split takes two pixels off
    for layers in (facts.DEFAULT_LAYERS, ((3, 1), (3, 1)), ((5, 3), (2, 1), (4, 3)), ((2, 2),)):
        least = facts.min_side(layers)
        assert min(facts.split_grids((least, least + 3), layers)[-1]) == 1
        assert min(facts.split_grids((least - 1, least + 3), layers)[-1]) < 1 or least == 1


@pytest.mark.parametrize("layers", [facts.DEFAULT_LAYERS, ((5, 3), (2, 1)), ((4, 4),)])
def test_the_model_grid_is_the_facts_grid(layers: tuple[tuple[int, int], ...]) -> None:
    model = T2TViT(image_size=(24, 20), channels=1, t2t_layers=layers, **TINY)
    tokens, grid = model.to_patch_embedding(torch.randn(1, 1, 24, 20))
    assert grid == facts.split_grids((24, 20), layers)[-1] == model.grid
    assert tokens.shape == (1, grid[0] * grid[1], 16)
    assert model.pos_embedding.shape == (1, grid[0] * grid[1] + 1, 16)


# --- the model against a recomputation from its parameters -------------------------------------------------------


def layer_norm(x: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{key}.weight"] + sd[f"{key}.bias"]


def transformer(x: Tensor, sd: dict[str, Tensor], key: str, heads: int) -> Tensor:
    """Pre-norm blocks and a final norm, from the state dict: explicit softmax attention, exact GELU."""
    i = 0
    while f"{key}.blocks.{i}.norm1.weight" in sd:
        p, i = f"{key}.blocks.{i}", i + 1
        h = layer_norm(x, sd, f"{p}.norm1")
        q, k, v = (
            t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (h @ sd[f"{p}.attn.to_qkv.weight"].T).chunk(3, -1)
        )
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).flatten(-2)
        if f"{p}.attn.to_out.weight" in sd:
            out = out @ sd[f"{p}.attn.to_out.weight"].T + sd[f"{p}.attn.to_out.bias"]
        x = x + out
        h = layer_norm(x, sd, f"{p}.norm2") @ sd[f"{p}.ff.fc1.weight"].T + sd[f"{p}.ff.fc1.bias"]
        x = x + (0.5 * h * (1 + torch.erf(h / 2**0.5))) @ sd[f"{p}.ff.fc2.weight"].T + sd[f"{p}.ff.fc2.bias"]
    return layer_norm(x, sd, f"{key}.norm")


def reference_t2t(model: T2TViT, img: Tensor, heads: int) -> Tensor:
    """T2T-ViT recomputed from the state dict: soft splits by :func:`windows`, one-head token transformers as wide
    as the tokens, positions cut from the reshaped full grid."""
    sd = model.state_dict()
    layers = model.geometry.layers
    x, grid = img, tuple(img.shape[2:])
    for i, (kernel, stride) in enumerate(layers):
        if i:
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)
        grid = facts.unfold_grid(grid, kernel, stride, stride // 2)
        pad = stride // 2
        x = torch.from_numpy(windows(x.numpy(), (kernel, kernel), (stride, stride), (pad, pad)))
        if i < len(layers) - 1:
            x = transformer(x, sd, f"to_patch_embedding.transformers.{i}", heads=1)
    x = x @ sd["to_patch_embedding.proj.weight"].T + sd["to_patch_embedding.proj.bias"]
    pos = sd["pos_embedding"][0, 1:].reshape(*model.grid, -1)[: grid[0], : grid[1]].reshape(-1, x.shape[-1])
    cls = sd["cls_token"][0] + sd["pos_embedding"][0, :1]
    x = torch.cat((cls.expand(x.shape[0], 1, -1), x + pos), dim=1)
    x = transformer(x, sd, "transformer", heads)
    x = x[:, 0] if model.pool == "cls" else x.mean(1)
    return x @ sd["mlp_head.weight"].T + sd["mlp_head.bias"]


CONFIGS = [  # config, input (h, w)
    (dict(image_size=16, channels=3, t2t_layers=((3, 2), (3, 2))), (16, 16)),
    (dict(image_size=(32, 24), channels=1, pool="mean"), (24, 16)),  # default splits, smaller non-square input
    (dict(image_size=(20, 24), channels=2, t2t_layers=((5, 3), (2, 1))), (16, 24)),  # stride 1: no padding
    (dict(image_size=16, channels=2, t2t_layers=((4, 4),)), (13, 16)),  # one split: no token transformer
]


@pytest.mark.parametrize(("config", "size"), CONFIGS)
@torch.no_grad()
def test_model_matches_a_recomputation_from_its_parameters(config: dict, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = T2TViT(**{**TINY, "depth": 2, **config}).double().eval()
    for p in model.parameters():  # norms and biases away from their starting values
        p.add_(0.1 * torch.randn_like(p))
    img = torch.randn(2, config["channels"], *size, dtype=torch.float64)
    torch.testing.assert_close(model(img), reference_t2t(model, img, heads=2), rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_features_name_the_token_transformers_and_the_transformer() -> None:
    torch.manual_seed(0)
    model = T2TViT(image_size=32, channels=1, **TINY).eval()
    img = torch.randn(2, 1, 32, 32)
    out, feats = model(img, return_features=True, return_attn=True)
    assert list(feats) == [
        "t2t0/block00/attn", "t2t0/block00", "t2t1/block00/attn", "t2t1/block00", "block00/attn", "block00",
        "pre_logits",
    ]  # fmt: skip
    assert feats["t2t0/block00"].shape == (2, 64, 49) and feats["t2t0/block00/attn"].shape == (2, 1, 64, 64)
    assert feats["t2t1/block00"].shape == (2, 16, 441) and feats["block00"].shape == (2, 5, 16)
    torch.testing.assert_close(out, model(img), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats["pre_logits"], model.transformer.norm(feats["block00"])[:, 0])
    _, last = model(img, return_features=[-1])
    assert list(last) == ["block00"]


def test_under_torch_compile_in_one_graph() -> None:
    torch.manual_seed(0)
    model = T2TViT(image_size=16, channels=1, t2t_layers=((3, 2), (2, 2)), **TINY).eval()
    img = torch.randn(2, 1, 16, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        want_out, want = model(img, return_features=True)
        got_out, got = compiled(img, return_features=True)
    torch.testing.assert_close(got_out, want_out)
    assert list(got) == list(want) == ["t2t0/block00", "block00", "pre_logits"]


# --- the README example, transformer=, the hooks of a distillable subclass, checkpoints ----------------------------


def test_readme_example() -> None:
    v = T2TViT(
        dim=512,
        image_size=224,
        depth=5,
        heads=8,
        mlp_dim=512,
        num_classes=1000,
        t2t_layers=((7, 4), (3, 2), (3, 2)),  # tuples of the kernel size and stride of each consecutive layers
    )
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        preds = v(img)
    assert preds.shape == (1, 1000)


class Mixer(nn.Module):
    """A user's token mixer mapping (b, n, dim) to (b, n, dim): not a library transformer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.tanh(self.fc(x.mean(1, keepdim=True)))


@torch.no_grad()
def test_a_user_transformer_replaces_depth_heads_and_mlp_dim() -> None:
    torch.manual_seed(0)
    mixer = Mixer(16)
    model = T2TViT(image_size=16, num_classes=5, dim=16, transformer=mixer, t2t_layers=((3, 2), (3, 2))).eval()
    assert model.transformer is mixer
    img = torch.randn(2, 3, 16, 16)
    want = model.mlp_head(mixer(model.tokens(img))[:, 0])
    torch.testing.assert_close(model(img), want, rtol=0, atol=0)
    _, feats = model(img, return_features=True)
    assert list(feats) == ["t2t0/block00", "pre_logits"]  # the user's module records nothing


@torch.no_grad()
def test_a_library_transformer_given_is_the_default_one() -> None:
    torch.manual_seed(0)
    layers = ((3, 2), (3, 2))
    built = T2TViT(image_size=16, t2t_layers=layers, **TINY).eval()
    given = T2TViT(
        image_size=16, num_classes=5, dim=16, t2t_layers=layers, transformer=Transformer(16, 1, 2, 8, 32)
    ).eval()
    given.load_state_dict(built.state_dict())  # the same keys
    img = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(given(img), built(img), rtol=0, atol=0)
    _, feats = given(img, return_features=True)
    assert list(feats) == ["t2t0/block00", "block00", "pre_logits"]


class WithExtraToken(T2TViT):
    """What a distillable student does: a learned token after the others, read out separately."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.extra = nn.Parameter(torch.randn(1, 1, self.pos_embedding.shape[-1]))

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        x = self.tokens(img)
        x = torch.cat((x, self.extra.expand(x.shape[0], -1, -1)), dim=1)
        x = self.encode(self.dropout(x))
        return self.mlp_head(self.pool_tokens(x[:, :-1])), x[:, -1]


@torch.no_grad()
def test_a_subclass_inserts_a_token_through_the_hooks() -> None:
    torch.manual_seed(0)
    model = WithExtraToken(image_size=16, t2t_layers=((3, 2), (3, 2)), **TINY).eval()
    img = torch.randn(2, 3, 16, 16)
    x = model.tokens(img)
    assert x.shape == (2, 1 + 16, 16)  # class token and a 4 x 4 grid, positions added
    torch.testing.assert_close(x[:, 0], (model.cls_token + model.pos_embedding[:, :1]).expand(2, 1, -1)[:, 0])
    assert model.positions((4, 4)).shape == (1, 17, 16)
    logits, extra = model(img)
    assert logits.shape == (2, 5) and extra.shape == (2, 16)
    plain = T2TViT.forward(model, img)  # the parent's pass, without the extra token
    assert not torch.allclose(logits, plain)  # the extra token took part in attention


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = T2TViT(image_size=(16, 12), channels=1, t2t_layers=[[3, 2], [2, 2]], pool="mean", **TINY).eval()
    vit_torch.save(model, tmp_path / "t2t")
    back = vit_torch.load(tmp_path / "t2t")
    assert back.config == {**model.config, "t2t_layers": ((3, 2), (2, 2))}
    img = torch.randn(1, 1, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(back(img), model(img), rtol=0, atol=0)
    with pytest.raises(TypeError, match="constructor argument 'transformer'"):
        vit_torch.save(T2TViT(image_size=16, num_classes=5, dim=16, transformer=Mixer(16)), tmp_path / "user")


# --- bad arguments and inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(transformer=Mixer(16)), r"transformer= replaces depth, heads and mlp_dim: leave them None, got \{'depth"),
        (dict(depth=None), r"depth, heads and mlp_dim must all be given unless transformer= is; missing \['depth'\]"),
        (dict(pool="max"), r"pool must be one of \('cls', 'mean'\), got 'max'"),
        (dict(t2t_layers=()), r"t2t_layers must be a non-empty sequence of \(kernel_size, stride\) pairs, got \(\)"),
        (dict(t2t_layers=((3, 2, 1),)), r"t2t_layers must be a non-empty sequence .* got \(\(3, 2, 1\),\)"),
        (dict(t2t_layers=((3, 0),)), r"t2t_layers must be .* pairs, got \(\(3, 0\),\)"),
        (dict(image_size=2), r"image_size \(2, 2\) is too small for t2t_layers .*: each side must be at least 3"),
        (dict(image_size=(16, 0)), r"image_size must be a positive int or a tuple of 2 positive ints"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        T2TViT(**{"image_size": 16, **TINY, **kwargs})


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 3, 2, 16), r"img height 2 is too small for t2t_layers \(\(7, 4\), \(3, 2\), \(3, 2\)\): it must be at "
         r"least 3 \(shape \(1, 3, 2, 16\)\)"),
        ((1, 3, 16, 20), r"img width 20 is larger than the model's 16"),
        ((1, 1, 16, 16), r"img must have channels=3"),
        ((3, 16, 16), r"img must be a 4-D tensor \(b c height width\)"),
    ],
)  # fmt: skip
def test_bad_images_are_named(shape: tuple[int, ...], match: str) -> None:
    model = T2TViT(image_size=16, **TINY)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


def test_smallest_image_runs() -> None:
    model = T2TViT(image_size=16, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 3, 3)).shape == (1, 5)
