"""Labelled features returned by every model: the same labels as torch, under nnx.jit, without side effects."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vit_parity.core import spec

# one case per family: each compiles its own program
ARCHS = ["vit", "vivit", "cct_3d", "navit"]


@pytest.mark.parametrize("name", ARCHS)
def test_features_under_jit_match_eager_and_change_nothing(name: str) -> None:
    arch = spec.get(name)
    case = arch.case()
    model = case.build("flax", arch.load_class("flax"), rngs=nnx.Rngs(0))
    model.eval()
    inputs = list(spec.map_arrays(jnp.asarray, case.sample("flax", 0)))

    @nnx.jit
    def run(m: nnx.Module, *x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        return m(*x, return_features=True, return_attn=True)

    out, features = run(model, *inputs)
    np.testing.assert_allclose(out, model(*inputs), rtol=1e-5, atol=1e-5)
    blocks = [k for k in features if "/attn" not in k and k != "pre_logits"]
    assert blocks and "pre_logits" in features
    assert {k.split("/attn")[0] for k in features if "/attn" in k} == set(blocks)
    _, again = run(model, *inputs)  # a second call: nothing leaked from the first trace
    assert list(again) == list(features)


def test_selection_by_label_and_index() -> None:
    from vit_flax import ViT

    model = ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=3, heads=2, mlp_dim=64, dim_head=16,
                rngs=nnx.Rngs(0))  # fmt: skip
    model.eval()
    img = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    _, every = model(img, return_features=True)
    assert list(every) == ["block00", "block01", "block02", "pre_logits"]
    _, picked = model(img, return_features=[0, -1], return_attn=True)
    assert list(picked) == ["block00/attn", "block00", "block02/attn", "block02"]
    np.testing.assert_allclose(picked["block02"], every["block02"], rtol=1e-5, atol=1e-5)  # explicit softmax
    np.testing.assert_allclose(every["pre_logits"], model.transformer.norm(every["block02"])[:, 0], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(spec.REGISTRY))
def test_bf16_models_keep_their_residual_stream_in_bf16(name: str) -> None:
    arch = spec.get(name)
    case = arch.case()
    model = case.build("flax", arch.load_class("flax"), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    model.eval()
    inputs = list(spec.map_arrays(jnp.asarray, case.sample("flax", 0)))
    _, features = nnx.jit(lambda m, *x: m(*x, return_features=True))(model, *inputs)
    assert {str(v.dtype) for k, v in features.items() if "block" in k} == {"bfloat16"}, name
