"""Fast paths users reach for: torch.compile (inductor) and bf16 autocast give the eager fp32 numbers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_torch import SimpleViT, ViT
from vit_torch.layers import FeedForward, _GeluLinear
from vit_torch.vivit import ViT as ViViT

TINY = dict(num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8)


def _build(cls: type, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    if cls.__module__.endswith("vivit"):
        dims = {k: v for k, v in TINY.items() if k != "depth"}
        model = cls(
            image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, spatial_depth=1, temporal_depth=1, **dims
        )
        x = torch.randn(2, 3, 4, 16, 16)
    else:
        model = cls(image_size=16, patch_size=8, **TINY)
        x = torch.randn(2, 3, 16, 16)
    return model.eval(), x


COMPILED = [ViT, SimpleViT, ViViT]


@pytest.mark.parametrize("cls", COMPILED, ids=lambda c: f"{c.__module__.rsplit('.', 1)[-1]}")
def test_torch_compile_matches_eager(cls: type) -> None:
    model, x = _build(cls)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break would fail here
    other = torch.randn_like(x)
    with torch.no_grad():
        want = model(x)
        got = compiled(x)
        again = compiled(other)  # same shapes: served by the same graph, still correct
        want_again = model(other)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want_again, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want, want_again)


@pytest.mark.parametrize("cls", [ViT, SimpleViT])
def test_bf16_autocast_agrees_with_fp32(cls: type) -> None:
    torch.manual_seed(0)
    model = cls(image_size=32, patch_size=8, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128, dim_head=16).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16  # the matmuls really ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    got = got.float()
    rel = (got - want).norm() / want.norm()
    assert 0 < rel < 2e-2, rel
    torch.testing.assert_close(got.argmax(-1), want.argmax(-1))


def test_bf16_autocast_training_step_runs() -> None:
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=8, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128, dim_head=16)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    grads = []
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    rel = (grads[1] - grads[0]).norm() / grads[0].norm()
    assert rel < 5e-2, rel


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Runs ``fn`` and returns its output and the bytes autograd keeps for the backward pass."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_feed_forward_keeps_one_hidden_activation_and_gives_autograds_gradients() -> None:
    torch.manual_seed(0)
    ff = FeedForward(16, 64)
    x = torch.randn(3, 5, 16, requires_grad=True)

    def plain() -> torch.Tensor:  # the same MLP written with autograd's own ops
        return ff.fc2(F.gelu(ff.fc1(x)))

    want, plain_bytes = _saved_bytes(plain)
    got, fast_bytes = _saved_bytes(lambda: ff(x))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    hidden = 3 * 5 * 64 * 4
    assert plain_bytes - fast_bytes >= hidden, (plain_bytes, fast_bytes)
    g = torch.randn_like(want)
    params = [x, *ff.parameters()]
    want_grads = torch.autograd.grad(want, params, g)
    got_grads = torch.autograd.grad(got, params, g)
    for name, a, b in zip(["x", *dict(ff.named_parameters())], got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    h, w, b = (torch.randn(*s, dtype=torch.double, requires_grad=True) for s in ((2, 3, 8), (4, 8), (4,)))
    assert torch.autograd.gradcheck(_GeluLinear.apply, (h, w, b))
    assert torch.autograd.gradcheck(_GeluLinear.apply, (h, w, None))


def test_feed_forward_with_dropout_in_training_keeps_the_plain_path() -> None:
    torch.manual_seed(0)
    ff = FeedForward(16, 64, dropout=0.5).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    torch.manual_seed(1)
    out = ff(x)
    torch.manual_seed(1)
    h = ff.fc1(x)
    want = F.dropout(ff.fc2(F.dropout(F.gelu(h), 0.5)), 0.5)
    torch.testing.assert_close(out, want)
