"""CaiT: talking heads, class attention, layer scale and layer dropout against computations from the parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vit_parity.core.facts import cait as cait_facts
from vit_torch.attention_variants import ClassAttention, LayerDropout, TalkingHeadsAttention
from vit_torch.cait import CaiT
from vit_torch.init import init_weights

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, heads=3, mlp_dim=32, dim_head=8)


# --- an independent CaiT, from the parameters with plain tensor ops ---------------------------------------------


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def talking_heads(
    x: torch.Tensor, ctx: torch.Tensor, p: dict, pre: str, heads: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries from ``x``, keys and values from ``ctx``; mixing matrices from ``p`` where present."""
    w = p[pre + "to_qkv.weight"]
    inner = w.shape[0] // 3
    b, n, m = x.shape[0], x.shape[1], ctx.shape[1]
    q = (x @ w[:inner].T).reshape(b, n, heads, -1).permute(0, 2, 1, 3)
    k = (ctx @ w[inner : 2 * inner].T).reshape(b, m, heads, -1).permute(0, 2, 1, 3)
    v = (ctx @ w[2 * inner :].T).reshape(b, m, heads, -1).permute(0, 2, 1, 3)
    dots = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    if pre + "mix_heads_pre_attn" in p:
        dots = torch.einsum("bhij,hg->bgij", dots, p[pre + "mix_heads_pre_attn"])
    if mask is not None:
        dots = dots.masked_fill(~mask, float("-inf"))
    probs = dots.softmax(-1)
    attn = probs
    if pre + "mix_heads_post_attn" in p:
        attn = torch.einsum("bhij,hg->bgij", attn, p[pre + "mix_heads_post_attn"])
    out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, n, -1)
    return out @ p[pre + "to_out.weight"].T + p[pre + "to_out.bias"], probs


def block(x: torch.Tensor, ctx: torch.Tensor | None, p: dict, pre: str, heads: int) -> torch.Tensor:
    h = layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
    kv = h if ctx is None else torch.cat((h, ctx), dim=1)
    x = x + p[pre + "ls1.gamma"] * talking_heads(h, kv, p, pre + "attn.", heads)[0]
    h = layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
    h = gelu(h @ p[pre + "ff.fc1.weight"].T + p[pre + "ff.fc1.bias"]) @ p[pre + "ff.fc2.weight"].T
    return x + p[pre + "ls2.gamma"] * (h + p[pre + "ff.fc2.bias"])


def cait_by_hand(model: CaiT, img: torch.Tensor, keep: list[bool], heads: int) -> torch.Tensor:
    p = dict(model.named_parameters())
    b, c, hh, ww = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, c, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.weight"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.weight"].T + p[e + "proj.bias"], p[e + "post_norm.weight"], p[e + "post_norm.bias"])
    x = x + p["pos_embedding"]
    depth, cls_depth = model.depths
    for i in range(depth):
        if keep[i]:
            x = block(x, None, p, f"patch_transformer.blocks.{i}.", heads)
    cls = p["cls_token"].expand(b, 1, -1)
    for j in range(cls_depth):
        if keep[depth + j]:
            cls = block(cls, x, p, f"cls_transformer.blocks.{j}.", heads)
    return layer_norm(cls[:, 0], p["norm.weight"], p["norm.bias"]) @ p["mlp_head.weight"].T + p["mlp_head.bias"]


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Mixing matrices and layer scales moved from their start, so that both count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mix_heads" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("gamma"):
                p.copy_(0.2 + torch.rand(p.shape, generator=g))
    return model


@pytest.mark.parametrize("keep", [[True] * 5, [False, True, True, True, False], [True, False, False, False, True]])
@torch.no_grad()
def test_cait_matches_a_computation_from_its_parameters(keep: list[bool]) -> None:
    torch.manual_seed(0)
    model = _perturbed(CaiT(depth=3, cls_depth=2, **SMALL)).eval()
    img = torch.randn(2, 3, 16, 16)
    want = cait_by_hand(model, img, keep, heads=3)
    got = model(img, keep_layers=keep) if not all(keep) else model(img)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_talking_heads_with_a_mask_and_class_attention_by_hand() -> None:
    torch.manual_seed(0)
    attn = _perturbed(TalkingHeadsAttention(16, heads=3, dim_head=8)).eval()
    p = {f"a.{k}": v for k, v in attn.named_parameters()}
    x = torch.randn(2, 7, 16)
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True
    out, probs = attn(x, mask, return_attn=True)
    want, want_probs = talking_heads(x, x, p, "a.", 3, mask)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, want_probs, rtol=1e-5, atol=1e-6)  # the softmax's maps: rows sum to one
    assert (probs[~mask.expand(2, 3, 7, 7)] == 0).all()

    cls_attn = _perturbed(ClassAttention(16, heads=3, dim_head=8, pre_mix=True, post_mix=True)).eval()
    p = {f"a.{k}": v for k, v in cls_attn.named_parameters()}
    cls, patches = torch.randn(2, 1, 16), torch.randn(2, 6, 16)
    out, probs = cls_attn(cls, context=patches, return_attn=True)
    want, _ = talking_heads(cls, torch.cat((cls, patches), 1), p, "a.", 3)
    assert out.shape == (2, 1, 16) and probs.shape == (2, 3, 1, 7)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ClassAttention needs context="):
        cls_attn(cls)


