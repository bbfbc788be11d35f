"""Parallel ViT: the parallel block and the whole model against computations from their parameters, the attention
maps of every branch, the seed's example, bad arguments and inputs named."""

from __future__ import annotations

import math

import pytest
import torch

from vit_torch.layers import Block
from vit_torch.parallel_vit import ParallelBlock, ViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def attention(x: torch.Tensor, p: dict, pre: str, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, _ = x.shape
    q, k, v = ((x @ w.T).reshape(b, n, heads, -1).permute(0, 2, 1, 3) for w in p[pre + "to_qkv.weight"].chunk(3))
    probs = (torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])).softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", probs, v).permute(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.weight"].T + p[pre + "to_out.bias"], probs


def feed_forward(x: torch.Tensor, p: dict, pre: str) -> torch.Tensor:
    h = x @ p[pre + "fc1.weight"].T + p[pre + "fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return h @ p[pre + "fc2.weight"].T + p[pre + "fc2.bias"]


def parallel_block(x: torch.Tensor, p: dict, pre: str, branches: int, heads: int) -> tuple[torch.Tensor, list]:
    """``x + sum_j attn_j(norm1_j(x))``, then ``x + sum_j ff_j(norm2_j(x))``; the maps of every branch."""
    outs = [
        attention(layer_norm(x, p[f"{pre}{j}.norm1.weight"], p[f"{pre}{j}.norm1.bias"]), p, f"{pre}{j}.attn.", heads)
        for j in range(branches)
    ]
    x = x + sum(out for out, _ in outs)
    x = x + sum(
        feed_forward(layer_norm(x, p[f"{pre}{j}.norm2.weight"], p[f"{pre}{j}.norm2.bias"]), p, f"{pre}{j}.ff.")
        for j in range(branches)
    )
    return x, [maps for _, maps in outs]


def by_hand(model: ViT, img: torch.Tensor, branches: int, heads: int) -> torch.Tensor:
    p = dict(model.named_parameters())
    b, c, hh, ww = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, c, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    x = patches @ p["to_patch_embedding.proj.weight"].T + p["to_patch_embedding.proj.bias"]  # no norms
    x = torch.cat((p["cls_token"].expand(b, 1, -1), x), dim=1) + p["pos_embedding"]
    for i in range(len(model.transformer.blocks)):
        x = parallel_block(x, p, f"transformer.blocks.{i}.branches.", branches, heads)[0]
    pooled = x[:, 0] if model.pool == "cls" else x.mean(1)
    return layer_norm(pooled, p["norm.weight"], p["norm.bias"]) @ p["mlp_head.weight"].T + p["mlp_head.bias"]


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Norms off their start (ones and zeros), so that a swapped weight and bias would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def models() -> dict[tuple[int, str], ViT]:
    torch.manual_seed(0)
    configs = [(1, "cls"), (2, "cls"), (3, "mean")]
    return {(k, pool): _perturbed(ViT(num_parallel_branches=k, pool=pool, **SMALL)).eval() for k, pool in configs}


@pytest.mark.parametrize(("branches", "pool"), [(1, "cls"), (2, "cls"), (3, "mean")])
@torch.no_grad()
def test_model_matches_a_computation_from_its_parameters(models: dict, branches: int, pool: str) -> None:
    model = models[branches, pool]
    assert all(len(block.branches) == branches for block in model.transformer.blocks)
    img = torch.randn(2, 3, 16, 16)
    logits, f = model(img, return_features=True)
    torch.testing.assert_close(logits, by_hand(model, img, branches, heads=2), rtol=1e-5, atol=1e-5)
    pooled = f["block01"][:, 0] if pool == "cls" else f["block01"].mean(1)  # no norm at the end of the stack
    torch.testing.assert_close(f["pre_logits"], model.norm(pooled))


@torch.no_grad()
def test_every_branch_gives_its_attention_map() -> None:
    torch.manual_seed(0)
    block = _perturbed(ParallelBlock(16, heads=2, dim_head=8, mlp_dim=32, branches=3)).eval()
    x = torch.randn(2, 7, 16)
    out, maps = block(x, return_attn=True)
    p = {f"b.{k}": v for k, v in block.named_parameters()}
    want, want_maps = parallel_block(x, p, "b.branches.", 3, heads=2)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block(x), out, rtol=1e-5, atol=1e-5)  # fused attention, same numbers
    assert list(maps) == ["branch0", "branch1", "branch2"]
    for j in range(3):
        torch.testing.assert_close(maps[f"branch{j}"], want_maps[j], rtol=1e-5, atol=1e-6)
    _, f = ViT(**SMALL, num_parallel_branches=3).eval()(torch.randn(1, 3, 16, 16), return_attn=True)
    assert list(f) == [f"block{i:02d}/attn/branch{j}" for i in range(2) for j in range(3)]


@torch.no_grad()
def test_one_branch_is_the_plain_block() -> None:
    torch.manual_seed(0)
    block = _perturbed(ParallelBlock(16, heads=2, dim_head=8, mlp_dim=32, branches=1)).eval()
    plain = Block(16, heads=2, dim_head=8, mlp_dim=32).eval()
    plain.load_state_dict({k.removeprefix("branches.0."): v for k, v in block.state_dict().items()})
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x), plain(x), rtol=1e-6, atol=1e-6)


def test_bad_arguments_and_inputs_are_named() -> None:
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_parallel_branches must be a positive int"):
            ViT(**SMALL, num_parallel_branches=k)
    with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'mean'\), got 'max'"):
        ViT(**SMALL, pool="max")
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        ViT(**dict(SMALL, image_size=18))
    model = ViT(**dict(SMALL, channels=1))
    with pytest.raises(ValueError, match="channels=1"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="width 20 is larger than the model's 16"):
        model(torch.randn(1, 1, 16, 20))
    with pytest.raises(ValueError, match="height 10 must be a positive multiple of the patch size 4"):
        model(torch.randn(1, 1, 10, 16))
    with pytest.raises(ValueError, match=r"4-D tensor \(b c height width\)"):
        model(torch.randn(1, 16, 16))


@torch.no_grad()
def test_readme_example() -> None:
    """The seed's example (one image instead of four, to keep the test fast)."""
    v = ViT(
        image_size=256,
        patch_size=16,
        num_classes=1000,
        dim=1024,
        depth=6,
        heads=8,
        mlp_dim=2048,
        num_parallel_branches=2,  # in paper, they claimed 2 was optimal
        dropout=0.1,
        emb_dropout=0.1,
    )

    img = torch.randn(1, 3, 256, 256)

    preds = v(img)  # (1, 1000)
    assert preds.shape == (1, 1000)
