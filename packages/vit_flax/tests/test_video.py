"""The video and volume family in flax: tubelet order, position grids, bad input, training, inflation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vit_flax import cct_3d, vivit
from vit_flax.layers import DropPath, patchify
from vit_flax.simple_vit_3d import SimpleViT
from vit_flax.vit_3d import ViT

TINY = dict(num_classes=4, dim=24, heads=2, mlp_dim=32, dim_head=12)
GEOM = dict(image_size=16, frames=4, image_patch_size=8, frame_patch_size=2)


def tubelets(video: np.ndarray, pt: int, ph: int, pw: int) -> np.ndarray:
    """Independent patch cutting of a ``(b, t, h, w, c)`` clip, each tubelet flattened as (pt, ph, pw, c)."""
    b, t, h, w, _ = video.shape
    out = []
    for i in range(t // pt):
        for j in range(h // ph):
            for k in range(w // pw):
                out.append(video[:, i * pt : (i + 1) * pt, j * ph : (j + 1) * ph, k * pw : (k + 1) * pw].reshape(b, -1))
    return np.stack(out, axis=1)


def test_tubelets_flatten_as_time_height_width_channels() -> None:
    video = np.random.default_rng(0).standard_normal((2, 4, 8, 12, 3), dtype=np.float32)
    np.testing.assert_array_equal(patchify(jnp.asarray(video), (2, 4, 3)), tubelets(video, 2, 4, 3))


def embed(model: nnx.Module, patches: jax.Array) -> jax.Array:
    emb = model.to_patch_embedding
    return emb.post_norm(emb.proj(emb.pre_norm(patches)))


def agree(model: nnx.Module, reference: object, clip: np.ndarray) -> None:
    """The model and ``reference(model, tubelets)`` give the same logits (both jitted: one compile each)."""
    got = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(clip))
    want = nnx.jit(reference)(model, jnp.asarray(tubelets(clip, *model.patch_size)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vit_3d_shorter_clip_uses_the_matching_part_of_the_grid() -> None:
    model = ViT(**GEOM, depth=1, **TINY, rngs=nnx.Rngs(0))
    model.eval()
    pos = model.pos_embedding[...]
    cells = pos[0, 1:].reshape(2, 2, 2, -1)[:1, :2, :1].reshape(2, -1)
    assert not np.array_equal(cells, pos[0, 1:3])  # grid cells (0,0,0), (0,1,0) are rows 0 and 2

    def reference(m: ViT, patches: jax.Array) -> jax.Array:
        pos = m.pos_embedding[...]
        cells = pos[0, 1:].reshape(2, 2, 2, -1)[:1, :2, :1].reshape(2, -1)
        cls = jnp.broadcast_to(m.cls_token[...] + pos[:, :1], (2, 1, 24))
        return m.mlp_head(m.transformer(jnp.concatenate((cls, embed(m, patches) + cells), axis=1))[:, 0])

    agree(model, reference, np.random.default_rng(1).standard_normal((2, 2, 16, 8, 3), dtype=np.float32))


def sincos_3d_formula(t: int, h: int, w: int, dim: int) -> np.ndarray:
    """Beyer et al.'s 2-D sin-cos table extended to 3-D: x.sin, x.cos, y.sin, y.cos, z.sin, z.cos, zero pad."""
    f = dim // 6
    omega = 1.0 / 10000 ** (np.arange(f) / (f - 1))
    z, y, x = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    parts = []
    for c in (x, y, z):
        a = c.reshape(-1, 1) * omega
        parts += [np.sin(a), np.cos(a)]
    table = np.concatenate(parts, axis=1)
    return np.pad(table, ((0, 0), (0, dim - 6 * f))).astype(np.float32)


def test_simple_vit_3d_adds_the_3d_sincos_table_of_the_clip_grid() -> None:
    model = SimpleViT(image_size=16, frames=6, image_patch_size=8, frame_patch_size=2, depth=1, **TINY)
    model.eval()
    table = jnp.asarray(sincos_3d_formula(2, 1, 2, 24))  # the clip's grid is (2, 1, 2)

    def reference(m: SimpleViT, patches: jax.Array) -> jax.Array:
        return m.linear_head(m.transformer(embed(m, patches) + table).mean(1))

    agree(model, reference, np.random.default_rng(2).standard_normal((2, 4, 8, 16, 3), dtype=np.float32))


