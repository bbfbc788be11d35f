"""ViT and SimpleViT behaviour beyond shapes: position cropping, attention maps, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from vit_parity.core.posemb import sincos_table
from vit_torch import SimpleViT, ViT
from vit_torch.layers import Attention, crop_grid, patchify

SMALL = dict(num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)


def test_patchify_matches_explicit_loop() -> None:
    x = torch.randn(2, 3, 8, 12)
    patches = patchify(x, (4, 3))
    assert patches.shape == (2, 2 * 4, 4 * 3 * 3)
    for i in range(2):
        for j in range(4):
            want = x[:, :, 4 * i : 4 * i + 4, 3 * j : 3 * j + 3].permute(0, 2, 3, 1).reshape(2, -1)
            torch.testing.assert_close(patches[:, i * 4 + j], want, rtol=0, atol=0)


def test_fused_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8).eval()
    x = torch.randn(3, 7, 16)
    mask = torch.rand(3, 1, 7, 7) > 0.3
    mask[..., 0] = True  # no fully masked rows
    fused = attn(x, mask)
    explicit, weights = attn(x, mask, return_attn=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    assert weights.shape == (3, 2, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 7))
    assert (weights[~mask.expand(3, 2, 7, 7)] == 0).all()
    # independent computation from the layer's weights
    q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(3, 7, 2, 8).transpose(1, 2) for t in (q, k, v))
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    want = logits.masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(weights, want, rtol=1e-5, atol=1e-6)


def test_smaller_image_uses_matching_part_of_the_grid() -> None:
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=8, **SMALL).eval()
    img = torch.randn(1, 3, 16, 24)
    # embed the small image inside a full-size one: patches at the same grid positions share positions
    full = torch.zeros(1, 3, 32, 32)
    full[:, :, :16, :24] = img
    tokens_small, grid_small = model.to_patch_embedding(img)
    tokens_full, grid_full = model.to_patch_embedding(full)
    assert grid_small == (2, 3) and grid_full == (4, 4)
    pos = model.pos_embedding[0, 1:].reshape(4, 4, -1)
    cropped = crop_grid(model.pos_embedding[:, 1:], (4, 4), (2, 3))[0]
    torch.testing.assert_close(cropped, pos[:2, :3].reshape(6, -1))
    assert not torch.equal(cropped, model.pos_embedding[0, 1:7])  # not the first n rows
    torch.testing.assert_close(tokens_small, tokens_full.reshape(1, 4, 4, -1)[:, :2, :3].reshape(1, 6, -1))


def test_simple_vit_positions_are_the_2d_sincos_table() -> None:
    model = SimpleViT(image_size=(32, 16), patch_size=8, **SMALL)
    table = torch.tensor(sincos_table((4, 2), 32))
    torch.testing.assert_close(model.pos_embedding[0], table)
    # the table itself against the formula of Beyer et al.: x.sin, x.cos, y.sin, y.cos
    omega = 1.0 / 10000 ** (torch.arange(8, dtype=torch.float64) / 7)
    y, x = 3, 1
    want = torch.cat([torch.sin(x * omega), torch.cos(x * omega), torch.sin(y * omega), torch.cos(y * omega)])
    torch.testing.assert_close(table[y * 2 + x].double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [ViT, SimpleViT])
def test_bad_input_names_the_argument(cls: type) -> None:
    model = cls(image_size=32, patch_size=8, **SMALL)
    with pytest.raises(ValueError, match="channels=3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="height 40 is larger than the model's 32"):
        model(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match="width 20 must be a positive multiple of the patch size 8"):
        model(torch.randn(1, 3, 32, 20))
    with pytest.raises(ValueError, match=r"4-D tensor \(b c height width\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        cls(image_size=30, patch_size=8, **SMALL)


def test_pool_must_be_cls_or_mean() -> None:
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        ViT(image_size=32, patch_size=8, pool="max", **SMALL)


def test_mean_pool_differs_from_cls_pool() -> None:
    torch.manual_seed(0)
    a = ViT(image_size=32, patch_size=8, pool="cls", **SMALL).eval()
    b = ViT(image_size=32, patch_size=8, pool="mean", **SMALL).eval()
    b.load_state_dict(a.state_dict())
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (logits_a, features), logits_b = a(img, return_features=True), b(img)
        tokens = a.transformer.norm(features["block01"])
        torch.testing.assert_close(logits_a, a.mlp_head(tokens[:, 0]))
        torch.testing.assert_close(logits_b, a.mlp_head(tokens.mean(1)))


def test_config_is_recorded() -> None:
    model = ViT(image_size=(32, 16), patch_size=8, **SMALL)
    assert model.config["image_size"] == (32, 16)
    assert model.config["pool"] == "cls" and model.config["emb_dropout"] == 0.0
