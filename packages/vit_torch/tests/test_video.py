"""The video and volume family: tubelet order, position grids, bad input, training, inflation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_parity.core.facts import cct as cct_facts
from vit_parity.core.facts import vivit as vivit_facts
from vit_torch import cct_3d, vivit
from vit_torch.layers import DropPath, patchify
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
        x = torch.stack([x[:, i] + block.attn(block.norm1(x[:, i])) for i in range(f)], dim=1)
        cols = []
        for j in range(x.shape[2]):
            c = x[:, :, j] + block.temporal_attn(block.temporal_norm(x[:, :, j]))
            cols.append(c + block.ff(block.norm2(c)))
        x = torch.stack(cols, dim=2)
    x = model.factorized_transformer.norm(x)
    return model.mlp_head(x[:, 0, 0] if cls else x.mean((1, 2)))


@pytest.mark.parametrize("variant", vivit_facts.VARIANTS)
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vivit_matches_an_explicit_loop_over_frames_and_positions(variant: str, pool: str) -> None:
    torch.manual_seed(0)
    geom = dict(image_size=(16, 8), frames=6, image_patch_size=(8, 4), frame_patch_size=2)
    model = vivit.ViT(**geom, spatial_depth=2, temporal_depth=2, pool=pool, variant=variant, **TINY).eval()
    recorded = []
    for shape in [(2, 3, 6, 16, 8), (2, 3, 4, 8, 8)]:  # the full clip, then a shorter and smaller one
        clip = torch.randn(shape)
        with torch.no_grad():
            logits, features = model(clip, return_features=True)
            torch.testing.assert_close(logits, reference_vivit(model, clip), rtol=1e-5, atol=1e-5)
        recorded.append(features)
    features = recorded[0]
    if variant == "factorized_encoder":  # 2 spatial + 2 temporal blocks
        blocks = ["spatial/block00", "spatial/block01", "temporal/block00", "temporal/block01"]
    else:  # 2 factorized blocks
        blocks = ["block00", "block01"]
        assert features["block00"].shape == (2, 3, 4 + (pool == "cls"), 24)  # (b, f, n, d)
    assert list(features) == [*blocks, "pre_logits"]


def test_vivit_factorized_self_attention_needs_equal_depths() -> None:
    with pytest.raises(ValueError, match="spatial_depth and temporal_depth must be equal, got 2 and 1"):
        vivit.ViT(**GEOM, spatial_depth=2, temporal_depth=1, variant="factorized_self_attention", **TINY)
    with pytest.raises(ValueError, match="variant must be one of"):
        vivit.ViT(**GEOM, spatial_depth=1, temporal_depth=1, variant="joint", **TINY)


CCT = dict(img_size=16, num_frames=4, embedding_dim=24, kernel_size=3, stride=2, padding=1, num_layers=1,
           num_heads=2, mlp_ratio=1.0, num_classes=4)  # fmt: skip


def reference_cct(model: cct_3d.CCT, video: torch.Tensor) -> torch.Tensor:
    """CCT recomputed from its parameters: explicit conv / pool calls, positions cut from the reshaped grid,
    each encoder layer written out (norm after the attention residual), sequence pooling as a weighted sum."""
    tok = model.tokenizer
    x = video
    for conv in tok.convs:
        x = F.conv3d(x, conv.weight, None, tok.stride, tok.padding).clamp(min=0)
        x = F.max_pool3d(x, tok.pool_kernel, tok.pool_stride, tok.pool_padding)
    b, d, t, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, d)
    if model.positional_emb is not None:
        x = x + model.positional_emb[0].reshape(*model.grid, d)[:t, :h, :w].reshape(t * h * w, d)
    for block in model.transformer.blocks:
        x = block.norm2(x + block.attn(block.norm1(x)))
        x = x + block.ff.fc2(F.gelu(block.ff.fc1(x)))
    x = model.transformer.norm(x)
    weights = torch.softmax(x @ model.attention_pool.weight[0] + model.attention_pool.bias, dim=1)
    return model.fc(torch.einsum("bn,bnd->bd", weights, x))


@pytest.mark.parametrize("positional_embedding", cct_facts.POSITIONAL_EMBEDDINGS)
def test_cct_matches_an_explicit_computation_on_short_clips(positional_embedding: str) -> None:
    torch.manual_seed(0)
    cfg = dict(CCT, num_layers=2, n_conv_layers=2, stride=1, positional_embedding=positional_embedding)
    model = cct_3d.CCT(**cfg).eval()
    assert model.grid == (4, 4, 4)
    assert all(block.post_norm for block in model.transformer.blocks)  # the stream is normalized after attention
    for shape in [(2, 3, 4, 16, 16), (2, 3, 2, 8, 16)]:  # the full clip, then grid (2, 2, 4) of (4, 4, 4)
        clip = torch.randn(shape)
        with torch.no_grad():
            logits, features = model(clip, return_features=True)
            torch.testing.assert_close(logits, reference_cct(model, clip), rtol=1e-5, atol=1e-5)
    assert list(features) == ["block00", "block01", "pre_logits"] and features["block01"].shape == (2, 16, 24)


def test_cct_sine_table_is_the_interleaved_1d_sinusoid() -> None:
    model = cct_3d.CCT(**CCT, positional_embedding="sine")
    n, d = math.prod(model.grid), 24
    p = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(d)[None, :]
    angles = p / 10000 ** (2 * (i // 2) / d)
    want = torch.where(i % 2 == 0, angles.sin(), angles.cos()).float()
    torch.testing.assert_close(model.positional_emb[0], want, rtol=1e-6, atol=1e-6)
    assert "positional_emb" not in model.state_dict()  # a fixed table, not a weight


def test_cct_tokenizer_grid_and_defaults_follow_the_reference() -> None:
    model = cct_3d.CCT(img_size=(20, 12), num_frames=5, embedding_dim=16, num_heads=2, num_layers=3,
                       frame_kernel_size=2, frame_stride=2, kernel_size=5, stride=2, padding=1)  # fmt: skip
    conv = model.tokenizer.convs[0]
    assert conv.weight.shape == (16, 3, 2, 5, 5) and conv.bias is None
    assert conv.padding == (1, 1, 1) and conv.stride == (2, 2, 2)  # frame padding = frame kernel // 2
    with torch.no_grad():
        tokens, grid = model.tokenizer(torch.zeros(1, 3, 5, 20, 12))
    assert grid == model.grid == model.tokenizer.grid((5, 20, 12)) and tokens.shape == (1, math.prod(grid), 16)
    rates = [b.drop_path.drop_prob for b in model.transformer.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])
    assert [b.attn.dropout for b in model.transformer.blocks] == [
        0.1
    ] * 3  # attention dropout 0.1, projection dropout 0
    assert model.transformer.blocks[0].attn.out_drop.p == 0.0


@pytest.mark.parametrize(
    ("preset", "layers", "heads", "ratio", "dim"),
    [("cct_2", 2, 2, 1, 128), ("cct_4", 4, 2, 1, 128), ("cct_6", 6, 4, 2, 256), ("cct_7", 7, 4, 2, 256),
     ("cct_8", 8, 4, 2, 256), ("cct_14", 14, 6, 3, 384), ("cct_16", 16, 6, 3, 384)],
)  # fmt: skip
def test_cct_presets(preset: str, layers: int, heads: int, ratio: int, dim: int) -> None:
    with torch.device("meta"):  # shapes only
        model = getattr(cct_3d, preset)(img_size=32, num_frames=4, num_classes=7)
    cfg = model.config
    assert (cfg["num_layers"], cfg["num_heads"], cfg["mlp_ratio"], cfg["embedding_dim"]) == (layers, heads, ratio, dim)
    assert (cfg["kernel_size"], cfg["stride"], cfg["padding"]) == (3, 1, 1)  # kernel 3: stride max(1, 0), pad 1
    assert len(model.transformer.blocks) == layers and model.transformer.blocks[0].ff.fc1.out_features == dim * ratio
    with torch.device("meta"):
        cfg = getattr(cct_3d, preset)(kernel_size=7, num_frames=4, img_size=32).config
    assert (cfg["stride"], cfg["padding"]) == (2, 3)


def test_cct_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positional_embedding must be one of"):
        cct_3d.CCT(**dict(CCT, positional_embedding="rope"))
    with pytest.raises(ValueError, match="embedding_dim 24 must be divisible by num_heads 5"):
        cct_3d.CCT(**dict(CCT, num_heads=5))
    with pytest.raises(ValueError, match=r"the tokenizer leaves no tokens for num_frames x img_size \(4, 2, 16\)"):
        cct_3d.CCT(**dict(CCT, img_size=(2, 16), padding=0))
    model = cct_3d.CCT(**dict(CCT, padding=0))
    with pytest.raises(ValueError, match="too small: the tokenizer leaves no tokens"):
        model(torch.randn(1, 3, 4, 2, 16))


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    torch.manual_seed(0)
    layer = DropPath(0.25)
    x = torch.ones(4000, 3, 5)
    out = layer(x)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # all of a sample or none
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    layer.eval()
    assert torch.equal(layer(x), x)


VIVIT = dict(GEOM, spatial_depth=1, temporal_depth=1, **TINY, dropout=0.1, emb_dropout=0.1)
VIDEO_MODELS = {
    "vit_3d": lambda: ViT(**GEOM, depth=1, **TINY, dropout=0.1, emb_dropout=0.1),
    "simple_vit_3d": lambda: SimpleViT(**GEOM, depth=1, **TINY),
    "vivit-encoder": lambda: vivit.ViT(**VIVIT),
    "vivit-self-attention": lambda: vivit.ViT(**VIVIT, variant="factorized_self_attention", pool="mean"),
    "cct_3d": lambda: cct_3d.CCT(**CCT, positional_embedding="learnable"),
}


@pytest.mark.parametrize("name", sorted(VIDEO_MODELS))
def test_bad_input_names_the_argument(name: str) -> None:
    model = VIDEO_MODELS[name]()
    with pytest.raises(ValueError, match=r"video must be a 5-D tensor \(b c frames height width\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="video frames 6 is larger than the model's 4"):
        model(torch.randn(1, 3, 6, 16, 16))
    if name != "cct_3d":  # CCT's convolutions take any number of frames
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


def test_inflated_image_vit_gives_the_image_logits_on_a_still_clip() -> None:
    """2D ViT -> ViViT (factorized self-attention) through the framework-free inflation, loaded in torch."""
    from vit_parity.tools.inflate import inflate
    from vit_torch import ViT as ImageViT
    from vit_torch.checkpoint import load_state, to_checkpoint

    torch.manual_seed(0)
    image_model = ImageViT(image_size=16, patch_size=8, depth=2, **TINY).eval()
    for method in ("average", "central"):
        ckpt = inflate(to_checkpoint(image_model), "vivit", frames=4, frame_patch_size=2, method=method,
                       variant="factorized_self_attention")  # fmt: skip
        video_model = load_state(vivit.ViT(**ckpt.config), ckpt).eval()
        frame = torch.randn(2, 3, 16, 16)
        still = frame[:, :, None].expand(2, 3, 4, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(video_model(still), image_model(frame), rtol=1e-5, atol=1e-5)
            moving = torch.randn(2, 3, 4, 16, 16)
            assert not torch.allclose(video_model(moving), image_model(moving[:, :, 0]), atol=1e-3)
