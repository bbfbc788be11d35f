"""DeepViT: re-attention and the whole model against computations from the parameters; bad input named."""

from __future__ import annotations

import math

import pytest
import torch

from vit_torch.attention_variants import TalkingHeadsAttention
from vit_torch.deepvit import DeepViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=3, mlp_dim=32, dim_head=8)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def re_attention(x: torch.Tensor, p: dict, pre: str, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax maps mixed across heads by ``mix_heads_post_attn``, normalized over the heads, then the values."""
    w = p[pre + "to_qkv.weight"]
    b, n, _ = x.shape
    q, k, v = ((x @ t.T).reshape(b, n, heads, -1).permute(0, 2, 1, 3) for t in w.chunk(3))
    probs = (torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])).softmax(-1)
    mixed = torch.einsum("bhij,hg->bgij", probs, p[pre + "mix_heads_post_attn"])
    # LayerNorm over the heads, written out at each (i, j)
    mu = mixed.mean(1, keepdim=True)
    var = ((mixed - mu) ** 2).mean(1, keepdim=True)
    scale, shift = p[pre + "head_norm.weight"].view(1, -1, 1, 1), p[pre + "head_norm.bias"].view(1, -1, 1, 1)
    attn = (mixed - mu) / torch.sqrt(var + 1e-5) * scale + shift
    out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.weight"].T + p[pre + "to_out.bias"], probs


def deepvit_by_hand(model: DeepViT, img: torch.Tensor, heads: int) -> torch.Tensor:
    p = dict(model.named_parameters())
    b, c, hh, ww = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, c, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.weight"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.weight"].T + p[e + "proj.bias"], p[e + "post_norm.weight"], p[e + "post_norm.bias"])
    x = torch.cat((p["cls_token"].expand(b, 1, -1), x), dim=1) + p["pos_embedding"]
    for i in range(len(model.transformer.blocks)):
        pre = f"transformer.blocks.{i}."
        x = x + re_attention(layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"]), p, pre + "attn.", heads)[0]
        h = layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.weight"].T
        h = h + p[pre + "ff.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ p[pre + "ff.fc2.weight"].T + p[pre + "ff.fc2.bias"]
    pooled = x[:, 0] if model.pool == "cls" else x.mean(1)
    return layer_norm(pooled, p["norm.weight"], p["norm.bias"]) @ p["mlp_head.weight"].T + p["mlp_head.bias"]


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Mixing matrices and head norms away from their start, so that both count."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mix_heads" in name or "head_norm" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("pool", ["cls", "mean"])
@torch.no_grad()
def test_deepvit_matches_a_computation_from_its_parameters(pool: str) -> None:
    torch.manual_seed(0)
    model = _perturbed(DeepViT(pool=pool, **SMALL)).eval()
    img = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(img), deepvit_by_hand(model, img, heads=3), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_re_attention_by_hand_and_its_maps() -> None:
    torch.manual_seed(0)
    attn = _perturbed(TalkingHeadsAttention(16, heads=4, dim_head=8, pre_mix=False, head_norm=True)).eval()
    assert attn.mix_heads_pre_attn is None and attn.mix_heads_post_attn.shape == (4, 4)
    x = torch.randn(2, 6, 16)
    out, probs = attn(x, return_attn=True)
    want, want_probs = re_attention(x, {f"a.{k}": v for k, v in attn.named_parameters()}, "a.", 4)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, want_probs, rtol=1e-5, atol=1e-6)  # the softmax's maps, before re-attention
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 6))


def test_mean_pool_normalizes_after_pooling() -> None:
    torch.manual_seed(0)
    model = DeepViT(pool="mean", **SMALL).eval()
    with torch.no_grad():
        logits, f = model(torch.randn(2, 3, 16, 16), return_features=True)
        torch.testing.assert_close(f["pre_logits"], model.norm(f["block01"].mean(1)))
        torch.testing.assert_close(logits, model.mlp_head(f["pre_logits"]))


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        DeepViT(**dict(SMALL, pool="max"))
    with pytest.raises(ValueError, match="heads must be an int >= 2: re-attention"):
        DeepViT(**dict(SMALL, heads=1))
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        DeepViT(**dict(SMALL, image_size=18))
    model = DeepViT(**dict(SMALL, channels=1))
    with pytest.raises(ValueError, match="channels=1"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(torch.randn(1, 1, 16, 20))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(torch.randn(1, 1, 10, 16))
    with pytest.raises(ValueError, match=r"4-D tensor \(b c height width\)"):
        model(torch.randn(1, 16, 16))


def test_readme_example() -> None:
    v = DeepViT(
        image_size=256,
        patch_size=32,
        num_classes=1000,
        dim=1024,
        depth=6,
        heads=16,
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
    )
    img = torch.randn(1, 3, 256, 256)
    preds = v(img)  # (1, 1000)
    assert preds.shape == (1, 1000)
