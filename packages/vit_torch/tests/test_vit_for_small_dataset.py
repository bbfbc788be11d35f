"""ViT for small datasets: shifted patch tokenization, locality self-attention and the whole model against
computations from the parameters; the seed's examples; bad input named."""

from __future__ import annotations

import math

import pytest
import torch

from vit_torch.attention_variants import LocalitySelfAttention
from vit_torch.init import init_weights
from vit_torch.vit_for_small_dataset import LSA, SPT, ViT, shifted_copies

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)


# --- an independent model, from the parameters with plain tensor ops --------------------------------------------


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` moved ``dy`` pixels down and ``dx`` right (each -1, 0 or 1), zeros where it uncovers the border."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    rows_to, rows_from = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h - max(dy, 0))
    cols_to, cols_from = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w - max(dx, 0))
    out[..., rows_to, cols_to] = img[..., rows_from, cols_from]
    return out


def spt_by_hand(img: torch.Tensor, p: dict, pre: str, patch: tuple[int, int]) -> torch.Tensor:
    """The image and its copies moved right, left, down, up, on the channels; patches as (ph, pw, c); norm; proj."""
    x = torch.cat([img, shift(img, 0, 1), shift(img, 0, -1), shift(img, 1, 0), shift(img, -1, 0)], dim=1)
    b, c, hh, ww = x.shape
    ph, pw = patch
    patches = x.reshape(b, c, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    x = layer_norm(patches, p[pre + "norm.weight"], p[pre + "norm.bias"])
    return x @ p[pre + "proj.weight"].T + p[pre + "proj.bias"]


def lsa_by_hand(x: torch.Tensor, p: dict, pre: str, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits times exp(temperature), the diagonal masked, softmax, values, output projection."""
    b, n, _ = x.shape
    q, k, v = ((x @ t.T).reshape(b, n, heads, -1).permute(0, 2, 1, 3) for t in p[pre + "to_qkv.weight"].chunk(3))
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * torch.exp(p[pre + "temperature"])
    logits = torch.where(torch.eye(n, dtype=torch.bool), torch.tensor(-1e30), logits)
    probs = torch.exp(logits - logits.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    out = torch.einsum("bhij,bhjd->bhid", probs, v).permute(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.weight"].T + p[pre + "to_out.bias"], probs


def vit_by_hand(model: ViT, img: torch.Tensor, heads: int) -> torch.Tensor:
    """The model on ``img``; a smaller image takes the top-left part of the position grid."""
    p = dict(model.named_parameters())
    x = spt_by_hand(img, p, "to_patch_embedding.", model.patch_size)
    b, d = x.shape[0], x.shape[-1]
    (gh, gw), (h, w) = model.grid, (img.shape[2] // model.patch_size[0], img.shape[3] // model.patch_size[1])
    pos = p["pos_embedding"][:, 1:].reshape(1, gh, gw, d)[:, :h, :w].reshape(1, h * w, d)
    x = torch.cat(((p["cls_token"] + p["pos_embedding"][:, :1]).expand(b, 1, -1), x + pos), dim=1)
    for i in range(len(model.transformer.blocks)):
        pre = f"transformer.blocks.{i}."
        x = x + lsa_by_hand(layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"]), p, pre + "attn.", heads)[0]
        h = layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.weight"].T
        h = h + p[pre + "ff.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ p[pre + "ff.fc2.weight"].T + p[pre + "ff.fc2.bias"]
    pooled = x[:, 0] if model.pool == "cls" else x.mean(1)
    return layer_norm(pooled, p["norm.weight"], p["norm.bias"]) @ p["mlp_head.weight"].T + p["mlp_head.bias"]


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Norms, biases and temperatures away from their start, so that each counts."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, ViT]:
    torch.manual_seed(0)
    return {pool: _perturbed(ViT(**SMALL, pool=pool)).eval() for pool in ("cls", "mean")}


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["cls", "mean"])
@torch.no_grad()
def test_vit_matches_a_computation_from_its_parameters(models: dict[str, ViT], pool: str) -> None:
    model = models[pool]
    img = torch.randn(2, 3, 16, 16)
    logits, f = model(img, return_features=True)
    torch.testing.assert_close(logits, vit_by_hand(model, img, heads=2), rtol=1e-5, atol=1e-5)
    # the pooled token is normalized after pooling (as the reference's head), the blocks have no final norm
    pooled = f["block01"][:, 0] if pool == "cls" else f["block01"].mean(1)
    torch.testing.assert_close(f["pre_logits"], model.norm(pooled))


@torch.no_grad()
def test_a_smaller_image_uses_the_top_left_positions(models: dict[str, ViT]) -> None:
    model = models["mean"]
    img = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(model(img), vit_by_hand(model, img, heads=2), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_spt_by_hand_and_its_shifts() -> None:
    torch.manual_seed(0)
    spt = _perturbed(SPT(dim=16, patch_size=(4, 2), channels=2))
    img = torch.randn(3, 2, 8, 6)
    tokens = spt(img)
    assert tokens.shape == (3, 2 * 3, 16)
    p = {f"s.{k}": v for k, v in spt.named_parameters()}
    torch.testing.assert_close(tokens, spt_by_hand(img, p, "s.", (4, 2)), rtol=1e-5, atol=1e-5)
    # on the channels: the image, then its copies moved right, left, down, up
    x = shifted_copies(img)
    assert x.shape == (3, 10, 8, 6)
    torch.testing.assert_close(x[:, 2:4, :, 1:], img[..., :-1])  # moved right: zeros in the first column
    assert not x[:, 2:4, :, 0].any() and not x[:, 4:6, :, -1].any()
    torch.testing.assert_close(x[:, 4:6, :, :-1], img[..., 1:])  # moved left
    torch.testing.assert_close(x[:, 6:8, 1:], img[:, :, :-1])  # moved down
    torch.testing.assert_close(x[:, 8:10, :-1], img[:, :, 1:])  # moved up
    assert not x[:, 6:8, 0].any() and not x[:, 8:10, -1].any()


@torch.no_grad()
def test_locality_self_attention_by_hand() -> None:
    torch.manual_seed(0)
    attn = _perturbed(LocalitySelfAttention(16, heads=3, dim_head=8)).eval()
    assert LSA is LocalitySelfAttention and attn.temperature.shape == ()
    p = {f"a.{k}": v for k, v in attn.named_parameters()}
    x = torch.randn(2, 7, 16)
    out, probs = attn(x, return_attn=True)
    want, want_probs = lsa_by_hand(x, p, "a.", 3)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, want_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn(x), out, rtol=1e-5, atol=1e-5)  # the fused path
    assert not probs.diagonal(dim1=-2, dim2=-1).any()  # no token attends to itself
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 7))
    # a mask adds to the diagonal's: a masked key gets no weight, in either path
    mask = torch.ones(7, 7, dtype=torch.bool)
    mask[:, 2] = False
    out_masked, probs_masked = attn(x, mask, return_attn=True)
    assert not probs_masked[..., 2].any() and not probs_masked.diagonal(dim1=-2, dim2=-1).any()
    torch.testing.assert_close(attn(x, mask), out_masked, rtol=1e-5, atol=1e-5)
    # a lone token attends to itself (the only key), as the reference's softmax over one masked logit does
    one = torch.randn(2, 1, 16)
    v = (one @ p["a.to_qkv.weight"].chunk(3)[2].T) @ p["a.to_out.weight"].T + p["a.to_out.bias"]
    torch.testing.assert_close(attn(one), v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn(one, return_attn=True)[0], v, rtol=1e-5, atol=1e-5)


def test_temperature_starts_at_the_usual_scale_and_learns() -> None:
    torch.manual_seed(0)
    attn = LocalitySelfAttention(16, heads=2, dim_head=8)
    want = math.log(8**-0.5)
    assert attn.temperature.item() == pytest.approx(want)
    attn.temperature.data.fill_(3.0)
    model = init_weights(ViT(**SMALL), seed=0)  # the shared initializer starts it there too
    assert all(b.attn.temperature.item() == pytest.approx(want) for b in model.transformer.blocks)
    init_weights(attn, seed=0)
    assert attn.temperature.item() == pytest.approx(want)
    # at the start, the logits are scaled as plain attention's: softmax(q k^T / sqrt(d)) off the diagonal
    x = torch.randn(1, 5, 16)
    q, k, _ = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in attn.to_qkv(x).chunk(3, dim=-1))
    plain = ((q @ k.transpose(-2, -1)) / math.sqrt(8)).masked_fill(torch.eye(5, dtype=torch.bool), -math.inf)
    torch.testing.assert_close(attn(x, return_attn=True)[1], plain.softmax(-1))
    attn(x).square().mean().backward()
    assert attn.temperature.grad is not None and attn.temperature.grad != 0


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        ViT(**dict(SMALL, pool="max"))
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        ViT(**dict(SMALL, image_size=18))
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        SPT(dim=16, patch_size=0)
    model = ViT(**dict(SMALL, channels=1))
    with pytest.raises(ValueError, match="channels=1"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(torch.randn(1, 1, 16, 20))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(torch.randn(1, 1, 10, 16))
    with pytest.raises(ValueError, match=r"4-D tensor \(b c height width\)"):
        model(torch.randn(1, 16, 16))
    spt = SPT(dim=16, patch_size=4, channels=3)
    with pytest.raises(ValueError, match="width 6 must be a positive multiple of the patch size 4"):
        spt(torch.randn(1, 3, 8, 6))
    with pytest.raises(ValueError, match="channels=3"):
        spt(torch.randn(1, 1, 8, 8))


@torch.no_grad()
def test_readme_examples() -> None:
    v = ViT(
        image_size=256,
        patch_size=16,
        num_classes=1000,
        dim=1024,
        depth=6,
        heads=16,
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
    )

    img = torch.randn(1, 3, 256, 256)  # the seed's batch is 4: one image keeps this test in seconds

    preds = v(img)  # (1, 1000)
    assert preds.shape == (1, 1000)

    spt = SPT(dim=1024, patch_size=16, channels=3)

    img = torch.randn(4, 3, 256, 256)

    tokens = spt(img)  # (4, 256, 1024)
    assert tokens.shape == (4, 256, 1024)
