"""NaViT in torch: packed (masked) and jagged nested-tensor models, checked against plain tensor math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vit_torch.na_vit import NaViT
from vit_torch.na_vit_nested_tensor import NaViT as NestedNaViT
from vit_torch.na_vit_nested_tensor_3d import NaViT as NestedNaViT3d

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")

CFG = dict(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)
SIDES = [(32, 32), (16, 32), (8, 24), (32, 16), (8, 8)]  # 16, 8, 3, 8, 1 tokens


def _images(sides: list[tuple[int, ...]], seed: int = 0, c: int = 3) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, *s, generator=g) for s in sides]


def _model(cls: type = NaViT, seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls(**{**CFG, **kw}).eval()


def _rms(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _ln(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias


def _attend(attn: torch.nn.Module, queries: Tensor, context: Tensor, heads: int) -> Tensor:
    """Multi-head attention of ``queries`` (normalized by the caller) over ``context``, head by head, with qk
    RMSNorm."""
    w = attn.to_qkv.weight
    inner = w.shape[0] // 3
    q, k, v = queries @ w[:inner].T, context @ w[inner : 2 * inner].T, context @ w[2 * inner :].T
    outs = []
    for h in range(heads):
        part = slice(h * inner // heads, (h + 1) * inner // heads)
        qh, kh = _rms(q[:, part], attn.q_norm.weight), _rms(k[:, part], attn.k_norm.weight)
        weights = torch.softmax(qh @ kh.T / (inner // heads) ** 0.5, dim=-1)
        outs.append(weights @ v[:, part])
    return torch.cat(outs, dim=-1) @ attn.to_out.weight.T


def _reference(model: NaViT, image: Tensor) -> Tensor:
    """One image through NaViT, written with plain tensor operations (no mask, no packing, no shared layers)."""
    ph, pw = model.patch_size
    c, h, w = image.shape
    gh, gw = h // ph, w // pw
    patches = image.reshape(c, gh, ph, gw, pw).permute(1, 3, 2, 4, 0).reshape(gh * gw, -1)
    emb = model.to_patch_embedding
    x = _ln(_ln(patches, emb.pre_norm) @ emb.proj.weight.T + emb.proj.bias, emb.post_norm)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    x = x + model.pos_embed_height[rows.reshape(-1)] + model.pos_embed_width[cols.reshape(-1)]
    heads = model.transformer.blocks[0].attn.heads
    for block in model.transformer.blocks:
        x = x + _attend(block.attn, _ln(x, block.norm1), _ln(x, block.norm1), heads)
        ff = block.ff
        x = x + F.gelu(_ln(x, block.norm2) @ ff.fc1.weight.T + ff.fc1.bias) @ ff.fc2.weight.T + ff.fc2.bias
    x = _ln(x, model.transformer.norm)
    query = model.attn_pool_queries[None]
    pooled = _attend(model.attn_pool, _ln(query, model.attn_pool_norm), x, heads) + query
    return (_ln(pooled, model.head_norm) @ model.mlp_head.weight.T)[0]


@torch.no_grad()
def test_each_packed_image_gets_the_logits_of_plain_tensor_math() -> None:
    model = _model()
    images = _images(SIDES)
    out = model([images[:2], images[2:]])
    assert out.shape == (5, 5)
    for i, image in enumerate(images):
        torch.testing.assert_close(out[i], _reference(model, image), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_grouping_changes_nothing_and_keeps_the_input_order() -> None:
    model = _model()
    images = _images(SIDES)
    alone = torch.cat([model([[im]]) for im in images])
    for limit in (16, 20, 64):
        torch.testing.assert_close(model(images, group_images=True, group_max_seq_len=limit), alone)
    torch.testing.assert_close(model([[images[4], images[0]], images[1:4]])[[1, 2, 3, 4, 0]], alone)


@torch.no_grad()
def test_attention_never_crosses_images() -> None:
    model = _model()
    _, features = model([_images([(16, 16), (8, 16)])], return_attn=True)  # 4 + 2 tokens in one sequence
    image_of = torch.tensor([0, 0, 0, 0, 1, 1])
    across = image_of[:, None] != image_of[None, :]
    assert list(features) == [f"block{i:02d}/attn" for i in range(len(model.transformer.blocks))]
    for attn in features.values():
        assert attn.shape == (1, 2, 6, 6)
        assert torch.all(attn[0][:, across] == 0)
        torch.testing.assert_close(attn.sum(-1), torch.ones(1, 2, 6))


def test_nested_tensor_model_matches_the_masked_one_with_the_same_weights() -> None:
    masked, nested = _model(), _model(NestedNaViT, seed=1)
    nested.load_state_dict(masked.state_dict())
    images = _images(SIDES, seed=2)
    want, got = masked(images, group_images=True, group_max_seq_len=20), nested(images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want.square().mean().backward()
    got.square().mean().backward()
    nested_params = dict(nested.named_parameters())
    for name, p in masked.named_parameters():
        torch.testing.assert_close(nested_params[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@torch.no_grad()
@pytest.mark.parametrize("cls", [NaViT, NestedNaViT])
def test_keeping_a_corner_of_the_grid_is_the_cropped_image(cls: type) -> None:
    model = _model(cls, token_dropout_prob=0.5)
    big, other = _images([(32, 24), (16, 16)], seed=3)
    keep = torch.zeros(4, 3, dtype=torch.bool)
    keep[:2, :2] = True  # the top-left 16x16 pixels: same patches, same coordinates
    inputs = [big, other] if cls is NestedNaViT else [[big, other]]
    keeps = [keep, torch.ones(2, 2, dtype=torch.bool)] if cls is NestedNaViT else [[keep, torch.ones(2, 2).bool()]]
    out = model(inputs, keep=keeps)
    crop = model([big[:, :16, :16]] if cls is NestedNaViT else [[big[:, :16, :16]]])
    torch.testing.assert_close(out[0], crop[0], rtol=1e-5, atol=1e-5)
    model.train()  # an explicit keep wins over random token dropout
    torch.testing.assert_close(model(inputs, keep=keeps), out)


def test_token_dropout_keeps_a_fraction_of_each_image_in_training_only() -> None:
    seen = []

    def by_size(h: int, w: int) -> float:
        seen.append((h, w))
        return 0.5 if h * w >= 512 else 0.0

    model = _model(token_dropout_prob=by_size)
    images = _images([(32, 32), (16, 16), (8, 24)])
    model.train()
    patches, coords = model.tokens(images)
    assert [len(p) for p in patches] == [8, 4, 3] and seen == [(32, 32), (16, 16), (8, 24)]
    assert len({tuple(c.tolist()) for c in coords[0]}) == 8  # distinct positions of the 4x4 grid
    torch.manual_seed(0)
    a = model(images, group_images=True)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(images, group_images=True))
    model.eval()
    assert [len(p) for p in model.tokens(images)[0]] == [16, 4, 3]

    constant = _model(NestedNaViT, token_dropout_prob=0.25).train()
    assert [len(p) for p in constant.tokens(images)[0]] == [12, 3, 2]


def test_video_model_takes_volumes_of_different_frame_counts() -> None:
    torch.manual_seed(0)
    cfg = dict(CFG, image_size=(16, 24), max_frames=4, patch_size=8, frame_patch_size=2)
    model = NestedNaViT3d(**cfg).eval()
    vols = _images([(4, 16, 16), (2, 8, 24), (2, 8, 8)], seed=4)
    with torch.no_grad():
        out = model(vols)
        assert out.shape == (3, 5)
        torch.testing.assert_close(out[1:], model(vols[1:]), rtol=1e-5, atol=1e-5)
        keep = torch.zeros(2, 2, 2, dtype=torch.bool)
        keep[:1, :1, :1] = True  # the first frame pair's top-left patch
        torch.testing.assert_close(model(vols[:1], keep=[keep]), model([vols[0][:, :2, :8, :8]]), rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) >= {"pos_embed_frame", "pos_embed_height", "pos_embed_width"}
    with pytest.raises(ValueError, match=r"images\[1\] frames 3 must be a positive multiple of the patch size 2"):
        model([vols[0], torch.randn(3, 3, 8, 8)])
    with pytest.raises(ValueError, match=r"images\[0\] frames 6 is larger than the model's maximum 4"):
        model([torch.randn(3, 6, 8, 8)])


@pytest.mark.parametrize("nested", [False, True])
def test_bad_input_names_the_image_and_the_limit(nested: bool) -> None:
    model = _model(NestedNaViT if nested else NaViT)
    good = torch.randn(3, 16, 16)

    def call(images: list[Tensor]) -> Tensor:
        return model(images) if nested else model(images, group_images=True, group_max_seq_len=16)

    with pytest.raises(ValueError, match=r"images\[1\] width 20 must be a positive multiple of the patch size 8"):
        call([good, torch.randn(3, 16, 20)])
    with pytest.raises(ValueError, match=r"images\[2\] height 40 is larger than the model's maximum 32"):
        call([good, good, torch.randn(3, 40, 8)])
    with pytest.raises(ValueError, match=r"images\[1\] must have channels=3 \(c height width\), got 1"):
        call([good, torch.randn(1, 16, 16)])
    with pytest.raises(ValueError, match="images is empty"):
        call([])
    with pytest.raises(ValueError, match=r"keep\[0\] must be a boolean array of the image's patch grid \(2, 2\)"):
        model([good], keep=[torch.ones(4, dtype=torch.bool)]) if nested else model([[good]], keep=[[torch.ones(4)]])
    if nested:
        with pytest.raises(ValueError, match="attention maps are not recorded on nested tensors"):
            model([good], return_attn=True)
    else:
        with pytest.raises(ValueError, match=r"images\[1\] has 12 tokens, more than group_max_seq_len=10"):
            model([good, torch.randn(3, 32, 24)], group_images=True, group_max_seq_len=10)
        with pytest.raises(ValueError, match=r"batched_images\[1\] is empty"):
            model([[good], []])
        with pytest.raises(TypeError, match="pass group_images=True to give a flat list"):
            model([good, good])


def test_the_nested_model_prints_no_torch_internal_warnings() -> None:
    """torch's jagged kernels warn about its nested-tensor API and log an fx note on first use: the model
    silences those two, in a fresh process where they would show."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from vit_torch.na_vit_nested_tensor import NaViT\n"
        "m = NaViT(image_size=16, patch_size=8, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)\n"
        "m([torch.randn(3, 16, 16), torch.randn(3, 8, 16)]).sum().backward()\n"
    )
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
