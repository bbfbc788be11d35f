"""Learnable memory: the ViT and an adapter against computations written from the parameters (the mask written out
by hand), several adapters on one frozen base, checkpoints, the seed README example and bad input named."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import vit_torch
from vit_torch.learnable_memory_vit import Adapter, ViT
from vit_torch.vit import ViT as PlainViT

BASE = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))


def blocks_by_hand(
    p: dict[str, torch.Tensor],
    img: torch.Tensor,
    *,
    patch: int,
    heads: int,
    depth: int,
    task: torch.Tensor | None = None,
    memories: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ViT's token sequence after its blocks; with a task token put first and memories appended to each block's
    keys and values, the ViT's tokens kept from the task token and the memories."""
    b, c, hh, ww = img.shape
    patches = img.reshape(b, c, hh // patch, patch, ww // patch, patch).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(b, -1, patch * patch * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.weight"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.weight"].T + p[e + "proj.bias"], p[e + "post_norm.weight"], p[e + "post_norm.bias"])
    x = torch.cat((p["cls_token"].expand(b, 1, -1), x), dim=1) + p["pos_embedding"]
    n = x.shape[1]
    if task is not None:
        x = torch.cat((task.expand(b, 1, -1), x), dim=1)
    for i in range(depth):
        pre = f"transformer.blocks.{i}."
        h = layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
        kv = h if memories is None else torch.cat((h, memories[i].expand(b, -1, -1)), dim=1)
        wq, wk, wv = p[pre + "attn.to_qkv.weight"].chunk(3)
        q = (h @ wq.T).reshape(b, h.shape[1], heads, -1).transpose(1, 2)
        k, v = ((kv @ w.T).reshape(b, kv.shape[1], heads, -1).transpose(1, 2) for w in (wk, wv))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if task is not None:  # the ViT's tokens (rows 1 ...) see neither the task token nor the memories
            logits[:, :, 1:, 0] = -math.inf
            logits[:, :, 1:, 1 + n :] = -math.inf
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, h.shape[1], -1)
        x = x + out @ p[pre + "attn.to_out.weight"].T + p[pre + "attn.to_out.bias"]
        h = layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"]) @ p[pre + "ff.fc1.weight"].T
        x = x + gelu(h + p[pre + "ff.fc1.bias"]) @ p[pre + "ff.fc2.weight"].T + p[pre + "ff.fc2.bias"]
    return x


def head_by_hand(p: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "mlp_head.") -> torch.Tensor:
    x = layer_norm(x, p[prefix + "norm.weight"], p[prefix + "norm.bias"])
    return x @ p[prefix + "fc.weight"].T + p[prefix + "fc.bias"]


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every norm and bias away from its start, so that each one counts (an adapter's own, not its ViT's)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and not name.startswith("vit."):
                p += 0.5 * torch.randn(p.shape, generator=g)
    return model


@pytest.fixture(scope="module")
def base() -> ViT:
    torch.manual_seed(0)
    return perturbed(ViT(**BASE), 1).eval()


@pytest.fixture(scope="module")
def img() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def adapter_on(vit: ViT, seed: int, **options: int) -> Adapter:
    torch.manual_seed(seed)
    return perturbed(Adapter(vit=vit, **options), seed).eval()


# --- against computations from the parameters ------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_against_a_computation_from_its_parameters(pool: str, img: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = perturbed(ViT(**BASE, pool=pool), 1).eval()
    p = dict(model.named_parameters())
    with torch.no_grad():
        x = blocks_by_hand(p, img, patch=4, heads=2, depth=2)
        want = head_by_hand(p, x[:, 0] if pool == "cls" else x.mean(1))
        torch.testing.assert_close(model(img), want, rtol=1e-5, atol=1e-5)


