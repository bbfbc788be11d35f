"""vit_torch.gemm: a dense layer whose products may run through oneDNN gives F.linear's numbers on every path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_torch import gemm
from vit_torch.checkpoint import module_kinds
from vit_torch.layers import FeedForward, Linear, _GeluLinear

needs_onednn = pytest.mark.skipif(not gemm.available(), reason="torch built without mkldnn")
SHAPES = [((7, 12), True), ((3, 5, 12), True), ((2, 3, 4, 12), False), ((33, 12), False)]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(gemm.ENV, raising=False)
    gemm.clear()
    yield
    gemm.clear()


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-12))


def _operands(shape: tuple[int, ...], bias: bool, out: int = 9, seed: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    w = torch.randn(out, shape[-1], generator=gen) / shape[-1] ** 0.5
    b = torch.randn(out, generator=gen) if bias else None
    return x, w, b


def _leaves(*ts: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


@pytest.mark.parametrize("mode", gemm.MODES)
@pytest.mark.parametrize(("shape", "bias"), SHAPES)
def test_forward_and_gradients_match_f_linear(
    monkeypatch: pytest.MonkeyPatch, mode: str, shape: tuple[int, ...], bias: bool
) -> None:
    monkeypatch.setenv(gemm.ENV, mode)
    monkeypatch.setattr(gemm, "MIN_FLOPS", 0)  # let auto benchmark even these small shapes
    x, w, b = _operands(shape, bias)
    with torch.no_grad():
        assert _rel(gemm.linear(x, w, b), F.linear(x, w, b)) < 1e-5
    mine, ref = _leaves(x, w, b), _leaves(x, w, b)
    seed = torch.randn(*shape[:-1], w.shape[0])
    (gemm.linear(*mine) * seed).sum().backward()
    (F.linear(*ref) * seed).sum().backward()
    for got, want in zip(mine, ref, strict=True):
        if want is not None:
            assert _rel(got.grad, want.grad) < 1e-5
    if mode == "auto":
        assert {op for op, *_ in gemm.decisions()} == set(gemm.OPS)


@needs_onednn
def test_decide_reports_the_path_of_a_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gemm.ENV, "onednn")
    assert gemm.decide("forward", 4, 8, 16) == "onednn"
    monkeypatch.setenv(gemm.ENV, "default")
    assert gemm.decide("grad_weight", 400, 800, 1600) == "default"
    monkeypatch.delenv(gemm.ENV)
    monkeypatch.setattr(gemm, "_benchmark", lambda op, m, k, n: "onednn" if op == "grad_input" else "default")
    assert [gemm.decide(op, 300, 300, 300) for op in gemm.OPS] == ["default", "onednn", "default"]
    assert gemm.decisions() == {(op, 300, 300, 300): gemm.decide(op, 300, 300, 300) for op in gemm.OPS}
    with pytest.raises(ValueError, match="op must be one of forward, grad_input, grad_weight"):
        gemm.decide("backward", 4, 8, 16)


@needs_onednn
def test_adopted_decisions_are_taken_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed training run adopts its first run's decisions, so its products take the same paths."""
    monkeypatch.delenv(gemm.ENV, raising=False)
    monkeypatch.setattr(gemm, "_benchmark", lambda op, m, k, n: pytest.fail("measured an adopted shape"))
    gemm.clear()
    gemm.adopt({("forward", 300, 300, 300): "onednn", ("grad_weight", 300, 300, 300): "default"})
    assert gemm.decide("forward", 300, 300, 300) == "onednn" and gemm.decide("grad_weight", 300, 300, 300) == "default"
    with pytest.raises(ValueError, match="not a GEMM decision"):
        gemm.adopt({("forward", 1, 2, 3): "fast"})
    gemm.clear()


@needs_onednn
def test_env_override_picks_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w, b = _leaves(*_operands((5, 12), True))
    monkeypatch.setenv(gemm.ENV, "onednn")
    gemm.linear(x, w, b).sum().backward()
    assert gemm.calls == {(op, "onednn"): 1 for op in gemm.OPS}
    gemm.calls.clear()
    monkeypatch.setenv(gemm.ENV, "default")
    gemm.linear(x, w, b).sum().backward()
    assert not any(path == "onednn" for _, path in gemm.calls)
    monkeypatch.setenv(gemm.ENV, "fast")
    with pytest.raises(ValueError, match=gemm.ENV):
        gemm.linear(x, w, b)


@needs_onednn
def test_auto_benchmarks_once_per_shape_and_follows_its_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[tuple[str, int, int, int]] = []

    def fake(op: str, m: int, k: int, n: int) -> str:
        runs.append((op, m, k, n))
        return "onednn" if op == "forward" else "default"

    monkeypatch.setattr(gemm, "_benchmark", fake)
    monkeypatch.setattr(gemm, "MIN_FLOPS", 0)
    x, w, b = _leaves(*_operands((3, 4, 12), True))
    for _ in range(2):
        gemm.linear(x, w, b).sum().backward()
    assert sorted(runs) == sorted([("forward", 12, 12, 9), ("grad_input", 12, 9, 12), ("grad_weight", 9, 12, 12)])
    assert gemm.decisions()["forward", 12, 12, 9] == "onednn"
    assert gemm.calls["forward", "onednn"] == 2 and gemm.calls["grad_weight", "default"] == 2


def test_auto_skips_small_products(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gemm, "_benchmark", lambda *a: pytest.fail("benchmarked a tiny product"))
    x, w, b = _operands((5, 12), True)
    gemm.linear(x, w, b)
    assert gemm.decisions() == {} and gemm.calls == {("forward", "default"): 1}


