"""efficient.ViT in flax: the shell around this library's transformer against a recomputation from its parameters
(numpy, float64), a user-written nnx module as the transformer, the transformer alone, checkpoints and bad input
(channels-last images; the seed's examples plug in torch modules: the README's flax example uses this library's
transformer)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vit_flax
from vit_flax import layers
from vit_flax.efficient import Transformer, ViT
from vit_parity.core.features import Features

Array = jax.Array
SHELL = dict(image_size=16, patch_size=4, num_classes=5, dim=16)


def body(depth: int = 2, seed: int = 1) -> Transformer:
    return Transformer(16, depth, 2, 8, 32, rngs=nnx.Rngs(seed))


def model(pool: str = "cls", transformer: nnx.Module | None = None, **kw: object) -> ViT:
    m = ViT(**{**SHELL, **kw}, transformer=transformer or body(), pool=pool, rngs=nnx.Rngs(0))
    m.eval()
    return m


def images(b: int = 2, h: int = 16, w: int = 16) -> Array:
    return jax.random.normal(jax.random.key(3), (b, h, w, 3))


def numpy_params(m: nnx.Module) -> dict[str, np.ndarray]:
    flat = nnx.to_flat_state(nnx.state(m, nnx.Param))
    return {".".join(map(str, k)): np.asarray(v[...], np.float64) for k, v in flat}


# --- an independent computation from the parameters, in numpy (float64) --------------------------------------


def layer_norm(x: np.ndarray, p: dict[str, np.ndarray], name: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p[f"{name}.scale"] + p[f"{name}.bias"]


def linear(x: np.ndarray, p: dict[str, np.ndarray], name: str) -> np.ndarray:
    y = x @ p[f"{name}.kernel"]
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def transformer_by_hand(x: np.ndarray, p: dict[str, np.ndarray], depth: int, heads: int, prefix: str) -> np.ndarray:
    """Pre-norm blocks (softmax attention written out, exact GELU through erf) and the final norm."""
    b, n, _ = x.shape
    erf = np.vectorize(math.erf)
    for i in range(depth):
        blk = f"{prefix}blocks.{i}"
        qkv = linear(layer_norm(x, p, f"{blk}.norm1"), p, f"{blk}.attn.to_qkv")
        q, k, v = (t.reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        e = np.exp(logits - logits.max(-1, keepdims=True))
        attn = e / e.sum(-1, keepdims=True)
        x = x + linear((attn @ v).transpose(0, 2, 1, 3).reshape(b, n, -1), p, f"{blk}.attn.to_out")
        h = linear(layer_norm(x, p, f"{blk}.norm2"), p, f"{blk}.ff.fc1")
        x = x + linear(0.5 * h * (1 + erf(h / math.sqrt(2))), p, f"{blk}.ff.fc2")
    return layer_norm(x, p, f"{prefix}norm")


def vit_by_hand(m: ViT, img: Array) -> np.ndarray:
    """Patches as ``(p1, p2, c)``, normalized, projected, normalized; the class token and the top-left positions of
    the grid; the transformer; the class token or the mean of every token; LayerNorm and Linear."""
    p, img = numpy_params(m), np.asarray(img, np.float64)
    b, h, w, c = img.shape
    ph, pw = m.patch_size
    gh, gw = h // ph, w // pw
    patches = img.reshape(b, gh, ph, gw, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ph * pw * c)
    x = layer_norm(linear(layer_norm(patches, p, "to_patch_embedding.pre_norm"), p, "to_patch_embedding.proj"), p,
                   "to_patch_embedding.post_norm")  # fmt: skip
    pos = p["pos_embedding"]
    grid_pos = pos[:, 1:].reshape(1, *m.grid, -1)[:, :gh, :gw].reshape(1, gh * gw, -1)
    cls = np.broadcast_to(p["cls_token"] + pos[:, :1], (b, 1, x.shape[-1]))
    x = np.concatenate((cls, x + grid_pos), axis=1)
    x = transformer_by_hand(x, p, m.transformer.config["depth"], m.transformer.config["heads"], "transformer.")
    pooled = x[:, 0] if m.pool == "cls" else x.mean(1)
    return linear(layer_norm(pooled, p, "mlp_head.norm"), p, "mlp_head.fc")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_the_model_is_the_vit_shell_around_its_transformer(pool: str) -> None:
    # a smaller image (cropped positions) is compared with torch's by the registry's parity case; eager flax compiles
    # every operation for each new shape
    m, img = model(pool), images()
    np.testing.assert_allclose(m(img), vit_by_hand(m, img), rtol=1e-5, atol=1e-5)


def test_features_name_the_blocks_and_what_the_head_reads() -> None:
    m, img = model(), images()
    logits, f = m(img, return_features=True, return_attn=True)
    assert list(f) == ["block00/attn", "block00", "block01/attn", "block01", "pre_logits"]
    assert f["block00"].shape == (2, 17, 16) and f["block00/attn"].shape == (2, 2, 17, 17)
    np.testing.assert_allclose(f["pre_logits"], m.transformer.norm(f["block01"])[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.mlp_head(f["pre_logits"]), logits, rtol=1e-6, atol=1e-6)


class Mixer(nnx.Module):
    """A user-written token mixer mapping (b, n, dim) to (b, n, out): not a library transformer."""

    def __init__(self, dim: int = 16, out: int | None = None, *, rngs: nnx.Rngs) -> None:
        self.fc = nnx.Linear(dim, out or dim, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.drop(jnp.tanh(self.fc(x))) + x.mean(1, keepdims=True)[..., : self.fc.out_features]


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_a_user_module_is_the_transformer(pool: str) -> None:
    mixer = Mixer(rngs=nnx.Rngs(4))
    m, img = model(pool, mixer), images()
    assert m.transformer is mixer and mixer.drop.deterministic  # the model's eval mode reaches it
    x = mixer(m.tokens(img))
    want = m.mlp_head(x[:, 0] if pool == "cls" else x.mean(1))
    np.testing.assert_array_equal(m(img), want)
    _, f = m(img, return_features=True)
    assert list(f) == ["pre_logits"]  # the user's module records nothing
    assert repr(m.config["transformer"]) == f"<{__name__}.Mixer module>"  # a static stand-in, not the module


def test_a_library_transformer_records_its_blocks_and_the_registry_one_is_the_same() -> None:
    plain = layers.Transformer(16, 2, 2, 8, 32, rngs=nnx.Rngs(1))
    a, b = model(transformer=plain), model(transformer=body())
    nnx.update(b, nnx.state(a, nnx.Param))  # the same paths
    img = images()
    np.testing.assert_array_equal(a(img), b(img))
    assert list(a(img, return_features=True)[1]) == ["block00", "block01", "pre_logits"]


def test_the_transformer_alone() -> None:
    t = body()
    t.eval()
    x = jax.random.normal(jax.random.key(0), (2, 17, 16))
    want = transformer_by_hand(np.asarray(x, np.float64), numpy_params(t), 2, 2, "")
    np.testing.assert_allclose(t(x), want, rtol=1e-5, atol=1e-5)
    out, f = t(x, return_features=True)
    assert list(f) == ["block00", "block01", "pre_logits"]
    np.testing.assert_array_equal(f["pre_logits"], out)
    assert t.config == dict(dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32, dropout=0.0)
    with pytest.raises(ValueError, match=r"features= .* or return_features/return_attn, not both"):
        t(x, features=Features(), return_features=True)
    with pytest.raises(ValueError, match=r"x must be a \(b, n, 16\) token sequence, got shape \(2, 17, 8\)"):
        t(jnp.zeros((2, 17, 8)))


def test_the_hooks_and_train_mode_reach_the_transformer() -> None:
    """The steps a distillable subclass composes; ``train()`` and ``eval()`` reach the transformer's dropout (the
    gradients of a compiled training pass: the registry's generic tests)."""
    mixer = Mixer(rngs=nnx.Rngs(4))
    m, img = model(transformer=mixer), images()
    x = m.tokens(img)
    assert x.shape == (2, 17, 16) and m.encode(x).shape == (2, 17, 16) and m.pool_tokens(x).shape == (2, 16)
    m.train()
    assert not mixer.drop.deterministic
    assert not np.allclose(m(img), m(img))  # the dropout stream advances
    m.eval()
    np.testing.assert_array_equal(m(img), m(img))