def test_vivit_factorized_self_attention_matches_an_explicit_loop() -> None:
    geom = dict(image_size=(16, 8), frames=4, image_patch_size=(8, 4), frame_patch_size=2)
    model = vivit.ViT(**geom, spatial_depth=1, temporal_depth=1, variant="factorized_self_attention", **TINY)
    model.eval()

    def reference(m: vivit.ViT, patches: jax.Array) -> jax.Array:
        # the clip is shorter than `frames`: tubelet grid (1, 2, 2) of the full (2, 2, 2)
        pos = m.pos_embedding[...][0].reshape(2, 2, 2, 24)[:1].reshape(1, 4, 24)
        cls = jnp.broadcast_to(m.spatial_cls_token[...], (2, 1, 1, 24))
        x = jnp.concatenate((cls, embed(m, patches).reshape(2, 1, 4, 24) + pos), axis=2)  # (b, f, 1 + n, d)
        block = m.factorized_transformer.blocks[0]
        x = jnp.stack([x[:, i] + block.attn(block.norm1(x[:, i])) for i in range(1)], axis=1)
        cols = []
        for j in range(5):
            c = x[:, :, j] + block.temporal_attn(block.temporal_norm(x[:, :, j]))
            cols.append(c + block.ff(block.norm2(c)))
        return m.mlp_head(m.factorized_transformer.norm(jnp.stack(cols, axis=2))[:, 0, 0])

    agree(model, reference, np.random.default_rng(3).standard_normal((2, 2, 16, 8, 3), dtype=np.float32))


CCT = dict(img_size=16, num_frames=4, embedding_dim=24, kernel_size=3, stride=2, padding=1, num_layers=1,
           num_heads=2, mlp_ratio=1.0, num_classes=4)  # fmt: skip


def test_cct_matches_an_explicit_computation_on_a_short_clip() -> None:
    # frames 4 -> conv 2 (no padding) 3 -> pool 3 (-inf padding 1) 3 -> conv 2 -> pool 2; sides 16 -> 8 -> 4
    cfg = dict(CCT, n_conv_layers=2, stride=1, frame_kernel_size=2, frame_padding=0, frame_pooling_kernel_size=3,
               frame_pooling_padding=1, positional_embedding="learnable")  # fmt: skip
    model = cct_3d.CCT(**cfg, rngs=nnx.Rngs(0))
    model.eval()
    assert model.grid == (2, 4, 4)
    clip = np.random.default_rng(4).standard_normal((2, 4, 8, 16, 3), dtype=np.float32)  # grid (2, 2, 4)

    def reference(m: cct_3d.CCT, x: jax.Array) -> jax.Array:
        tok = m.tokenizer
        for conv in tok.convs:
            x = jax.lax.conv_general_dilated(
                x, conv.kernel[...], tok.stride, [(p, p) for p in tok.padding],
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            )  # fmt: skip
            pad = [(0, 0), *((p, p) for p in tok.pool_padding), (0, 0)]
            x = jax.lax.reduce_window(
                jnp.maximum(x, 0), -jnp.inf, jax.lax.max, (1, *tok.pool_kernel, 1), (1, *tok.pool_stride, 1), pad
            )
        b, t, h, w, d = x.shape
        x = x.reshape(b, -1, d) + m.positional_emb[...][0].reshape(*m.grid, d)[:t, :h, :w].reshape(-1, d)
        for block in m.transformer.blocks:
            x = block.norm2(x + block.attn(block.norm1(x)))
            x = x + block.ff.fc2(jax.nn.gelu(block.ff.fc1(x), approximate=False))
        x = m.transformer.norm(x)
        weights = jax.nn.softmax(x @ m.attention_pool.kernel[...][:, 0] + m.attention_pool.bias[...], axis=1)
        return m.fc(jnp.einsum("bn,bnd->bd", weights, x))

    got = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(clip))
    np.testing.assert_allclose(got, nnx.jit(reference)(model, jnp.asarray(clip)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("preset", "layers", "heads", "ratio", "dim"),
    [("cct_2", 2, 2, 1, 128), ("cct_7", 7, 4, 2, 256), ("cct_16", 16, 6, 3, 384)],
)
def test_cct_presets(preset: str, layers: int, heads: int, ratio: int, dim: int) -> None:
    model = nnx.eval_shape(lambda: getattr(cct_3d, preset)(img_size=32, num_frames=4, num_classes=7))  # shapes only
    cfg = model.config
    assert (cfg["num_layers"], cfg["num_heads"], cfg["mlp_ratio"], cfg["embedding_dim"]) == (layers, heads, ratio, dim)
    assert (cfg["kernel_size"], cfg["stride"], cfg["padding"]) == (3, 1, 1)
    assert len(model.transformer.blocks) == layers and model.transformer.blocks[0].ff.fc1.kernel.shape == (
        dim,
        dim * ratio,
    )
    assert model.tokenizer.convs[0].kernel.shape == (3, 3, 3, 3, dim)  # (kt, kh, kw, in, out)
    assert [b.drop_path.drop_prob for b in model.transformer.blocks] == pytest.approx(np.linspace(0, 0.1, layers))


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    layer = DropPath(0.25, rngs=nnx.Rngs(0))
    x = jnp.ones((4000, 3, 5))
    per_sample = np.asarray(layer(x)).reshape(4000, -1)
    assert ((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1)).all()  # all of a sample or none
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03
    assert not np.array_equal(layer(x), layer(x))  # the stream advances
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)