def test_real_benchmark_returns_a_path() -> None:
    assert gemm._benchmark("forward", 64, 64, 64) in ("onednn", "default")


@needs_onednn
def test_packed_weight_is_reused_and_invalidated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gemm.ENV, "onednn")
    torch.manual_seed(0)
    layer, x = Linear(12, 9).eval(), torch.randn(4, 12)
    with torch.no_grad():
        layer(x)
        packed = gemm._PACKED[layer.weight][1]
        layer(x)
        assert gemm._PACKED[layer.weight][1] is packed  # no repacking between calls
        layer.weight.mul_(-2.0)  # an in-place update, as an optimizer step makes
        assert _rel(layer(x), F.linear(x, layer.weight, layer.bias)) < 1e-5
        other = nn.Linear(12, 9)
        layer.load_state_dict(other.state_dict())
        assert _rel(layer(x), other(x)) < 1e-5
    with torch.inference_mode():
        assert _rel(layer(x), other(x)) < 1e-5


@needs_onednn
def test_optimizer_steps_between_cached_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gemm.ENV, "onednn")
    torch.manual_seed(0)
    layer, x = Linear(12, 9), torch.randn(4, 12)
    ref = nn.Linear(12, 9)
    ref.load_state_dict(layer.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (layer, ref)]
    for _ in range(3):
        for m, opt in zip((layer, ref), opts, strict=True):
            opt.zero_grad()
            with torch.no_grad():  # an evaluation between steps fills the cache
                m(x)
            m(x).square().sum().backward()
            opt.step()
    with torch.no_grad():
        assert _rel(layer(x), ref(x)) < 1e-5


@pytest.mark.parametrize("mode", gemm.MODES)
def test_bf16_autocast_gives_nn_linear_numbers(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv(gemm.ENV, mode)
    torch.manual_seed(0)
    layer, ref, x = Linear(12, 9), nn.Linear(12, 9), torch.randn(3, 4, 12)
    ref.load_state_dict(layer.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = layer(x), ref(x)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    got.float().sum().backward()
    want.float().sum().backward()
    assert torch.equal(layer.weight.grad, ref.weight.grad)


def test_linear_is_an_nn_linear_with_its_state_dict() -> None:
    torch.manual_seed(0)
    layer = Linear(12, 9, bias=False)
    torch.manual_seed(0)
    ref = nn.Linear(12, 9, bias=False)
    assert isinstance(layer, nn.Linear)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), ref.state_dict().values(), strict=True))
    model = nn.Sequential(Linear(4, 3), nn.Linear(3, 2))
    assert module_kinds(model) == {"0": "linear", "1": "linear"}


@pytest.mark.parametrize("mode", ["onednn", "auto"])
def test_compile_falls_back_to_f_linear(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv(gemm.ENV, mode)
    torch.manual_seed(0)
    layer, x = Linear(12, 9), torch.randn(3, 12)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    got.sum().backward()
    assert _rel(got, F.linear(x, layer.weight, layer.bias)) < 1e-5 and layer.weight.grad is not None


@pytest.mark.parametrize("mode", ["onednn", "auto"])
def test_compiled_training_through_the_fused_feedforward(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The feed-forward's GELU-linear runs its backward through gemm: compiled, it takes the default path."""
    monkeypatch.setenv(gemm.ENV, mode)
    torch.manual_seed(0)
    ff, x = FeedForward(12, 24), torch.randn(2, 5, 12)
    want = torch.autograd.grad(ff(x).square().sum(), list(ff.parameters()))
    compiled = torch.compile(ff, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x).square().sum(), list(ff.parameters()))
    assert all(_rel(g, w) < 1e-5 for g, w in zip(got, want))


@needs_onednn
def test_fallbacks_where_onednn_may_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gemm.ENV, "onednn")
    x, w, b = _operands((5, 12), True)
    assert torch.equal(gemm.linear(x.double(), w.double(), b.double()), F.linear(x.double(), w.double(), b.double()))
    nested = torch.nested.nested_tensor([x[:2], x[2:]], layout=torch.jagged)
    assert torch.equal(gemm.linear(nested, w, b).values(), F.linear(nested, w, b).values())
    grads = torch.func.grad(lambda w_: gemm.linear(x, w_, b).sum())(w)
    assert _rel(grads, torch.func.grad(lambda w_: F.linear(x, w_, b).sum())(w)) < 1e-6
    monkeypatch.setattr(gemm, "available", lambda: False)
    gemm.linear(x, w, b)
    assert gemm.calls == {}  # no oneDNN call was made on any of these


@pytest.mark.parametrize("mode", ["onednn", "default"])
def test_gelu_linear_products_through_gemm(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv(gemm.ENV, mode)
    h, w, b = _operands((2, 5, 12), True)
    mine, ref = _leaves(h, w, b), _leaves(h, w, b)
    seed = torch.randn(2, 5, 9)
    (_GeluLinear.apply(*mine) * seed).sum().backward()
    (F.linear(F.gelu(ref[0]), ref[1], ref[2]) * seed).sum().backward()
    for got, want in zip(mine, ref, strict=True):
        assert _rel(got.grad, want.grad) < 1e-5
    if mode == "onednn" and gemm.available():
        assert gemm.calls == {(op, "onednn"): 1 for op in gemm.OPS}


def test_feed_forward_keeps_its_numbers_under_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    ff, x = FeedForward(12, 24), torch.randn(2, 5, 12, requires_grad=True)
    want = ff(x)
    monkeypatch.setenv(gemm.ENV, "onednn")
    assert _rel(ff(x), want) < 1e-5
