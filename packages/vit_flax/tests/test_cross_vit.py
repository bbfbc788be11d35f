"""CrossViT (flax, channels-last): the model against an explicit computation from its parameters, the
cross-attention block, features under jit, the seed README example and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_flax.cross_attention import CrossAttention
from vit_flax.cross_vit import CrossViT
from vit_flax.layers import Attention
from vit_parity.core import spec

Array = jax.Array
# the registry case's widths (eager flax compiles an initializer per parameter shape, once per process), deeper
PROJECTED = dict(spec.get("cross_vit").case("projected").config, sm_enc_depth=2, depth=2, cross_attn_depth=2)


def ln(x: Array, norm: nnx.LayerNorm) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + norm.epsilon) * norm.scale[...] + norm.bias[...]


def lin(x: Array, linear: nnx.Linear) -> Array:
    return x @ linear.kernel[...] + (0 if linear.bias is None else linear.bias[...])


def mha(x: Array, context: Array, attn: Attention) -> tuple[Array, Array]:
    """Queries from ``x``, keys and values from ``context``, explicit softmax; returns the output and weights."""
    wq, wk, wv = jnp.split(attn.to_qkv.kernel[...], 3, axis=-1)

    def heads(t: Array) -> Array:
        return t.reshape(*t.shape[:2], attn.heads, -1).transpose(0, 2, 1, 3)

    q, k, v = heads(x @ wq), heads(context @ wk), heads(context @ wv)
    weights = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / q.shape[-1] ** 0.5, axis=-1)
    out = (weights @ v).transpose(0, 2, 1, 3)
    return lin(out.reshape(*out.shape[:2], -1), attn.to_out), weights


def gelu(x: Array) -> Array:
    return 0.5 * x * (1 + jax.scipy.special.erf(x / np.sqrt(2.0)))


def patches(img: Array, ph: int, pw: int) -> Array:
    """Patches in row-major grid order, each flattened as (ph, pw, c), by an explicit loop."""
    b, h, w, _ = img.shape
    cut = [img[:, i : i + ph, j : j + pw] for i in range(0, h, ph) for j in range(0, w, pw)]
    return jnp.stack([p.reshape(b, -1) for p in cut], axis=1)


def embed(embedder: nnx.Module, img: Array) -> Array:
    pe = embedder.to_patch_embedding
    ph, pw = pe.patch_size
    x = ln(lin(ln(patches(img, ph, pw), pe.pre_norm), pe.proj), pe.post_norm)
    gh, gw = img.shape[1] // ph, img.shape[2] // pw
    table = embedder.pos_embedding[...]
    pos = table[0, 1:].reshape(*embedder.grid, -1)[:gh, :gw].reshape(gh * gw, -1)
    cls = embedder.cls_token[...][0] + table[0, :1]
    return jnp.concatenate((jnp.broadcast_to(cls, (img.shape[0], 1, cls.shape[-1])), x + pos), axis=1)


def transformer(t: nnx.Module, x: Array, feats: dict[str, Array], prefix: str) -> Array:
    for i, blk in enumerate(t.blocks):
        h = ln(x, blk.norm1)
        x = x + mha(h, h, blk.attn)[0]
        x = x + lin(gelu(lin(ln(x, blk.norm2), blk.ff.fc1)), blk.ff.fc2)
        feats[f"{prefix}block{i:02d}"] = x
    return ln(x, t.norm)


def cross(block: CrossAttention, cls: Array, patches_: Array) -> tuple[Array, Array]:
    """The class token (projected when the widths differ) normalized, attending to itself and the other
    branch's patch tokens as they are; projected back and added."""
    projected = block.project_in is not None
    q = ln(lin(cls, block.project_in) if projected else cls, block.norm)
    out, weights = mha(q, jnp.concatenate((q, patches_), axis=1), block.attn)
    return cls + (lin(out, block.project_out) if projected else out), weights


def reference_cross_vit(model: CrossViT, img: Array) -> tuple[Array, dict[str, Array]]:
    """CrossViT recomputed from its parameters with plain array operations; returns logits and features
    (attention weights of the cross blocks under ``.../attn``)."""
    feats: dict[str, Array] = {}
    sm, lg = embed(model.sm_image_embedder, img), embed(model.lg_image_embedder, img)
    for i, layer in enumerate(model.multi_scale_encoder.layers):
        sm = transformer(layer.sm_transformer, sm, feats, f"enc{i}/sm/")
        lg = transformer(layer.lg_transformer, lg, feats, f"enc{i}/lg/")
        sm_cls, lg_cls = sm[:, :1], lg[:, :1]
        for j, (sm_attend_lg, lg_attend_sm) in enumerate(zip(layer.sm_attend_lg, layer.lg_attend_sm)):
            sm_cls, feats[f"enc{i}/cross/sm/block{j:02d}/attn"] = cross(sm_attend_lg, sm_cls, lg[:, 1:])
            feats[f"enc{i}/cross/sm/block{j:02d}"] = jnp.concatenate((sm_cls, sm[:, 1:]), axis=1)
            lg_cls, feats[f"enc{i}/cross/lg/block{j:02d}/attn"] = cross(lg_attend_sm, lg_cls, sm[:, 1:])
            feats[f"enc{i}/cross/lg/block{j:02d}"] = jnp.concatenate((lg_cls, lg[:, 1:]), axis=1)
        sm, lg = jnp.concatenate((sm_cls, sm[:, 1:]), axis=1), jnp.concatenate((lg_cls, lg[:, 1:]), axis=1)
    feats["pre_logits"] = jnp.concatenate((sm[:, 0], lg[:, 0]), axis=-1)
    heads = model.sm_mlp_head, model.lg_mlp_head
    logits = sum(lin(ln(x[:, 0], h.norm), h.fc) for x, h in zip((sm, lg), heads))
    return logits, feats