def rngs() -> nnx.Rngs:
    """Dropout keys of the 'rbg' kind: same semantics, a much cheaper compile than threefry on CPU."""
    return nnx.Rngs(params=0, dropout=jax.random.key(0, impl="rbg"))


VIVIT = dict(GEOM, spatial_depth=1, temporal_depth=1, **TINY, dropout=0.1, emb_dropout=0.1)
VIDEO_MODELS = {
    "vit_3d": lambda: ViT(**GEOM, depth=1, **TINY, dropout=0.1, emb_dropout=0.1, rngs=rngs()),
    "simple_vit_3d": lambda: SimpleViT(**GEOM, depth=1, **TINY, rngs=rngs()),
    "vivit-encoder": lambda: vivit.ViT(**VIVIT, rngs=rngs()),
    "vivit-self-attention": lambda: vivit.ViT(**VIVIT, variant="factorized_self_attention", pool="mean", rngs=rngs()),
    "cct_3d": lambda: cct_3d.CCT(**CCT, positional_embedding="learnable", rngs=rngs()),
}


@pytest.mark.parametrize("name", sorted(VIDEO_MODELS))
def test_bad_input_names_the_argument(name: str) -> None:
    model = VIDEO_MODELS[name]()
    with pytest.raises(ValueError, match=r"video must be a 5-D tensor \(b frames height width c\)"):
        model(jnp.zeros((2, 16, 16, 3)))
    with pytest.raises(ValueError, match="video frames 6 is larger than the model's 4"):
        model(jnp.zeros((1, 6, 16, 16, 3)))
    if name != "cct_3d":  # CCT's convolutions take any number of frames
        with pytest.raises(ValueError, match="video frames 3 must be a positive multiple of the patch size 2"):
            model(jnp.zeros((1, 3, 16, 16, 3)))
    with pytest.raises(ValueError, match="video must have channels=3"):
        model(jnp.zeros((1, 4, 16, 16, 1)))


@pytest.mark.parametrize("cls", [ViT, SimpleViT, vivit.ViT])
def test_bad_geometry_names_the_argument(cls: type) -> None:
    depth = dict(spatial_depth=1, temporal_depth=1) if cls is vivit.ViT else dict(depth=1)
    with pytest.raises(ValueError, match="frames 5 must be divisible by frame_patch_size 2"):
        cls(**dict(GEOM, frames=5), **depth, **TINY)
    with pytest.raises(ValueError, match=r"image_size \(16, 12\) must be divisible by image_patch_size \(8, 8\)"):
        cls(**dict(GEOM, image_size=(16, 12)), **depth, **TINY)
    if cls is vivit.ViT:
        with pytest.raises(ValueError, match="spatial_depth and temporal_depth must be equal, got 1 and 2"):
            cls(**GEOM, spatial_depth=1, temporal_depth=2, variant="factorized_self_attention", **TINY)


def cross_entropy(model: nnx.Module, clips: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(clips), labels).mean()


@nnx.jit
def train_step(model: nnx.Module, opt: nnx.Optimizer, clips: jax.Array, labels: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(cross_entropy)(model, clips, labels)
    opt.update(model, grads)
    return loss


@nnx.jit
def eval_logits(model: nnx.Module, clips: jax.Array) -> jax.Array:
    return model(clips)


@pytest.mark.parametrize("name", sorted(VIDEO_MODELS))
def test_training_lowers_the_loss_and_eval_is_deterministic(name: str) -> None:
    model = VIDEO_MODELS[name]()
    clips = jax.random.normal(jax.random.key(0), (4, 4, 16, 16, 3))
    labels = jnp.arange(4)
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    def eval_loss() -> float:
        model.eval()
        a = eval_logits(model, clips)
        np.testing.assert_array_equal(a, eval_logits(model, clips))
        return float(optax.softmax_cross_entropy_with_integer_labels(a, labels).mean())

    before = eval_loss()
    model.train()
    losses = [float(train_step(model, opt, clips, labels)) for _ in range(6)]
    after = eval_loss()
    assert np.isfinite(losses).all()
    assert after < 0.9 * before, (before, after, losses)
