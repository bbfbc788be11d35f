"""The video family across backends: Conv3d conversion by module type."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from vit_flax import cct_3d as flax_cct
from vit_flax.checkpoint import load_state
from vit_torch import cct_3d as torch_cct
from vit_torch.checkpoint import to_checkpoint

CUBIC = dict(img_size=8, num_frames=4, embedding_dim=16, frame_kernel_size=3, kernel_size=3, stride=1, padding=1,
             num_layers=1, num_heads=2, num_classes=3, n_input_channels=2)  # fmt: skip


def test_conversion_by_module_type_gets_a_cubic_conv3d_kernel_right() -> None:
    torch.manual_seed(0)
    torch_model = torch_cct.CCT(**CUBIC).eval()
    ckpt = to_checkpoint(torch_model)
    assert ckpt.kinds["tokenizer.convs.0"] == "conv"
    weight = ckpt.tensors["tokenizer.convs.0.weight"]
    assert weight.shape == (16, 2, 3, 3, 3)  # (out, in, kt, kh, kw): the three kernel sides are equal

    video = np.random.default_rng(0).standard_normal((2, 2, 4, 8, 8), dtype=np.float32)
    with torch.no_grad():
        want, grid = torch_model.tokenizer(torch.from_numpy(video))
    flax_video = jnp.asarray(video.transpose(0, 2, 3, 4, 1))

    flax_model = flax_cct.CCT(**CUBIC, rngs=nnx.Rngs(0))
    load_state(flax_model, ckpt)  # the 'conv' rule: (O, I, kt, kh, kw) -> (kt, kh, kw, I, O)
    got, flax_grid = flax_model.tokenizer(flax_video)
    assert flax_grid == grid
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)

    # a rule by rank (reverse every axis of a 5-D tensor, as a 2-D weight is transposed) gives the same shape
    # for a cubic kernel, so it would load without complaint, and it silently swaps the time and width taps
    by_rank = weight.transpose()
    assert by_rank.shape == flax_model.tokenizer.convs[0].kernel[...].shape == (3, 3, 3, 2, 16)
    flax_model.tokenizer.convs[0].kernel.set_value(jnp.asarray(by_rank))
    wrong, _ = flax_model.tokenizer(flax_video)
    assert np.abs(np.asarray(wrong) - want.numpy()).max() > 1e-2