# --- checkpoints -------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_with_the_library_transformer(tmp_path: Path) -> None:
    m, img = model("mean"), images()
    assert m.config["transformer"] == {"__model__": "efficient_transformer", "config": m.transformer.config}
    vit_flax.save(m, tmp_path / "efficient")
    back = vit_flax.load(tmp_path / "efficient")
    assert isinstance(back.transformer, Transformer) and back.config == m.config
    np.testing.assert_array_equal(back(img), m(img))
    with pytest.raises(TypeError, match="constructor argument 'transformer'"):
        vit_flax.save(model(transformer=Mixer(rngs=nnx.Rngs(4))), tmp_path / "user")


# --- bad input -------------------------------------------------------------------------------------------------


def abstract(make: object) -> nnx.Module:
    """A module built without drawing its weights (nothing to compile): enough for the constructor's checks."""
    return nnx.eval_shape(make)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(transformer=lambda: Transformer(32, 1, 2, 8, 32)),
            r"transformer is 32 wide, .* dim=16 wide: it must be 16",
        ),
        (dict(transformer=lambda: layers.Transformer(8, 1, 2, 8, 32, rngs=nnx.Rngs(0))), r"transformer is 8 wide"),
        (dict(transformer="function"), r"transformer must be a flax.nnx.Module mapping .* got function"),
        (dict(transformer=None), r"transformer must be a flax.nnx.Module .* got NoneType"),
        (dict(pool="max"), r"pool must be one of \('cls', 'mean'\), got 'max'"),
        (dict(image_size=18), r"image_size \(18, 18\) must be divisible by patch_size \(4, 4\)"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    if callable(kwargs.get("transformer")):
        kwargs = dict(kwargs, transformer=abstract(kwargs["transformer"]))
    elif kwargs.get("transformer") == "function":
        kwargs = dict(kwargs, transformer=lambda x: x)
    with pytest.raises(ValueError, match=match):
        ViT(**{**SHELL, "transformer": abstract(body), **kwargs})


class Pair(nnx.Module):
    """Returns a tuple, as some transformers do when asked for more."""

    def __call__(self, x: Array) -> tuple[Array, Array]:
        return x, x


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Mixer(16, 8, rngs=nnx.Rngs(0)), r"transformer must map .* dim=16: given shape \(2, 17, 16\), it "
                                                 r"returned shape \(2, 17, 8\)"),
        (Pair, r"transformer must map .* it returned something that is no array"),
    ],
)  # fmt: skip
def test_a_transformer_that_changes_the_shape_is_named(make: object, match: str) -> None:
    m = model(transformer=make())
    with pytest.raises(ValueError, match=match):
        m(images())
    with pytest.raises(ValueError, match=match):  # under jit too: the shapes are static
        nnx.jit(lambda mm, x: mm(x))(m, images())


def test_bad_images_are_named() -> None:
    m = model()
    with pytest.raises(ValueError, match=r"img must have channels=3 .* got 1"):
        m(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="img height 20 is larger than the model's 16"):
        m(jnp.zeros((1, 20, 16, 3)))
    with pytest.raises(ValueError, match="img width 6 must be a positive multiple of the patch size 4"):
        m(jnp.zeros((1, 16, 6, 3)))
