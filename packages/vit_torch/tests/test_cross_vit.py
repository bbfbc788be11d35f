"""CrossViT: the model against an explicit computation from its parameters, the cross-attention block, features,
the seed README example and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_torch.cross_attention import CrossAttention
from vit_torch.cross_vit import CrossViT
from vit_torch.layers import Attention

TINY = dict(
    num_classes=5, sm_enc_depth=2, sm_enc_heads=2, sm_enc_mlp_dim=24, sm_enc_dim_head=8, lg_enc_depth=1,
    lg_enc_heads=3, lg_enc_mlp_dim=20, lg_enc_dim_head=4, cross_attn_heads=2, cross_attn_dim_head=6,
)  # fmt: skip


def ln(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def lin(x: Tensor, linear: nn.Linear) -> Tensor:
    return x @ linear.weight.T + (0 if linear.bias is None else linear.bias)


def mha(x: Tensor, context: Tensor, attn: Attention) -> tuple[Tensor, Tensor]:
    """Queries from ``x``, keys and values from ``context``, explicit softmax; returns the output and weights."""
    wq, wk, wv = attn.to_qkv.weight.chunk(3)
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (x @ wq.T, context @ wk.T, context @ wv.T))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return lin((weights @ v).transpose(1, 2).flatten(2), attn.to_out), weights


def patches(img: Tensor, ph: int, pw: int) -> Tensor:
    """Patches in row-major grid order, each flattened as (ph, pw, c), by an explicit loop."""
    b, _, h, w = img.shape
    cut = [img[:, :, i : i + ph, j : j + pw] for i in range(0, h, ph) for j in range(0, w, pw)]
    return torch.stack([p.permute(0, 2, 3, 1).reshape(b, -1) for p in cut], dim=1)


def embed(embedder: nn.Module, img: Tensor) -> Tensor:
    pe = embedder.to_patch_embedding
    ph, pw = pe.patch_size
    x = ln(lin(ln(patches(img, ph, pw), pe.pre_norm), pe.proj), pe.post_norm)
    gh, gw = img.shape[2] // ph, img.shape[3] // pw
    pos = embedder.pos_embedding[0, 1:].reshape(*embedder.grid, -1)[:gh, :gw].reshape(gh * gw, -1)
    cls = embedder.cls_token[0] + embedder.pos_embedding[0, :1]
    return torch.cat((cls.expand(img.shape[0], 1, -1), x + pos), dim=1)


def transformer(t: nn.Module, x: Tensor, feats: dict[str, Tensor], prefix: str) -> Tensor:
    for i, blk in enumerate(t.blocks):
        h = ln(x, blk.norm1)
        x = x + mha(h, h, blk.attn)[0]
        x = x + lin(F.gelu(lin(ln(x, blk.norm2), blk.ff.fc1)), blk.ff.fc2)
        feats[f"{prefix}block{i:02d}"] = x
    return ln(x, t.norm)


def cross(block: CrossAttention, cls: Tensor, patches_: Tensor) -> tuple[Tensor, Tensor]:
    """The class token (projected when the widths differ) normalized, attending to itself and the other
    branch's patch tokens as they are; projected back and added."""
    projected = not isinstance(block.project_in, nn.Identity)
    q = ln(lin(cls, block.project_in) if projected else cls, block.norm)
    out, weights = mha(q, torch.cat((q, patches_), dim=1), block.attn)
    return cls + (lin(out, block.project_out) if projected else out), weights