def test_mixing_starts_standard_normal_and_layer_scale_by_depth() -> None:
    a, b = (init_weights(CaiT(depth=2, cls_depth=1, **SMALL), seed=s) for s in (3, 4))
    mixing = [(n, p.detach(), b.get_parameter(n).detach()) for n, p in a.named_parameters() if "mix_heads" in n]
    assert len(mixing) == 2 * 3  # pre and post in every block of both stacks
    drawn = torch.stack([p for _, p, _ in mixing])
    assert 0.6 < drawn.std().item() < 1.5 and abs(drawn.mean().item()) < 0.5  # 54 draws of a standard normal
    assert all(not torch.equal(p, q) for _, p, q in mixing)  # drawn from the seed
    for name, p in a.named_parameters():
        if name.endswith("gamma"):
            assert torch.all(p == 0.1), name
    assert [cait_facts.layer_scale_init(d) for d in (1, 18, 19, 24, 25, 36)] == [0.1, 0.1, 1e-5, 1e-5, 1e-6, 1e-6]
    deep = CaiT(depth=19, cls_depth=1, **dict(SMALL, dim=8, mlp_dim=8, dim_head=4))
    gammas = [p for n, p in deep.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 2 * (19 + 1)  # every block's two branches, class blocks included
    assert all(torch.equal(g, torch.full_like(g, 1e-5)) for g in gammas)


def test_identity_mixing_is_plain_attention() -> None:
    torch.manual_seed(0)
    attn = TalkingHeadsAttention(16, heads=2, dim_head=8).eval()
    with torch.no_grad():
        attn.mix_heads_pre_attn.copy_(torch.eye(2))
        attn.mix_heads_post_attn.copy_(torch.eye(2))
    x = torch.randn(2, 5, 16)
    q, k, v = (t.reshape(2, 5, 2, 8).transpose(1, 2) for t in attn.to_qkv(x).chunk(3, -1))
    plain = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(attn(x), attn.to_out(plain), rtol=1e-5, atol=1e-6)


def test_layer_dropout_draws_in_training_only_and_keeps_one_per_stack() -> None:
    model = CaiT(depth=3, cls_depth=2, layer_dropout=0.5, **SMALL)
    img = torch.randn(1, 3, 16, 16)
    model.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        _, every = model(img, return_features=True)
    assert torch.equal(torch.get_rng_state(), state), "eval draws nothing"
    assert list(every) == ["block00", "block01", "block02", "cls/block00", "cls/block01", "pre_logits"]

    drop = LayerDropout(0.9).train()
    torch.manual_seed(0)
    draws = [tuple(drop(3)) for _ in range(200)]
    assert all(any(d) for d in draws)  # never all dropped
    # each block runs with probability 0.1, and one more when all three were dropped (0.9 ** 3)
    assert len(set(draws)) > 1 and abs(sum(sum(d) for d in draws) / 200 - (3 * 0.1 + 0.9**3)) < 0.15
    assert drop.eval()(3) is None and LayerDropout(0.0).train()(3) is None

    model.train()
    outs = []
    for seed in range(6):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(model(img))
    assert any(not torch.equal(outs[0], o) for o in outs[1:]), "the draw differs between calls"


def test_a_dropped_block_passes_its_input_and_gets_no_gradient() -> None:
    torch.manual_seed(0)
    model = CaiT(depth=2, cls_depth=2, **SMALL).train()
    img = torch.randn(2, 3, 16, 16)
    keep = [True, False, False, True]
    out, f = model(img, keep_layers=torch.tensor(keep), return_features=True, return_attn=True)
    torch.testing.assert_close(f["block01"], f["block00"], rtol=0, atol=0)
    assert f["block01/attn"].shape == (2, 3, 16, 16) and not f["block01/attn"].any()
    assert f["cls/block00/attn"].shape == (2, 3, 1, 17) and not f["cls/block00/attn"].any()
    torch.testing.assert_close(f["cls/block00"], model.cls_token.expand(2, 1, -1), rtol=0, atol=0)
    out.sum().backward()
    for name, p in model.named_parameters():
        dropped = name.startswith(("patch_transformer.blocks.1.", "cls_transformer.blocks.0."))
        assert (p.grad is None) == dropped, name


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"cls_depth .* must be an int >= 1"):
        CaiT(depth=1, cls_depth=0, **SMALL)
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"layer_dropout must be a probability in \[0, 1\)"):
            CaiT(depth=1, cls_depth=1, layer_dropout=rate, **SMALL)
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        CaiT(depth=1, cls_depth=1, **dict(SMALL, image_size=18))
    model = CaiT(depth=1, cls_depth=1, **SMALL)
    with pytest.raises(ValueError, match="channels=3"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="height 20 is larger than the model's 16"):
        model(torch.randn(1, 3, 20, 16))
    with pytest.raises(ValueError, match="width 6 must be a positive multiple of the patch size 4"):
        model(torch.randn(1, 3, 16, 6))
    with pytest.raises(ValueError, match=r"keep_layers must hold one boolean per block, shape \(2,\)"):
        model(torch.randn(1, 3, 16, 16), keep_layers=[True, True, False])


def test_smaller_input_uses_the_top_left_positions() -> None:
    torch.manual_seed(0)
    model = CaiT(depth=1, cls_depth=1, **SMALL).eval()
    img = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        _, f = model(img, return_features=["block00"])
        # the same image at the top-left of a full one: the patches of the small image see the same positions
        tokens, _ = model.to_patch_embedding(img)
        pos = model.pos_embedding.reshape(1, 4, 4, -1)[:, :2, :3].reshape(1, 6, -1)
        torch.testing.assert_close(f["block00"], model.patch_transformer.blocks[0](tokens + pos))


def test_readme_example() -> None:
    v = CaiT(
        image_size=256,
        patch_size=32,
        num_classes=1000,
        dim=1024,
        depth=12,  # depth of transformer for patch to patch attention only
        cls_depth=2,  # depth of cross attention of CLS tokens to patch
        heads=16,
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
        layer_dropout=0.05,  # randomly dropout 5% of the layers
    )
    img = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        preds = v(img)  # (1, 1000)
    assert preds.shape == (1, 1000)
