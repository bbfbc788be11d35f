"""The video and volume family: tubelet order, position grids, bad input, training, inflation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_torch import vivit
from vit_torch.layers import Intermediates, patchify
from vit_torch.simple_vit_3d import SimpleViT
from vit_torch.vit_3d import ViT

TINY = dict(num_classes=4, dim=24, heads=2, mlp_dim=32, dim_head=12)
GEOM = dict(image_size=16, frames=4, image_patch_size=8, frame_patch_size=2)


def tubelets(video: torch.Tensor, pt: int, ph: int, pw: int) -> torch.Tensor:
    """Independent patch cutting: loop over the tubelet grid, flatten each tubelet as (pt, ph, pw, c)."""
    b, _, t, h, w = video.shape
    out = []
    for i in range(t // pt):
        for j in range(h // ph):
            for k in range(w // pw):
                cube = video[:, :, i * pt : (i + 1) * pt, j * ph : (j + 1) * ph, k * pw : (k + 1) * pw]
                out.append(cube.permute(0, 2, 3, 4, 1).reshape(b, -1))
    return torch.stack(out, dim=1)


def test_tubelets_flatten_as_time_height_width_channels() -> None:
    video = torch.randn(2, 3, 4, 8, 12)
    torch.testing.assert_close(patchify(video, (2, 4, 3)), tubelets(video, 2, 4, 3), rtol=0, atol=0)


def reference_vit_3d(model: ViT, video: torch.Tensor) -> torch.Tensor:
    """ViT 3D recomputed from its parameters, positions cut from the reshaped full grid."""
    pt, ph, pw = model.patch_size
    x = tubelets(video, pt, ph, pw)
    emb = model.to_patch_embedding
    x = emb.post_norm(emb.proj(emb.pre_norm(x)))
    t, h, w = (s // p for s, p in zip(video.shape[2:], model.patch_size))
    pos = model.pos_embedding[0, 1:].reshape(*model.grid, -1)[:t, :h, :w].reshape(t * h * w, -1)
    cls = model.cls_token[0] + model.pos_embedding[0, :1]
    x = torch.cat((cls.expand(x.shape[0], 1, -1), x + pos), dim=1)
    x = model.transformer(x)
    return model.mlp_head(x[:, 0] if model.pool == "cls" else x.mean(1))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_3d_shorter_clip_uses_the_matching_part_of_the_grid(pool: str) -> None:
    torch.manual_seed(0)
    model = ViT(**GEOM, depth=1, pool=pool, **TINY).eval()
    short = torch.randn(2, 3, 2, 16, 8)  # tubelet grid (1, 2, 1) of the full (2, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(short), reference_vit_3d(model, short), rtol=1e-5, atol=1e-5)
        full = torch.randn(2, 3, 4, 16, 16)
        torch.testing.assert_close(model(full), reference_vit_3d(model, full), rtol=1e-5, atol=1e-5)
        # the short clip's positions are grid cells (0, 0, 0) and (0, 1, 0): rows 0 and 2, not the first two rows
        x, _ = model.to_patch_embedding(short)
        first_rows = model.pos_embedding[:, 1:3]
        wrong = model.mlp_head(model.transformer(torch.cat((
            (model.cls_token + model.pos_embedding[:, :1]).expand(2, 1, -1), x + first_rows), 1))[:, 0])  # fmt: skip
        if pool == "cls":
            assert not torch.allclose(model(short), wrong, atol=1e-4)


def sincos_3d_formula(t: int, h: int, w: int, dim: int) -> torch.Tensor:
    """Beyer et al.'s 2-D sin-cos table extended to 3-D: x.sin, x.cos, y.sin, y.cos, z.sin, z.cos, zero pad."""
    f = dim // 6
    omega = 1.0 / 10000 ** (torch.arange(f, dtype=torch.float64) / (f - 1))
    z, y, x = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    parts = []
    for c in (x, y, z):
        a = c.reshape(-1, 1).double() * omega
        parts += [a.sin(), a.cos()]
    return F.pad(torch.cat(parts, dim=1), (0, dim - 6 * f)).float()


def test_simple_vit_3d_adds_the_3d_sincos_table() -> None:
    torch.manual_seed(0)
    model = SimpleViT(image_size=16, frames=6, image_patch_size=8, frame_patch_size=2, depth=1, **TINY).eval()
    assert model.grid == (3, 2, 2)
    torch.testing.assert_close(model.pos_embedding[0], sincos_3d_formula(3, 2, 2, 24), rtol=1e-6, atol=1e-6)
    video = torch.randn(2, 3, 4, 8, 16)  # grid (2, 1, 2)
    with torch.no_grad():
        x = model.to_patch_embedding.post_norm(
            model.to_patch_embedding.proj(model.to_patch_embedding.pre_norm(tubelets(video, 2, 8, 8)))
        )
        want = model.linear_head(model.transformer(x + sincos_3d_formula(2, 1, 2, 24)).mean(1))
        torch.testing.assert_close(model(video), want, rtol=1e-5, atol=1e-5)