def reference_cross_vit(model: CrossViT, img: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """CrossViT recomputed from its parameters with plain tensor operations; returns logits and features
    (attention weights of the cross blocks under ``.../attn``)."""
    feats: dict[str, Tensor] = {}
    sm, lg = embed(model.sm_image_embedder, img), embed(model.lg_image_embedder, img)
    for i, layer in enumerate(model.multi_scale_encoder.layers):
        sm = transformer(layer.sm_transformer, sm, feats, f"enc{i}/sm/")
        lg = transformer(layer.lg_transformer, lg, feats, f"enc{i}/lg/")
        sm_cls, lg_cls = sm[:, :1], lg[:, :1]
        for j, (sm_attend_lg, lg_attend_sm) in enumerate(zip(layer.sm_attend_lg, layer.lg_attend_sm)):
            sm_cls, feats[f"enc{i}/cross/sm/block{j:02d}/attn"] = cross(sm_attend_lg, sm_cls, lg[:, 1:])
            feats[f"enc{i}/cross/sm/block{j:02d}"] = torch.cat((sm_cls, sm[:, 1:]), dim=1)
            lg_cls, feats[f"enc{i}/cross/lg/block{j:02d}/attn"] = cross(lg_attend_sm, lg_cls, sm[:, 1:])
            feats[f"enc{i}/cross/lg/block{j:02d}"] = torch.cat((lg_cls, lg[:, 1:]), dim=1)
        sm, lg = torch.cat((sm_cls, sm[:, 1:]), dim=1), torch.cat((lg_cls, lg[:, 1:]), dim=1)
    feats["pre_logits"] = torch.cat((sm[:, 0], lg[:, 0]), dim=-1)
    heads = model.sm_mlp_head, model.lg_mlp_head
    logits = sum(lin(ln(x[:, 0], h.norm), h.fc) for x, h in zip((sm, lg), heads))
    return logits, feats


CONFIGS = {
    "projected": dict(TINY, image_size=16, sm_dim=12, lg_dim=16, sm_patch_size=4, lg_patch_size=8, depth=2,
                      cross_attn_depth=2),
    "same-width-rect": dict(TINY, image_size=(16, 24), sm_dim=12, lg_dim=12, sm_patch_size=(4, 6),
                            lg_patch_size=(8, 12), depth=1, cross_attn_depth=1, channels=2),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_matches_an_explicit_computation(name: str) -> None:
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    model = CrossViT(**cfg).eval()
    c = cfg.get("channels", 3)
    h, w = (cfg["image_size"],) * 2 if isinstance(cfg["image_size"], int) else cfg["image_size"]
    for shape in [(2, c, h, w), (2, c, h // 2, w // 2)]:  # the full image, then a smaller one
        img = torch.randn(shape)
        want_logits, want = reference_cross_vit(model, img)
        logits, got = model(img, return_features=True, return_attn=True)
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(img), want_logits, rtol=1e-5, atol=1e-5)  # the fused path
        for label, value in want.items():
            torch.testing.assert_close(got[label], value, rtol=1e-5, atol=1e-5, msg=label)
        assert {k for k in got if "/attn" not in k or "/cross/" in k} == set(want)


@torch.no_grad()
def test_labels_shapes_and_projections() -> None:
    torch.manual_seed(0)
    model = CrossViT(**CONFIGS["projected"]).eval()
    _, feats = model(torch.randn(2, 3, 16, 16), return_features=True)
    blocks = ["sm/block00", "sm/block01", "lg/block00", "cross/sm/block00", "cross/lg/block00", "cross/sm/block01",
              "cross/lg/block01"]  # fmt: skip
    assert list(feats) == [f"enc{i}/{b}" for i in range(2) for b in blocks] + ["pre_logits"]
    assert feats["enc1/cross/sm/block01"].shape == (2, 17, 12)  # 16 small patches and the class token
    assert feats["enc1/cross/lg/block01"].shape == (2, 5, 16)
    assert feats["pre_logits"].shape == (2, 12 + 16)
    block = model.multi_scale_encoder.layers[0].sm_attend_lg[0]
    assert block.project_in.weight.shape == (16, 12) and block.project_out.weight.shape == (12, 16)
    assert block.norm.normalized_shape == (16,)  # the class token is normalized in the other branch's width
    same = CrossViT(**CONFIGS["same-width-rect"])
    assert isinstance(same.multi_scale_encoder.layers[0].lg_attend_sm[0].project_in, nn.Identity)
    _, attn = model(torch.randn(2, 3, 16, 16), return_features=[-1], return_attn=True)
    assert list(attn) == ["enc1/cross/lg/block01/attn", "enc1/cross/lg/block01"]
    assert attn["enc1/cross/lg/block01/attn"].shape == (2, 2, 1, 1 + 16)  # itself and the 16 small patches


@torch.no_grad()
def test_cross_attention_block() -> None:
    torch.manual_seed(0)
    x, context = torch.randn(2, 3, 8), torch.randn(2, 5, 12)
    block = CrossAttention(8, 12, heads=2, dim_head=4).eval()
    out, weights = block(x, context, return_attn=True)
    want, want_weights = cross(block, x, context)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, want_weights, rtol=1e-5, atol=1e-5)
    assert weights.shape == (2, 2, 3, 3 + 5)
    torch.testing.assert_close(block(x, context), out, rtol=1e-5, atol=1e-5)  # the fused path

    alone = CrossAttention(12, heads=2, dim_head=4, include_self=False).eval()  # same width: no projections
    assert isinstance(alone.project_in, nn.Identity) and isinstance(alone.project_out, nn.Identity)
    y = torch.randn(2, 1, 12)
    out, weights = alone(y, context, return_attn=True)
    assert weights.shape == (2, 2, 1, 5)
    torch.testing.assert_close(out, y + mha(ln(y, alone.norm), context, alone.attn)[0], rtol=1e-5, atol=1e-5)


def test_train_mode_uses_dropout_and_eval_does_not() -> None:
    torch.manual_seed(0)
    model = CrossViT(**dict(CONFIGS["projected"], dropout=0.5, emb_dropout=0.0))
    img = torch.randn(2, 3, 16, 16)
    a, b = model(img), model(img)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(img), model(img), rtol=0, atol=0)


@torch.no_grad()
def test_seed_readme_example() -> None:
    torch.manual_seed(0)
    v = CrossViT(
        image_size=256,
        num_classes=1000,
        depth=4,  # number of multi-scale encoding blocks
        sm_dim=192,  # high res dimension
        sm_patch_size=16,  # high res patch size (should be smaller than lg_patch_size)
        sm_enc_depth=2,  # high res depth
        sm_enc_heads=8,  # high res heads
        sm_enc_mlp_dim=2048,  # high res feedforward dimension
        lg_dim=384,  # low res dimension
        lg_patch_size=64,  # low res patch size
        lg_enc_depth=3,  # low res depth
        lg_enc_heads=8,  # low res heads
        lg_enc_mlp_dim=2048,  # low res feedforward dimensions
        cross_attn_depth=2,  # cross attention rounds
        cross_attn_heads=8,  # cross attention heads
        dropout=0.1,
        emb_dropout=0.1,
    )

    img = torch.randn(1, 3, 256, 256)

    pred = v(img)  # (1, 1000)
    assert pred.shape == (1, 1000)
    # the multi-scale encoder's two outputs (the seed's Extractor example) are the last cross-attention blocks
    pred, feats = v.eval()(img, return_features=["enc3/cross/sm/block01", "enc3/cross/lg/block01"])
    assert [f.shape for f in feats.values()] == [(1, 257, 192), (1, 17, 384)]


def test_bad_geometry_and_input_are_named() -> None:
    cfg = dict(TINY, sm_dim=8, lg_dim=8)
    with pytest.raises(ValueError, match=r"image_size \(24, 24\) must be divisible by both sm_patch_size \(12, 12\) "
                                         r"and lg_patch_size \(16, 16\)"):  # fmt: skip
        CrossViT(image_size=24, **cfg)  # the defaults: 12 and 16 patches
    with pytest.raises(ValueError, match="sm_patch_size must be a positive int or a tuple of 2 positive ints"):
        CrossViT(image_size=16, sm_patch_size=(4, 4, 4), lg_patch_size=8, **cfg)
    model = CrossViT(image_size=16, sm_patch_size=4, lg_patch_size=8, **cfg)
    with pytest.raises(ValueError, match="img width 12 must be a positive multiple of both sm_patch_size 4 and "
                                         "lg_patch_size 8"):  # fmt: skip
        model(torch.randn(1, 3, 16, 12))
    with pytest.raises(ValueError, match="img height 24 is larger than the model's 16"):
        model(torch.randn(1, 3, 24, 16))
    with pytest.raises(ValueError, match=r"img must have channels=3 \(b c h w\), got 1"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"img must be a 4-D tensor \(b c h w\), got shape \(3, 16, 16\)"):
        model(torch.randn(3, 16, 16))
