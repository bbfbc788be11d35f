"""ViT with a patch merger: the merger and the whole model against computations from their parameters, the merge
layer's numbering, the seed's examples, bad arguments and inputs named."""

from __future__ import annotations

import math

import pytest
import torch

from vit_torch.vit_with_patch_merger import PatchMerger, ViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=8)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def merge(x: torch.Tensor, p: dict, pre: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize the tokens, softmax the queries' scaled dot products over the tokens, sum the normalized tokens."""
    x = layer_norm(x, p[pre + "norm.weight"], p[pre + "norm.bias"])
    q = p[pre + "queries"]
    weights = torch.softmax(torch.einsum("md,bnd->bmn", q, x) / math.sqrt(q.shape[-1]), dim=-1)
    return torch.einsum("bmn,bnd->bmd", weights, x), weights


def attention(x: torch.Tensor, p: dict, pre: str, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    q, k, v = ((x @ w.T).reshape(b, n, heads, -1).permute(0, 2, 1, 3) for w in p[pre + "to_qkv.weight"].chunk(3))
    probs = (torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])).softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", probs, v).permute(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.weight"].T + p[pre + "to_out.bias"]


def by_hand(
    model: ViT, img: torch.Tensor, merge_after: int, heads: int, pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[int]]:
    """The logits, and the number of tokens each block saw; ``pos``: the positions of a smaller image."""
    p = dict(model.named_parameters())
    b, c, hh, ww = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, c, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.weight"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.weight"].T + p[e + "proj.bias"], p[e + "post_norm.weight"], p[e + "post_norm.bias"])
    x = x + (p["pos_embedding"] if pos is None else pos)
    seen = []
    for i in range(len(model.transformer.blocks)):
        seen.append(x.shape[1])
        pre = f"transformer.blocks.{i}."
        x = x + attention(layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"]), p, pre + "attn.", heads)
        h = layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.weight"].T
        h = h + p[pre + "ff.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ p[pre + "ff.fc2.weight"].T + p[pre + "ff.fc2.bias"]
        if i + 1 == merge_after:  # counted from 1
            x = merge(x, p, "transformer.patch_merger.")[0]
    x = layer_norm(x, p["transformer.norm.weight"], p["transformer.norm.bias"]).mean(1)
    return x @ p["mlp_head.weight"].T + p["mlp_head.bias"], seen


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Norms off their start (ones and zeros), so that a swapped weight and bias would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def models() -> dict[int | None, ViT]:
    """One model per merge layer (``None``: the default), built once for the module."""
    torch.manual_seed(0)
    return {k: _perturbed(ViT(patch_merge_layer=k, patch_merge_num_tokens=3, **SMALL)).eval() for k in (None, 1, 3)}


@pytest.mark.parametrize(("layer", "merge_after"), [(None, 1), (1, 1), (3, 3)])
@torch.no_grad()
def test_model_matches_a_computation_from_its_parameters(models: dict, layer: int | None, merge_after: int) -> None:
    """``patch_merge_layer`` counts blocks from 1 (the default: after block ``depth // 2``); the merged tokens go on
    through the remaining blocks and the final norm."""
    img = torch.randn(2, 3, 16, 16)
    model = models[layer]
    want, seen = by_hand(model, img, merge_after, heads=2)
    logits, f = model(img, return_features=True)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    assert [f[f"block{i:02d}"].shape[1] for i in range(3)] == seen == [16] * merge_after + [3] * (3 - merge_after)
    last = f["block02"] if merge_after < 3 else model.transformer.patch_merger(f["block02"])
    torch.testing.assert_close(f["pre_logits"], model.transformer.norm(last).mean(1))
    # a smaller image uses the top-left part of the position grid
    small = torch.randn(1, 3, 8, 12)
    pos = model.pos_embedding.reshape(1, 4, 4, -1)[:, :2, :3].reshape(1, 6, -1)
    want = by_hand(model, small, merge_after, heads=2, pos=pos)[0]
    torch.testing.assert_close(model(small), want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_patch_merger_alone_on_any_number_of_tokens() -> None:
    torch.manual_seed(0)
    merger = _perturbed(PatchMerger(dim=16, num_tokens_out=5))
    assert merger.queries.shape == (5, 16)
    p = {f"m.{k}": v for k, v in merger.named_parameters()}
    for n in (1, 7, 40):
        x = 3 * torch.randn(2, n, 16) + 1
        out, weights = merger(x, return_attn=True)
        want, want_weights = merge(x, p, "m.")
        assert out.shape == (2, 5, 16) and weights.shape == (2, 5, n)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(weights, want_weights, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
        torch.testing.assert_close(merger(x), out, rtol=0, atol=0)
    # a merger's output is a convex combination of the normalized tokens: one token is returned as it is normalized
    x = torch.randn(1, 1, 16)
    torch.testing.assert_close(merger(x), merger.norm(x).expand(1, 5, 16))


def test_merger_gets_gradients_and_the_depth_one_default_merges() -> None:
    torch.manual_seed(0)
    model = ViT(**dict(SMALL, depth=1), patch_merge_num_tokens=2)  # depth // 2 == 0: merge after the only block
    logits, f = model(torch.randn(2, 3, 16, 16), return_features=True)
    assert f["block00"].shape == (2, 16, 16) and f["pre_logits"].shape == (2, 16)
    logits.square().sum().backward()
    assert model.transformer.patch_merger.queries.grad.abs().sum() > 0


def test_bad_arguments_and_inputs_are_named() -> None:
    for layer in (0, 4, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"patch_merge_layer counts .* must be in 1\.\.3 \(depth=3\)"):
            ViT(**SMALL, patch_merge_layer=layer)
    with pytest.raises(ValueError, match="patch_merge_num_tokens must be a positive int, got 0"):
        ViT(**SMALL, patch_merge_num_tokens=0)
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        ViT(**dict(SMALL, image_size=18))
    merger = PatchMerger(dim=16, num_tokens_out=4)
    with pytest.raises(
        ValueError, match=r"x must be tokens of shape \(b, n, dim=16\) with n >= 1, got shape \(2, 5, 8\)"
    ):
        merger(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"\(b, n, dim=16\).*got shape \(5, 16\)"):
        merger(torch.randn(5, 16))
    with pytest.raises(ValueError, match=r"with n >= 1, got shape \(2, 0, 16\)"):
        merger(torch.randn(2, 0, 16))
    model = ViT(**dict(SMALL, channels=1))
    with pytest.raises(ValueError, match="channels=1"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(torch.randn(1, 1, 16, 20))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(torch.randn(1, 1, 10, 16))


@torch.no_grad()
def test_readme_examples() -> None:
    """The seed's two examples (one image instead of four, to keep the test fast)."""
    v = ViT(
        image_size=256,
        patch_size=16,
        num_classes=1000,
        dim=1024,
        depth=12,
        heads=8,
        patch_merge_layer=6,  # at which transformer layer to do patch merging
        patch_merge_num_tokens=8,  # the output number of tokens from the patch merge
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
    )

    img = torch.randn(1, 3, 256, 256)

    preds = v(img)  # (1, 1000)
    assert preds.shape == (1, 1000)

    merger = PatchMerger(dim=1024, num_tokens_out=8)  # output number of tokens

    features = torch.randn(4, 256, 1024)  # (batch, num tokens, dimension)

    out = merger(features)  # (4, 8, 1024)
    assert out.shape == (4, 8, 1024)
