"""The video family across backends: Conv3d conversion by module type, and 2D-to-3D inflation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import vit_torch
from vit_flax import cct_3d as flax_cct
from vit_flax.checkpoint import load_state
from vit_parity.core import spec
from vit_parity.core.checkpoint import Checkpoint
from vit_parity.tools.inflate import METHODS, inflate, resize_grid
from vit_torch import cct_3d as torch_cct
from vit_torch.checkpoint import load_state as torch_load_state
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


# ---- inflation -------------------------------------------------------------------------------------------

SMALL_2D = dict(image_size=16, patch_size=8, num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64, dim_head=16)


def vit_2d(arch: str = "vit", **overrides: object) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    cls = vit_torch.ViT if arch == "vit" else vit_torch.SimpleViT
    cfg = {k: v for k, v in dict(SMALL_2D, **overrides).items() if arch == "vit" or k not in ("pool",)}
    model = cls(**cfg).eval()
    return model, to_checkpoint(model)


def both_backends(ckpt: Checkpoint) -> tuple[torch.nn.Module, nnx.Module]:
    """The inflated checkpoint loaded into each backend (every key and shape checked on load)."""
    arch = spec.get(ckpt.arch)
    torch_model = torch_load_state(arch.load_class("torch")(**ckpt.config), ckpt).eval()
    flax_model = load_state(arch.load_class("flax")(**ckpt.config, rngs=nnx.Rngs(1)), ckpt)
    flax_model.eval()
    return torch_model, flax_model


def identical_frames(frame: np.ndarray, t: int) -> np.ndarray:
    return np.repeat(frame[:, :, None], t, axis=2)  # (b, c, h, w) -> (b, c, t, h, w)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("src_arch", ["vit", "simple_vit"])
def test_identical_frames_give_the_2d_patch_embeddings(method: str, src_arch: str) -> None:
    model_2d, ckpt = vit_2d(src_arch)
    target = "vit_3d" if src_arch == "vit" else "simple_vit_3d"
    inflated = inflate(ckpt, target, frames=6, frame_patch_size=3, method=method)
    assert inflated.config["image_patch_size"] == 8 and inflated.extra["method"] == method
    torch_3d, flax_3d = both_backends(inflated)
    frame = np.random.default_rng(1).standard_normal((2, 3, 16, 16), dtype=np.float32)
    clip = identical_frames(frame, 6)
    with torch.no_grad():
        want, grid2 = model_2d.to_patch_embedding(torch.from_numpy(frame))  # (2, 4, 32)
        got, grid3 = torch_3d.to_patch_embedding(torch.from_numpy(clip))  # (2, 2 * 4, 32)
    assert grid3 == (2, *grid2)
    torch.testing.assert_close(got, want.repeat(1, 2, 1), rtol=1e-5, atol=1e-5)
    flax_got, _ = flax_3d.to_patch_embedding(jnp.asarray(clip.transpose(0, 2, 3, 4, 1)))
    np.testing.assert_allclose(flax_got, want.repeat(1, 2, 1).numpy(), rtol=1e-5, atol=1e-5)
    if src_arch == "vit":  # positions are repeated over time, the class token and its position kept
        pos2, pos3 = model_2d.pos_embedding.detach(), torch_3d.pos_embedding.detach()
        torch.testing.assert_close(pos3[:, 1:], pos2[:, 1:].repeat(1, 2, 1), rtol=0, atol=0)
        torch.testing.assert_close(pos3[:, :1], pos2[:, :1], rtol=0, atol=0)
    for name, p in model_2d.transformer.state_dict().items():
        assert torch.equal(torch_3d.transformer.state_dict()[name], p), name


def test_average_and_central_kernels() -> None:
    _, ckpt = vit_2d()
    w2 = ckpt.tensors["to_patch_embedding.proj.weight"]  # (32, 8 * 8 * 3)
    avg = inflate(ckpt, "vit_3d", frames=4, frame_patch_size=4).tensors["to_patch_embedding.proj.weight"]
    central = inflate(ckpt, "vit_3d", frames=4, frame_patch_size=4, method="central")
    c = central.tensors["to_patch_embedding.proj.weight"].reshape(32, 4, -1)  # features flatten as (pt, ph, pw, c)
    np.testing.assert_allclose(avg.reshape(32, 4, -1), np.stack([w2 / 4] * 4, axis=1), rtol=1e-7)
    np.testing.assert_array_equal(c[:, 2], w2)  # central slot pt // 2
    assert not c[:, [0, 1, 3]].any()
    ln = central.tensors["to_patch_embedding.pre_norm.weight"]
    np.testing.assert_array_equal(ln, np.tile(ckpt.tensors["to_patch_embedding.pre_norm.weight"], 4))


def test_central_is_the_central_frame_only_for_one_frame_tubelets() -> None:
    model_2d, ckpt = vit_2d()
    clip = np.random.default_rng(2).standard_normal((1, 3, 3, 16, 16), dtype=np.float32)  # frames differ
    with torch.no_grad():
        want = torch.stack([model_2d.to_patch_embedding(torch.from_numpy(clip[:, :, i]))[0] for i in range(3)], 1)
        per_frame, _ = both_backends(inflate(ckpt, "vit_3d", frames=3, frame_patch_size=1, method="central"))
        got, _ = per_frame.to_patch_embedding(torch.from_numpy(clip))
        torch.testing.assert_close(got, want.flatten(1, 2), rtol=1e-5, atol=1e-5)
        tubelet, _ = both_backends(inflate(ckpt, "vit_3d", frames=3, frame_patch_size=3, method="central"))
        got, _ = tubelet.to_patch_embedding(torch.from_numpy(clip))
        # the central frame's kernel alone, but the tubelet LayerNorm saw all three frames
        assert (got - want[:, 1]).abs().max() > 1e-2


def test_vivit_factorized_self_attention_starts_as_the_2d_model() -> None:
    model_2d, ckpt = vit_2d()
    inflated = inflate(ckpt, "vivit", frames=4, frame_patch_size=2, variant="factorized_self_attention")
    assert inflated.config["spatial_depth"] == inflated.config["temporal_depth"] == 2
    torch_3d, flax_3d = both_backends(inflated)
    frame = np.random.default_rng(3).standard_normal((2, 3, 16, 16), dtype=np.float32)
    clip = identical_frames(frame, 4)
    with torch.no_grad():
        want = model_2d(torch.from_numpy(frame)).numpy()
        torch.testing.assert_close(torch_3d(torch.from_numpy(clip)).numpy(), want, rtol=1e-5, atol=1e-5)
    flax_out = nnx.jit(lambda m, x: m(x))(flax_3d, jnp.asarray(clip.transpose(0, 2, 3, 4, 1)))
    np.testing.assert_allclose(flax_out, want, rtol=1e-5, atol=1e-5)
    # the temporal attention is live: its zero projection gets a gradient on frames that differ
    other = np.random.default_rng(4).standard_normal((2, 3, 4, 16, 16), dtype=np.float32)
    torch_3d(torch.from_numpy(other)).square().sum().backward()
    assert torch_3d.factorized_transformer.blocks[0].temporal_attn.to_out.weight.grad.abs().sum() > 0


def test_vivit_factorized_encoder_spatial_stage_is_the_2d_transformer() -> None:
    model_2d, ckpt = vit_2d(image_size=(16, 24))
    inflated = inflate(ckpt, "vivit", frames=4, frame_patch_size=2, temporal_depth=1, seed=3)
    torch_3d, _ = both_backends(inflated)
    frame = np.random.default_rng(5).standard_normal((2, 3, 16, 24), dtype=np.float32)
    with torch.no_grad():
        _, want = model_2d(torch.from_numpy(frame), return_features=True)
        _, got = torch_3d(torch.from_numpy(identical_frames(frame, 4)), return_features=True)
    assert list(got) == ["spatial/block00", "spatial/block01", "temporal/block00", "pre_logits"]
    for i in range(2):  # the spatial blocks run on b * frame groups
        got_i, want_i = got[f"spatial/block{i:02d}"], want[f"block{i:02d}"]
        torch.testing.assert_close(got_i, want_i.repeat_interleave(2, dim=0), rtol=1e-5, atol=1e-5)
    again = inflate(ckpt, "vivit", frames=4, frame_patch_size=2, temporal_depth=1, seed=3)
    for k, v in inflated.tensors.items():  # seeded: the same fresh temporal layers
        np.testing.assert_array_equal(again.tensors[k], v)


def test_positions_are_resized_bilinearly_for_another_image_size() -> None:
    model_2d, ckpt = vit_2d(image_size=(16, 24))  # grid (2, 3)
    inflated = inflate(ckpt, "vit_3d", frames=4, frame_patch_size=2, image_size=(32, 40))  # grid (4, 5)
    pos2 = model_2d.pos_embedding.detach()[:, 1:].reshape(1, 2, 3, 32).permute(0, 3, 1, 2)
    want = F.interpolate(pos2, size=(4, 5), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    pos3 = inflated.tensors["pos_embedding"][0, 1:].reshape(2, 4, 5, 32)
    for t in range(2):
        np.testing.assert_allclose(pos3[t], want.numpy(), rtol=1e-5, atol=1e-6)
    both_backends(inflated)  # loads: shapes fit the new grid
    np.testing.assert_array_equal(resize_grid(pos3[0], (4, 5)), pos3[0])  # same size: exact copy


def test_flax_layout_source_gives_the_same_checkpoint() -> None:
    _, ckpt = vit_2d()
    from_torch = inflate(ckpt, "vivit", frames=4, frame_patch_size=2)
    from_flax = inflate(ckpt.to_layout("flax"), "vivit", frames=4, frame_patch_size=2)
    assert from_flax.layout == "flax"
    back = from_flax.to_layout("torch")
    assert back.tensors.keys() == from_torch.tensors.keys()
    for k, v in from_torch.tensors.items():
        np.testing.assert_array_equal(back.tensors[k], v)


def test_new_head_when_the_class_count_changes() -> None:
    _, ckpt = vit_2d()
    inflated = inflate(ckpt, "vit_3d", frames=2, frame_patch_size=2, num_classes=7, pool="mean")
    assert inflated.tensors["mlp_head.weight"].shape == (7, 32) and not inflated.tensors["mlp_head.weight"].any()
    assert inflated.config["pool"] == "mean"
    both_backends(inflated)


def test_bad_arguments_fail_clearly() -> None:
    _, ckpt = vit_2d()
    with pytest.raises(
        ValueError, match=r"a 'vit' checkpoint inflates into \['vit_3d', 'vivit'\], not 'simple_vit_3d'"
    ):
        inflate(ckpt, "simple_vit_3d", frames=4, frame_patch_size=2)
    with pytest.raises(ValueError, match="method must be one of"):
        inflate(ckpt, "vit_3d", frames=4, frame_patch_size=2, method="mean")
    with pytest.raises(ValueError, match="frames 5 must be divisible by frame_patch_size 2"):
        inflate(ckpt, "vit_3d", frames=5, frame_patch_size=2)
    with pytest.raises(ValueError, match="dim=64 differs from the source checkpoint's 32"):
        inflate(ckpt, "vit_3d", frames=4, frame_patch_size=2, dim=64)
    with pytest.raises(ValueError, match=r"image_patch_size=\(4, 4\) differs from the source checkpoint's \(8, 8\)"):
        inflate(ckpt, "vit_3d", frames=4, frame_patch_size=2, image_patch_size=4)
    with pytest.raises(ValueError, match="depth=3 differs from the source checkpoint's depth 2"):
        inflate(ckpt, "vit_3d", frames=4, frame_patch_size=2, depth=3)
    with pytest.raises(ValueError, match="spatial_depth and temporal_depth must be equal, got 2 and 1"):
        inflate(ckpt, "vivit", frames=4, frame_patch_size=2, variant="factorized_self_attention", temporal_depth=1)
    with pytest.raises(ValueError, match=r"unknown vit_3d argument\(s\) \['patch_size'\]"):
        inflate(ckpt, "vit_3d", frames=4, frame_patch_size=2, patch_size=8)
    with pytest.raises(ValueError, match=r"image_size \(20, 20\) must be divisible by image_patch_size \(8, 8\)"):
        inflate(ckpt, "vit_3d", frames=4, frame_patch_size=2, image_size=20)
    cct = to_checkpoint(torch_cct.CCT(**CUBIC))
    with pytest.raises(ValueError, match=r"can only inflate \['simple_vit', 'vit'\] checkpoints, got a 'cct_3d'"):
        inflate(cct, "vit_3d", frames=4, frame_patch_size=2)