def test_adapter_against_a_computation_from_its_parameters(base: ViT, img: torch.Tensor) -> None:
    adapter = adapter_on(base, 3, num_memories_per_layer=3, num_classes=4)
    p = dict(base.named_parameters())
    with torch.no_grad():
        x = blocks_by_hand(
            p, img, patch=4, heads=2, depth=2, task=adapter.memory_cls_token, memories=adapter.memories_per_layer
        )
        want = head_by_hand(dict(adapter.named_parameters()), x[:, 0])
        got, features = adapter(img, return_features=True, return_attn=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert list(features) == ["block00/attn", "block00", "block01/attn", "block01", "pre_logits"]
    # keys: the task token, the ViT's 17 tokens, 3 memories; the ViT's tokens put no weight on the others
    attn = features["block01/attn"]
    assert attn.shape == (2, 2, 18, 21)
    assert not attn[:, :, 1:, 0].any() and not attn[:, :, 1:, 18:].any() and attn[:, :, 0, 18:].all()


def test_the_vits_tokens_inside_an_adapter_are_the_vits_own(base: ViT, img: torch.Tensor) -> None:
    """The mask keeps the ViT's tokens from the task token and the memories: block by block, the adapter's sequence
    past its task token is the ViT's own sequence."""
    adapter = adapter_on(base, 4, num_memories_per_layer=2)
    with torch.no_grad():
        _, plain = base(img, return_features=True)
        _, inside = adapter(img, return_features=True)
    for label in ("block00", "block01"):
        torch.testing.assert_close(inside[label][:, 1:], plain[label], rtol=1e-5, atol=1e-6)


# --- one frozen base, several adapters -------------------------------------------------------------------------


def test_adapters_share_one_frozen_base_and_change_none_of_its_outputs(img: torch.Tensor) -> None:
    torch.manual_seed(0)
    v = perturbed(ViT(**BASE), 1).eval()
    with torch.no_grad():
        base_alone = v(img)
    first = adapter_on(v, 5, num_memories_per_layer=3, num_classes=2)
    with torch.no_grad():
        first_alone = first(img)
    second = adapter_on(v, 6, num_memories_per_layer=1, num_classes=4)
    assert first.vit is v and second.vit is v
    assert not any(p.requires_grad for p in v.parameters())

    before = {k: t.clone() for k, t in v.state_dict().items()}
    first.train()  # its dropout rates are 0: training changes no number here
    opt = torch.optim.AdamW(first.parameters(), lr=0.1, weight_decay=0.5)
    first(img).square().mean().backward()
    assert all(p.grad is None for p in v.parameters())
    trained = ("memory_cls_token", "memories_per_layer", "mlp_head.norm.weight", "mlp_head.fc.weight")
    assert all(dict(first.named_parameters())[k].grad.abs().sum() > 0 for k in trained)
    opt.step()
    first.eval()
    assert all(torch.equal(before[k], t) for k, t in v.state_dict().items())

    with torch.no_grad():
        assert second(img).shape == (2, 4)
        torch.testing.assert_close(v(img), base_alone, rtol=0, atol=0)
        assert not torch.allclose(first(img), first_alone)  # it trained
    third = adapter_on(v, 6, num_memories_per_layer=1, num_classes=4)  # the same draw as the second, alone
    with torch.no_grad():
        torch.testing.assert_close(second(img), third(img), rtol=0, atol=0)


def test_the_base_follows_the_adapters_mode(base: ViT, img: torch.Tensor) -> None:
    torch.manual_seed(0)
    v = ViT(**BASE, dropout=0.5)
    adapter = Adapter(vit=v)
    adapter.train()
    assert v.training
    a, b = adapter(img), adapter(img)
    assert not torch.allclose(a, b)
    adapter.eval()
    assert not v.training and torch.equal(adapter(img), adapter(img))


def test_checkpoint_keeps_the_vits_keys(base: ViT, img: torch.Tensor, tmp_path: Path) -> None:
    adapter = adapter_on(base, 7, num_memories_per_layer=2, num_classes=3)
    own = {"memory_cls_token", "memories_per_layer", "mlp_head.norm.weight", "mlp_head.norm.bias"}
    own |= {"mlp_head.fc.weight", "mlp_head.fc.bias"}
    assert set(adapter.state_dict()) == {f"vit.{k}" for k in base.state_dict()} | own
    vit_torch.save(adapter, tmp_path / "adapter")
    vit_torch.save(base, tmp_path / "base")
    loaded = vit_torch.load(tmp_path / "adapter").eval()
    assert isinstance(loaded, Adapter) and not any(p.requires_grad for p in loaded.vit.parameters())
    alone = vit_torch.load(tmp_path / "base").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(img), adapter(img), rtol=0, atol=0)
        torch.testing.assert_close(alone(img), base(img), rtol=0, atol=0)


# --- the seed README example, bad input ------------------------------------------------------------------------


def test_seed_readme_example() -> None:
    # the seed's example at its size, on the meta device (shapes only: the numbers are tested above at a small size)
    with torch.device("meta"):
        v = ViT(
            image_size=256,
            patch_size=16,
            num_classes=1000,
            dim=1024,
            depth=6,
            heads=8,
            mlp_dim=2048,
            dropout=0.1,
            emb_dropout=0.1,
        )

        img = torch.randn(4, 3, 256, 256)
        logits = v(img)  # (4, 1000)

        adapter1 = Adapter(
            vit=v,
            num_classes=2,  # number of output classes for this specific task
            num_memories_per_layer=5,  # number of learnable memories per layer, 10 was sufficient in paper
        )

        logits1 = adapter1(img)  # (4, 2)

        adapter2 = Adapter(vit=v, num_classes=4, num_memories_per_layer=10)

        logits2 = adapter2(img)  # (4, 4)
    assert logits.shape == (4, 1000) and logits1.shape == (4, 2) and logits2.shape == (4, 4)


def test_bad_input_is_named(base: ViT, img: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"vit must be a vit_torch\.learnable_memory_vit\.ViT, got ViT"):
        Adapter(vit=PlainViT(**BASE))
    with pytest.raises(ValueError, match=r"vit must be a vit_torch\.learnable_memory_vit\.ViT, got Linear"):
        Adapter(vit=torch.nn.Linear(2, 2))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"num_memories_per_layer must be an int >= 1"):
            Adapter(vit=base, num_memories_per_layer=bad)

    adapter = Adapter(vit=base, num_memories_per_layer=3)
    adapter.vit = ViT(**{**BASE, "dim": 32})  # an adapter on a ViT of another width
    with pytest.raises(ValueError, match=r"vit must be a ViT of dim=16 and depth=2 .*\(2, 3, 16\).*got .*dim=32"):
        adapter(img)
    adapter.vit = ViT(**{**BASE, "depth": 1})
    with pytest.raises(ValueError, match=r"vit must be a ViT of dim=16 and depth=2.*depth=1"):
        adapter(img)

    task, memories = torch.zeros(16), torch.zeros(2, 3, 16)
    with pytest.raises(ValueError, match=r"class_token must have shape \(16,\).*got \(32,\)"):
        base.memory_forward(img, torch.zeros(32), memories)
    for bad in ((1, 3, 16), (2, 3, 8), (2, 0, 16), (3, 16)):
        with pytest.raises(ValueError, match=r"memories must have shape \(2, m, 16\) with m >= 1"):
            base.memory_forward(img, task, torch.zeros(bad))
    with pytest.raises(ValueError, match="img"):
        Adapter(vit=base)(torch.randn(2, 3, 18, 16))
    with pytest.raises(ValueError, match="pool"):
        ViT(**BASE, pool="max")
