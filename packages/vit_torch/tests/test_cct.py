"""CCT on images: against an explicit computation, its sine table, its tokenizer and defaults, the presets, the
README examples and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vit_parity.core.facts import cct as cct_facts
from vit_parity.core.facts import signature
from vit_torch import cct, cct_3d

CCT = dict(img_size=16, embedding_dim=24, kernel_size=3, stride=2, padding=1, num_layers=1, num_heads=2,
           mlp_ratio=1.0, num_classes=4)  # fmt: skip


def reference_cct(model: cct.CCT, img: torch.Tensor) -> torch.Tensor:
    """CCT recomputed from its parameters with plain tensor ops: conv, ReLU and a max pool written as a maximum over
    shifted slices of the -inf padded map, positions cut from the reshaped grid, each encoder layer written out
    (the stream normalized after the attention residual), sequence pooling as a softmax-weighted sum."""
    tok = model.tokenizer
    x = img
    for conv in tok.convs:
        x = F.conv2d(x, conv.weight, None, tok.stride, tok.padding).clamp(min=0)
        (kh, kw), (sh, sw), (ph, pw) = tok.pool_kernel, tok.pool_stride, tok.pool_padding
        x = F.pad(x, (pw, pw, ph, ph), value=-math.inf)
        oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
        shifted = [x[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] for i in range(kh) for j in range(kw)]
        x = torch.stack(shifted).amax(0)
    b, d, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h * w, d)
    if model.positional_emb is not None:
        x = x + model.positional_emb[0].reshape(*model.grid, d)[:h, :w].reshape(h * w, d)
    heads = model.transformer.blocks[0].attn.heads
    for block in model.transformer.blocks:
        y = F.layer_norm(x, (d,), block.norm1.weight, block.norm1.bias, 1e-5)
        qkv = (y @ block.attn.to_qkv.weight.T).chunk(3, -1)
        q, k, v = (t.reshape(b, h * w, heads, -1).transpose(1, 2) for t in qkv)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, h * w, d)
        x = x + y @ block.attn.to_out.weight.T + block.attn.to_out.bias
        x = F.layer_norm(x, (d,), block.norm2.weight, block.norm2.bias, 1e-5)
        ff = block.ff
        x = x + F.gelu(x @ ff.fc1.weight.T + ff.fc1.bias) @ ff.fc2.weight.T + ff.fc2.bias
    norm = model.transformer.norm
    x = F.layer_norm(x, (d,), norm.weight, norm.bias, 1e-5)
    weights = torch.softmax(x @ model.attention_pool.weight[0] + model.attention_pool.bias, dim=1)
    return torch.einsum("bn,bnd->bd", weights, x) @ model.fc.weight.T + model.fc.bias


@pytest.mark.parametrize("positional_embedding", cct_facts.POSITIONAL_EMBEDDINGS)
def test_cct_matches_an_explicit_computation(positional_embedding: str) -> None:
    torch.manual_seed(0)
    cfg = dict(CCT, img_size=(16, 12), num_layers=2, n_conv_layers=2, stride=1)
    model = cct.CCT(**cfg, positional_embedding=positional_embedding).eval()
    assert model.grid == (4, 3)  # 16 -> conv 16 -> pool 8 -> conv 8 -> pool 4; 12 -> 12 -> 6 -> 6 -> 3
    assert all(block.post_norm for block in model.transformer.blocks)
    for shape in [(2, 3, 16, 12), (2, 3, 8, 12)]:  # the full image, then grid (2, 3) of (4, 3)
        img = torch.randn(shape)
        with torch.no_grad():
            logits, features = model(img, return_features=True)
            torch.testing.assert_close(logits, reference_cct(model, img), rtol=1e-5, atol=1e-5)
    assert list(features) == ["block00", "block01", "pre_logits"]
    assert features["block01"].shape == (2, 6, 24) and features["pre_logits"].shape == (2, 24)


def test_one_body_for_images_and_videos() -> None:
    assert issubclass(cct.CCT, cct.CompactTransformer) and issubclass(cct_3d.CCT, cct.CompactTransformer)
    image, video = cct.CCT(**CCT), cct_3d.CCT(**CCT, num_frames=4)
    assert type(image.tokenizer.convs[0]) is torch.nn.Conv2d and type(video.tokenizer.convs[0]) is torch.nn.Conv3d
    assert [k for k in image.state_dict() if not k.startswith("tokenizer.")] == [
        k for k in video.state_dict() if not k.startswith("tokenizer.")
    ]


def test_cct_state_dict_keys() -> None:
    model = cct.CCT(**CCT, n_conv_layers=2, positional_embedding="learnable")
    keys = [k for k in model.state_dict() if not k.startswith("transformer.")]
    assert keys == ["positional_emb", "tokenizer.convs.0.weight", "tokenizer.convs.1.weight", "attention_pool.weight",
                    "attention_pool.bias", "fc.weight", "fc.bias"]  # fmt: skip
    prefix = "transformer.blocks.0."
    block = {k.removeprefix(prefix) for k in model.state_dict() if k.startswith(prefix)}
    assert block == {"norm1.weight", "norm1.bias", "attn.to_qkv.weight", "attn.to_out.weight", "attn.to_out.bias",
                     "norm2.weight", "norm2.bias", "ff.fc1.weight", "ff.fc1.bias", "ff.fc2.weight",
                     "ff.fc2.bias"}  # fmt: skip


def test_cct_sine_table_is_the_interleaved_1d_sinusoid_over_the_flattened_grid() -> None:
    model = cct.CCT(**dict(CCT, img_size=(16, 8)), positional_embedding="sine")
    assert model.grid == (4, 2)
    n, d = 8, 24
    p = torch.arange(n, dtype=torch.float64)[:, None]  # token (i, j) is position 2 i + j
    i = torch.arange(d)[None, :]
    angles = p / 10000 ** (2 * (i // 2) / d)
    want = torch.where(i % 2 == 0, angles.sin(), angles.cos()).float()
    torch.testing.assert_close(model.positional_emb[0], want, rtol=1e-6, atol=1e-6)
    assert "positional_emb" not in model.state_dict()  # a fixed table, not a weight


def test_cct_tokenizer_grid_and_defaults_follow_the_reference() -> None:
    model = cct.CCT(img_size=(20, 12), embedding_dim=16, num_heads=2, num_layers=3, kernel_size=5, stride=2, padding=1)
    conv = model.tokenizer.convs[0]
    assert conv.weight.shape == (16, 3, 5, 5) and conv.bias is None
    assert conv.padding == (1, 1) and conv.stride == (2, 2)
    assert model.tokenizer.pool_kernel == (3, 3) and model.tokenizer.pool_padding == (1, 1)
    with torch.no_grad():
        tokens, grid = model.tokenizer(torch.zeros(1, 3, 20, 12))
    assert grid == model.grid == (5, 3) == model.tokenizer.grid((20, 12)) and tokens.shape == (1, 15, 16)
    assert [b.drop_path.drop_prob for b in model.transformer.blocks] == pytest.approx([0.0, 0.05, 0.1])
    assert [b.attn.dropout for b in model.transformer.blocks] == [0.1] * 3  # attention dropout
    assert model.transformer.blocks[0].attn.out_drop.p == model.dropout.p == 0.0  # dropout_rate
    assert model.config == {**signature("cct").defaults, "img_size": (20, 12), "embedding_dim": 16, "num_heads": 2,
                            "num_layers": 3, "kernel_size": 5, "stride": 2, "padding": 1}  # fmt: skip


def test_cct_default_geometry() -> None:
    with torch.device("meta"):  # shapes only
        model = cct.CCT()
    assert model.size == (224, 224) and model.grid == (56, 56)  # 224 -> conv 112 -> pool 56
    assert model.tokenizer.convs[0].weight.shape == (768, 3, 7, 7) and model.positional_emb is not None


def test_cct_positional_arguments_follow_the_reference_order() -> None:
    with torch.device("meta"):
        model = cct.CCT(16, 24, 1, 1, 3, 2, 1, 3, 2, 1, 0.2, 0.0, 0.3, num_heads=2, num_layers=2)
    cfg = model.config
    assert (cfg["n_input_channels"], cfg["dropout_rate"], cfg["attention_dropout"]) == (1, 0.2, 0.0)
    assert cfg["stochastic_depth_rate"] == 0.3 and model.transformer.blocks[1].drop_path.drop_prob == 0.3


@pytest.mark.parametrize(
    ("preset", "layers", "heads", "ratio", "dim"),
    [("cct_2", 2, 2, 1, 128), ("cct_4", 4, 2, 1, 128), ("cct_6", 6, 4, 2, 256), ("cct_7", 7, 4, 2, 256),
     ("cct_8", 8, 4, 2, 256), ("cct_14", 14, 6, 3, 384), ("cct_16", 16, 6, 3, 384)],
)  # fmt: skip
def test_cct_presets(preset: str, layers: int, heads: int, ratio: int, dim: int) -> None:
    assert preset in cct.__all__ and getattr(cct, preset).__name__ == preset  # each name builds its own preset
    with torch.device("meta"):  # shapes only
        model = getattr(cct, preset)(img_size=32, num_classes=7)
    assert isinstance(model, cct.CCT)
    cfg = model.config
    assert (cfg["num_layers"], cfg["num_heads"], cfg["mlp_ratio"], cfg["embedding_dim"]) == (layers, heads, ratio, dim)
    assert (cfg["kernel_size"], cfg["stride"], cfg["padding"]) == (3, 1, 1)  # kernel 3: stride max(1, 0), pad 1
    assert len(model.transformer.blocks) == layers and model.transformer.blocks[0].ff.fc1.out_features == dim * ratio
    assert model.tokenizer.convs[0].weight.shape == (dim, 3, 3, 3)
    with torch.device("meta"):
        cfg = getattr(cct, preset)(kernel_size=7, img_size=32).config
    assert (cfg["stride"], cfg["padding"]) == (2, 3)


def test_cct_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positional_embedding must be one of"):
        cct.CCT(**CCT, positional_embedding="rope")
    with pytest.raises(ValueError, match="embedding_dim 24 must be divisible by num_heads 5"):
        cct.CCT(**dict(CCT, num_heads=5))
    with pytest.raises(ValueError, match=r"the tokenizer leaves no tokens for img_size \(2, 16\)"):
        cct.CCT(**dict(CCT, img_size=(2, 16), padding=0))
    with pytest.raises(ValueError, match="img_size must be a positive int or a tuple of 2 positive ints"):
        cct.CCT(**dict(CCT, img_size=(8, 8, 8)))
    with pytest.raises(TypeError, match=r"cct_2 sets \['num_heads'\] itself"):
        cct.cct_2(num_heads=4)


def test_cct_bad_input_names_the_argument() -> None:
    model = cct.CCT(**dict(CCT, padding=0))
    with pytest.raises(ValueError, match=r"img must be a 4-D tensor \(b c height width\)"):
        model(torch.randn(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="img must have channels=3"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="img width 20 is larger than the model's 16"):
        model(torch.randn(1, 3, 16, 20))
    with pytest.raises(ValueError, match=r"img of shape \(1, 3, 2, 16\) is too small: the tokenizer leaves no tokens"):
        model(torch.randn(1, 3, 2, 16))


def test_readme_examples_run() -> None:
    from vit_torch.cct import CCT

    model = CCT(
        img_size=(224, 448),
        embedding_dim=384,
        n_conv_layers=2,
        kernel_size=7,
        stride=2,
        padding=3,
        pooling_kernel_size=3,
        pooling_stride=2,
        pooling_padding=1,
        num_layers=14,
        num_heads=6,
        mlp_ratio=3.0,
        num_classes=1000,
        positional_embedding="learnable",  # ['sine', 'learnable', 'none']
    ).eval()
    img = torch.randn(1, 3, 224, 448)
    with torch.no_grad():
        pred = model(img)  # (1, 1000)
    assert pred.shape == (1, 1000) and model.grid == (14, 28)

    from vit_torch.cct import cct_14

    model = cct_14(
        img_size=224,
        n_conv_layers=1,
        kernel_size=7,
        stride=2,
        padding=3,
        pooling_kernel_size=3,
        pooling_stride=2,
        pooling_padding=1,
        num_classes=1000,
        positional_embedding="learnable",  # ['sine', 'learnable', 'none']
    )
    assert len(model.transformer.blocks) == 14 and model.grid == (56, 56)