def reference_vivit(model: vivit.ViT, video: torch.Tensor) -> torch.Tensor:
    """ViViT recomputed with explicit loops over frame groups and spatial positions."""
    pt, ph, pw = model.patch_size
    emb = model.to_patch_embedding
    x = emb.post_norm(emb.proj(emb.pre_norm(tubelets(video, pt, ph, pw))))
    b, d = x.shape[0], x.shape[-1]
    f, h, w = (s // p for s, p in zip(video.shape[2:], model.patch_size))
    pos = model.pos_embedding[0].reshape(*model.grid, d)[:f, :h, :w].reshape(f, h * w, d)
    x = x.reshape(b, f, h * w, d) + pos
    cls = model.pool == "cls"
    if cls:
        x = torch.cat((model.spatial_cls_token.expand(b, f, 1, d), x), dim=2)
    if model.variant == "factorized_encoder":
        per_frame = []
        for i in range(f):
            y = model.spatial_transformer(x[:, i])
            per_frame.append(y[:, 0] if cls else y.mean(1))
        y = torch.stack(per_frame, dim=1)
        if cls:
            y = torch.cat((model.temporal_cls_token.expand(b, 1, d), y), dim=1)
        y = model.temporal_transformer(y)
        return model.mlp_head(y[:, 0] if cls else y.mean(1))
    for block in model.factorized_transformer.blocks:
        x = torch.stack([x[:, i] + block.spatial_attn(x[:, i]) for i in range(f)], dim=1)
        cols = []
        for j in range(x.shape[2]):
            c = x[:, :, j] + block.temporal_attn(x[:, :, j])
            cols.append(c + block.ff(c))
        x = torch.stack(cols, dim=2)
    x = model.factorized_transformer.norm(x)
    return model.mlp_head(x[:, 0, 0] if cls else x.mean((1, 2)))


@pytest.mark.parametrize("variant", vivit.VARIANTS)
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vivit_matches_an_explicit_loop_over_frames_and_positions(variant: str, pool: str) -> None:
    torch.manual_seed(0)
    geom = dict(image_size=(16, 8), frames=6, image_patch_size=(8, 4), frame_patch_size=2)
    model = vivit.ViT(**geom, spatial_depth=2, temporal_depth=2, pool=pool, variant=variant, **TINY).eval()
    record = Intermediates()
    for shape in [(2, 3, 6, 16, 8), (2, 3, 4, 8, 8)]:  # the full clip, then a shorter and smaller one
        clip = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(model(clip, record), reference_vivit(model, clip), rtol=1e-5, atol=1e-5)
    # per call: 2 spatial + 2 temporal blocks, or 2 factorized blocks
    assert len(record.blocks) == (8 if variant == "factorized_encoder" else 4)
    if variant == "factorized_self_attention":
        assert record.blocks[0].shape == (2, 3, 4 + (pool == "cls"), 24)  # (b, f, n, d)


def test_vivit_factorized_self_attention_needs_equal_depths() -> None:
    with pytest.raises(ValueError, match="spatial_depth and temporal_depth must be equal, got 2 and 1"):
        vivit.ViT(**GEOM, spatial_depth=2, temporal_depth=1, variant="factorized_self_attention", **TINY)
    with pytest.raises(ValueError, match="variant must be one of"):
        vivit.ViT(**GEOM, spatial_depth=1, temporal_depth=1, variant="joint", **TINY)


VIVIT = dict(GEOM, spatial_depth=1, temporal_depth=1, **TINY, dropout=0.1, emb_dropout=0.1)
VIDEO_MODELS = {
    "vit_3d": lambda: ViT(**GEOM, depth=1, **TINY, dropout=0.1, emb_dropout=0.1),
    "simple_vit_3d": lambda: SimpleViT(**GEOM, depth=1, **TINY),
    "vivit-encoder": lambda: vivit.ViT(**VIVIT),
    "vivit-self-attention": lambda: vivit.ViT(**VIVIT, variant="factorized_self_attention", pool="mean"),
}


@pytest.mark.parametrize("name", sorted(VIDEO_MODELS))
def test_bad_input_names_the_argument(name: str) -> None:
    model = VIDEO_MODELS[name]()
    with pytest.raises(ValueError, match=r"video must be a 5-D tensor \(b c frames height width\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="video frames 6 is larger than the model's 4"):
        model(torch.randn(1, 3, 6, 16, 16))
    with pytest.raises(ValueError, match="video frames 3 must be a positive multiple of the patch size 2"):
        model(torch.randn(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="video must have channels=3"):
        model(torch.randn(1, 1, 4, 16, 16))


@pytest.mark.parametrize("cls", [ViT, SimpleViT, vivit.ViT])
def test_bad_geometry_names_the_argument(cls: type) -> None:
    depth = dict(spatial_depth=1, temporal_depth=1) if cls is vivit.ViT else dict(depth=1)
    with pytest.raises(ValueError, match="frames 5 must be divisible by frame_patch_size 2"):
        cls(**dict(GEOM, frames=5), **depth, **TINY)
    with pytest.raises(ValueError, match=r"image_size \(16, 12\) must be divisible by image_patch_size \(8, 8\)"):
        cls(**dict(GEOM, image_size=(16, 12)), **depth, **TINY)
    with pytest.raises(ValueError, match="frame_patch_size must be a positive int"):
        cls(**dict(GEOM, frame_patch_size=0), **depth, **TINY)


@pytest.mark.parametrize("name", sorted(VIDEO_MODELS))
def test_training_lowers_the_loss_and_eval_is_deterministic(name: str) -> None:
    torch.manual_seed(0)
    model = VIDEO_MODELS[name]()
    clips = torch.randn(4, 3, 4, 16, 16)
    labels = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            a, b = model(clips), model(clips)
        assert torch.equal(a, b)
        return float(F.cross_entropy(a, labels))

    before = eval_loss()
    model.train()
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(clips), labels).backward()
        opt.step()
    after = eval_loss()
    assert after < 0.9 * before, (before, after)
    assert math.isfinite(after) and np.isfinite(before)