def close(got: Array, want: Array, label: str = "") -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5, err_msg=label)


def test_matches_an_explicit_computation_and_labels() -> None:
    """One smaller image (each branch reads the top-left part of its position grid); equal widths, rectangular
    patches, full-size images and widths that differ everywhere are covered by parity with torch, whose own test
    recomputes them."""
    model = CrossViT(**PROJECTED, rngs=nnx.Rngs(0))
    model.eval()
    img = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    with jax.default_matmul_precision("float32"):
        want_logits, want = reference_cross_vit(model, img)
        logits, got = model(img, return_features=True, return_attn=True)
        close(logits, want_logits)
        close(model(img), want_logits)  # the flash-style path
    for label, value in want.items():
        close(got[label], value, label)
    assert {k for k in got if "/attn" not in k or "/cross/" in k} == set(want)

    blocks = ["sm/block00", "sm/block01", "lg/block00", "cross/sm/block00", "cross/lg/block00", "cross/sm/block01",
              "cross/lg/block01"]  # fmt: skip
    assert [k for k in got if "/attn" not in k] == [f"enc{i}/{b}" for i in range(2) for b in blocks] + ["pre_logits"]
    assert got["enc1/cross/sm/block01"].shape == (2, 5, 16)  # 4 small patches and the class token
    assert got["enc1/cross/lg/block01"].shape == (2, 2, 24)
    assert got["enc1/cross/lg/block01/attn"].shape == (2, 2, 1, 1 + 4)  # itself and the 4 small patches
    assert got["pre_logits"].shape == (2, 16 + 24)
    block = model.multi_scale_encoder.layers[0].sm_attend_lg[0]
    assert block.project_in.kernel.shape == (16, 24) and block.project_out.kernel.shape == (24, 16)
    assert block.norm.scale.shape == (24,)  # the class token is normalized in the other branch's width
    same = nnx.eval_shape(lambda: CrossViT(**dict(PROJECTED, lg_dim=16), rngs=nnx.Rngs(0)))
    assert same.multi_scale_encoder.layers[0].lg_attend_sm[0].project_in is None


def test_cross_attention_block() -> None:
    # the registry case's widths, whose initializers the other tests compile
    x, context = jax.random.normal(jax.random.key(0), (2, 3, 16)), jax.random.normal(jax.random.key(1), (2, 5, 24))
    block = CrossAttention(16, 24, heads=2, dim_head=8, rngs=nnx.Rngs(0))
    block.eval()
    with jax.default_matmul_precision("float32"):
        out, weights = block(x, context, return_attn=True)
        want, want_weights = cross(block, x, context)
        close(out, want)
        close(weights, want_weights)
        assert weights.shape == (2, 2, 3, 3 + 5)
        close(block(x, context), out)  # the flash-style path

        alone = CrossAttention(24, heads=2, dim_head=8, include_self=False, rngs=nnx.Rngs(0))  # no projections
        alone.eval()
        assert alone.project_in is None and alone.project_out is None
        y = jax.random.normal(jax.random.key(2), (2, 1, 24))
        out, weights = alone(y, context, return_attn=True)
        assert weights.shape == (2, 2, 1, 5)
        close(out, y + mha(ln(y, alone.norm), context, alone.attn)[0])


def test_seed_readme_example_arguments_channels_last() -> None:
    """The seed's example arguments build the flax model and give its shapes on a channels-last image (traced
    abstractly: the numbers are checked on small models above and by parity)."""

    def build() -> CrossViT:
        return CrossViT(
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

    v = nnx.eval_shape(build)
    v.eval()
    img = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    labels = ["enc3/cross/sm/block01", "enc3/cross/lg/block01"]  # the multi-scale encoder's two outputs
    graphdef, state = nnx.split(v)
    pred, feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, return_features=labels), state, img)
    assert pred.shape == (1, 1000)
    assert [feats[k].shape for k in labels] == [(1, 257, 192), (1, 17, 384)]


def test_bad_geometry_and_input_are_named() -> None:
    cfg = {k: v for k, v in PROJECTED.items() if k not in ("image_size", "sm_patch_size", "lg_patch_size")}
    with pytest.raises(ValueError, match=r"image_size \(24, 24\) must be divisible by both sm_patch_size \(12, 12\) "
                                         r"and lg_patch_size \(16, 16\)"):  # fmt: skip
        CrossViT(image_size=24, **cfg)
    # abstract weights: the checks run before any of them is read
    model = nnx.eval_shape(lambda: CrossViT(image_size=16, sm_patch_size=4, lg_patch_size=8, **cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="img width 12 must be a positive multiple of both sm_patch_size 4 and "
                                         "lg_patch_size 8"):  # fmt: skip
        model(jnp.zeros((1, 16, 12, 3)))
    with pytest.raises(ValueError, match=r"img must have channels=3 \(b h w c\), got 16"):
        model(jnp.zeros((1, 3, 16, 16)))  # channels-first
    with pytest.raises(ValueError, match="img height 32 is larger than the model's 16"):
        model(jnp.zeros((1, 32, 16, 3)))
