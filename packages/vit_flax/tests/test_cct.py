"""CCT on images (channels-last): against an explicit computation, its sine table, its tokenizer, the presets,
the README examples and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax import cct, cct_3d
from vit_parity.core.facts import signature

CCT = dict(img_size=16, embedding_dim=24, kernel_size=3, stride=2, padding=1, num_layers=1, num_heads=2,
           mlp_ratio=1.0, num_classes=4)  # fmt: skip


def layer_norm(x: jax.Array, norm: nnx.LayerNorm) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * norm.scale[...] + norm.bias[...]


def reference(m: cct.CCT, x: jax.Array) -> jax.Array:
    """CCT recomputed from its parameters with plain array ops: convolution through ``lax.conv_general_dilated``,
    ReLU and a max pool written as a maximum over shifted slices of the -inf padded map, positions cut from the
    reshaped grid, each encoder layer written out (norm after the attention residual), sequence pooling."""
    tok = m.tokenizer
    for conv in tok.convs:
        x = jax.lax.conv_general_dilated(
            x, conv.kernel[...], tok.stride, [(p, p) for p in tok.padding], dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = jnp.maximum(x, 0)
        (kh, kw), (sh, sw), (ph, pw) = tok.pool_kernel, tok.pool_stride, tok.pool_padding
        x = jnp.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)], constant_values=-jnp.inf)
        oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
        x = jnp.stack([x[:, i : i + sh * oh : sh, j : j + sw * ow : sw] for i in range(kh) for j in range(kw)]).max(0)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    if m.positional_embedding == "learnable":
        x = x + m.positional_emb[...][0].reshape(*m.grid, d)[:h, :w].reshape(h * w, d)
    elif m.positional_embedding == "sine":
        i = np.arange(d)
        angles = np.arange(math.prod(m.grid))[:, None] / 10000 ** (2 * (i // 2) / d)
        table = np.where(i % 2 == 0, np.sin(angles), np.cos(angles)).astype(np.float32)
        x = x + table.reshape(*m.grid, d)[:h, :w].reshape(h * w, d)
    for block in m.transformer.blocks:
        heads = block.attn.heads
        qkv = layer_norm(x, block.norm1) @ block.attn.to_qkv.kernel[...]
        q, k, v = (t.reshape(b, h * w, heads, -1).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, axis=-1))
        attn = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]), axis=-1)
        y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, h * w, d)
        x = layer_norm(x + y @ block.attn.to_out.kernel[...] + block.attn.to_out.bias[...], block.norm2)
        ff = block.ff
        hidden = jax.nn.gelu(x @ ff.fc1.kernel[...] + ff.fc1.bias[...], approximate=False)
        x = x + hidden @ ff.fc2.kernel[...] + ff.fc2.bias[...]
    x = layer_norm(x, m.transformer.norm)
    weights = jax.nn.softmax(x @ m.attention_pool.kernel[...][:, 0] + m.attention_pool.bias[...], axis=1)
    return jnp.einsum("bn,bnd->bd", weights, x) @ m.fc.kernel[...] + m.fc.bias[...]


def test_cct_matches_an_explicit_computation_on_a_smaller_image() -> None:
    # the default 3 x 3 pool (stride 2, -inf padding 1) after each of two convolutions; sides 16 -> 8 -> 4, 12 -> 6 -> 3
    models = []
    for positional_embedding in ("learnable", "sine", "none"):
        cfg = dict(CCT, img_size=(16, 12), n_conv_layers=2, stride=1, positional_embedding=positional_embedding)
        models.append(cct.CCT(**cfg, rngs=nnx.Rngs(0)))
        models[-1].eval()
        assert models[-1].grid == (4, 3)
    img = jnp.asarray(np.random.default_rng(4).standard_normal((2, 8, 12, 3), dtype=np.float32))  # grid (2, 3)

    @nnx.jit  # one compilation for the three models and their references
    def run(models: nnx.List, x: jax.Array) -> list:
        return [(m(x, return_features=True), reference(m, x)) for m in models]

    for (logits, features), want in run(nnx.List(models), img):
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
        assert list(features) == ["block00", "pre_logits"] and features["block00"].shape == (2, 6, 24)


def test_one_body_for_images_and_videos() -> None:
    assert issubclass(cct.CCT, cct.CompactTransformer) and issubclass(cct_3d.CCT, cct.CompactTransformer)
    image = nnx.eval_shape(lambda: cct.CCT(**CCT, positional_embedding="learnable"))
    video = nnx.eval_shape(lambda: cct_3d.CCT(**CCT, num_frames=4, positional_embedding="learnable"))
    assert image.tokenizer.convs[0].kernel.shape == (3, 3, 3, 24)  # (kh, kw, in, out)
    assert video.tokenizer.convs[0].kernel.shape == (3, 3, 3, 3, 24)

    def paths(model: nnx.Module) -> set[str]:
        return {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    assert paths(image) == paths(video)
    assert "tokenizer.convs.0.kernel" in paths(image) and "positional_emb" in paths(image)


def test_cct_tokenizer_pads_explicitly_and_the_presets() -> None:
    model = nnx.eval_shape(lambda: cct.cct_7(img_size=(20, 12), kernel_size=5, num_classes=7))  # shapes only
    conv = model.tokenizer.convs[0]
    assert conv.padding == [(2, 2), (2, 2)] and conv.strides == (1, 1) and conv.kernel.shape == (5, 5, 3, 256)
    assert conv.bias is None
    assert model.grid == model.tokenizer.grid((20, 12)) == (10, 6)
    cfg = model.config
    assert cfg == {**signature("cct").defaults, "img_size": (20, 12), "num_classes": 7, "num_layers": 7,
                   "num_heads": 4, "mlp_ratio": 2, "embedding_dim": 256, "kernel_size": 5, "stride": 1,
                   "padding": 2}  # fmt: skip
    assert [b.drop_path.drop_prob for b in model.transformer.blocks] == pytest.approx(np.linspace(0, 0.1, 7))
    names = ("cct_2", "cct_4", "cct_6", "cct_7", "cct_8", "cct_14", "cct_16")
    assert all(name in cct.__all__ and getattr(cct, name).__name__ == name for name in names)
    built = [nnx.eval_shape(lambda n=n: getattr(cct, n)(img_size=16, num_classes=2)) for n in names]
    layers = [model.config["num_layers"] for model in built]
    assert layers == [2, 4, 6, 7, 8, 14, 16]


def test_cct_bad_arguments_and_input() -> None:
    with pytest.raises(ValueError, match="positional_embedding must be one of"):
        cct.CCT(**CCT, positional_embedding="rope")
    with pytest.raises(ValueError, match=r"the tokenizer leaves no tokens for img_size \(2, 16\)"):
        cct.CCT(**dict(CCT, img_size=(2, 16), padding=0))
    model = cct.CCT(**dict(CCT, padding=0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"img must be a 4-D tensor \(b height width c\)"):
        model(jnp.zeros((1, 3, 16, 16, 3)))
    with pytest.raises(ValueError, match="img must have channels=3"):
        model(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="img height 20 is larger than the model's 16"):
        model(jnp.zeros((1, 20, 16, 3)))
    with pytest.raises(ValueError, match=r"img of shape \(1, 2, 16, 3\) is too small: the tokenizer leaves no tokens"):
        model(jnp.zeros((1, 2, 16, 3)))
