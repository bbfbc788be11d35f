"""ATS-ViT's token sampling across backends: an explicit draw gives the same numbers and kept tokens in training
(parity's run_case compares eval mode, where nothing is drawn)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from vit_parity.core import spec
from vit_parity.tools.parity import build_pair, compare, strict_float32

CONFIG = dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=3, max_tokens_per_depth=(12, 6, 3), heads=4,
              mlp_dim=64, dim_head=8)  # fmt: skip
CASE = spec.Case("train-sampling", CONFIG, (spec.image(b=3, h=16, w=16),), ("b", 10))


@nnx.jit
def flax_step(model: nnx.Module, img: jnp.ndarray, noise: list) -> tuple:
    """One compilation for every draw (the kept widths are static)."""
    return model(img, True, noise=noise, return_features=True)


def test_an_explicit_draw_gives_the_same_numbers_in_training_in_both_backends() -> None:
    torch_model, flax_model = build_pair(spec.get("ats_vit"), CASE)
    torch_model.train()
    flax_model.train()
    t_img, f_img = CASE.sample("torch", 0)[0], CASE.sample("flax", 0)[0]
    shapes = torch_model.noise_shapes(t_img.shape)
    assert shapes == flax_model.noise_shapes(f_img.shape) == ((3, 12, 16), (3, 6, 12), (3, 3, 6))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        noise = [rng.random(s, dtype=np.float32) for s in shapes]
        with strict_float32(), torch.no_grad():
            (t_out, t_ids), t_feats = torch_model(
                torch.from_numpy(t_img), True, noise=[torch.from_numpy(u) for u in noise], return_features=True
            )
            (f_out, f_ids), f_feats = flax_step(flax_model, jnp.asarray(f_img), [jnp.asarray(u) for u in noise])
        assert list(t_feats) == list(f_feats) == ["block00", "block01", "block02", "pre_logits"]
        np.testing.assert_array_equal(np.asarray(f_ids), t_ids.numpy())
        diffs = [compare("logits", np.asarray(f_out), t_out.numpy())]
        diffs += [compare(k, np.asarray(f_feats[k]), t_feats[k].numpy()) for k in t_feats]
        assert all(d.ok for d in diffs), [d for d in diffs if not d.ok]
