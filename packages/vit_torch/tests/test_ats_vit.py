"""ATS-ViT: token sampling, padding and masked attention against a computation from the parameters; draws; errors."""

from __future__ import annotations

import math

import pytest
import torch

from vit_torch.ats_vit import ViT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=3, max_tokens_per_depth=(16, 8, 4), heads=4,
             mlp_dim=64, dim_head=8)  # fmt: skip
EPS = 1e-6


# --- an independent ATS-ViT, from the parameters with plain tensor ops and a Python loop per image ---------------


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def kept_by_hand(logits: list[float], real: list[bool], k: int, u: torch.Tensor | None) -> list[int]:
    """The positions one image keeps: all its real tokens when they fit the budget; else each row of the draw ``u``
    (k, n) picks the token of largest ``logit + gumbel(u)``, every picked token once; no draw: the k largest."""
    candidates = [j for j, r in enumerate(real) if r]
    if len(candidates) <= k:
        return candidates
    if u is None:
        return sorted(sorted(candidates, key=lambda j: -logits[j])[:k])
    picked = set()
    for row in u.tolist():
        g = [-math.log(-math.log(x + EPS) + EPS) for x in row]
        picked.add(max(candidates, key=lambda j: logits[j] + g[j]))
    return sorted(picked)


def ats_by_hand(model: ViT, img: torch.Tensor, noise: list | None) -> tuple[torch.Tensor, list, list[torch.Tensor]]:
    """Logits, the patch ids left (per image) and every layer's tokens (padding zero)."""
    p = dict(model.named_parameters())
    b, c, hh, ww = img.shape
    ph, pw = model.patch_size
    patches = img.reshape(b, c, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.weight"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.weight"].T + p[e + "proj.bias"], p[e + "post_norm.weight"], p[e + "post_norm.bias"])
    n = x.shape[1]
    full = [s // q for s, q in zip(model.size, model.patch_size)]
    pos = p["pos_embedding"][:, 1:].reshape(1, *full, -1)[:, : hh // ph, : ww // pw].reshape(1, n, -1)  # top-left
    x = torch.cat(((p["cls_token"] + p["pos_embedding"][:, :1]).expand(b, 1, -1), x + pos), 1)
    real = [[True] * (n + 1) for _ in range(b)]
    ids = [list(range(n)) for _ in range(b)]
    heads = model.transformer.blocks[0].attn.heads
    outputs = []
    for i, k in enumerate(model.max_tokens):
        pre = f"transformer.blocks.{i}."
        h = layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
        q, kk, v = (
            t.reshape(b, x.shape[1], heads, -1).transpose(1, 2)
            for t in (h @ p[pre + "attn.to_qkv.weight"].T).chunk(3, -1)
        )
        dots = q @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
        keys = torch.tensor(real)[:, None, None, :]
        attn = dots.masked_fill(~keys, float("-inf")).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, x.shape[1], -1) @ p[pre + "attn.to_out.weight"].T
        x = x + out + p[pre + "attn.to_out.bias"]
        if x.shape[1] - 1 > k:
            s = (attn[:, :, 0, 1:] * v[:, :, 1:].norm(dim=-1)).sum(1)
            logits = torch.log(s / (s.sum(-1, keepdim=True) + EPS) + EPS)
            rows, new_real, new_ids = [], [], []
            for j in range(b):
                u = None if noise is None or noise[i] is None else noise[i][j]
                keep = kept_by_hand(logits[j].tolist(), real[j][1:], k, u)
                pad = k - len(keep)
                rows.append(torch.cat((x[j, :1], x[j, [1 + t for t in keep]], x.new_zeros(pad, x.shape[-1]))))
                new_real.append([True] * (1 + len(keep)) + [False] * pad)
                new_ids.append([ids[j][t] for t in keep] + [-1] * pad)
            x, real, ids = torch.stack(rows), new_real, new_ids
        h = layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
        x = x + gelu(h @ p[pre + "ff.fc1.weight"].T + p[pre + "ff.fc1.bias"]) @ p[pre + "ff.fc2.weight"].T
        x = (x + p[pre + "ff.fc2.bias"]) * torch.tensor(real)[..., None]
        outputs.append(x)
    cls = layer_norm(x[:, 0], p["transformer.norm.weight"], p["transformer.norm.bias"])
    return cls @ p["mlp_head.weight"].T + p["mlp_head.bias"], ids, outputs


def forcing(shape: tuple[int, int, int], picks: list[list[int]]) -> torch.Tensor:
    """A uniform draw under which row ``r`` of image ``j`` picks the token ``picks[j][r]``, whatever the scores: its
    Gumbel number is about 16, every other one about -2.6 (the scores' logarithms span at most 14)."""
    u = torch.full(shape, 1e-7)
    for j, row in enumerate(picks):
        for r, t in enumerate(row):
            u[j, r, t] = 1.0 - 1e-7
    return u


@pytest.fixture(scope="module")
def model() -> ViT:
    torch.manual_seed(0)
    m = ViT(**SMALL)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms away from one and zero
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def img() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def _noise(model: ViT, img: torch.Tensor, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [None if s is None else torch.rand(s, generator=g) for s in model.noise_shapes(img.shape)]


@pytest.mark.parametrize("draw", ["eval", "noise-0", "noise-1"])
@torch.no_grad()
def test_matches_a_computation_from_its_parameters(model: ViT, img: torch.Tensor, draw: str) -> None:
    noise = None if draw == "eval" else _noise(model, img, int(draw[-1]))
    want, want_ids, want_blocks = ats_by_hand(model, img, noise)
    (got, got_ids), features = model(img, True, noise=noise, return_features=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_ids.tolist() == want_ids
    assert list(features) == ["block00", "block01", "block02", "pre_logits"]
    for i, block in enumerate(want_blocks):
        torch.testing.assert_close(features[f"block{i:02d}"], block, rtol=1e-5, atol=1e-5)
    assert [tuple(f.shape) for f in features.values()] == [(3, 17, 32), (3, 9, 32), (3, 5, 32), (3, 32)]


@torch.no_grad()
def test_an_image_whose_tokens_fit_the_budget_keeps_them_all(model: ViT, img: torch.Tensor) -> None:
    # layer 1 keeps one token of image 0 (all its draws pick patch 5) and eight of the others; layer 2 (budget 4)
    # keeps image 0's token and samples the others
    picks = [[5] * 8, list(range(8)), list(range(8, 16))]
    noise = [None, forcing((3, 8, 16), picks), torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(3))]
    want, want_ids, _ = ats_by_hand(model, img, noise)
    (got, ids), features = model(img, True, noise=noise, return_features=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ids.tolist() == want_ids and ids[0].tolist() == [5, -1, -1, -1]
    assert (ids[1:] >= 0).sum(1).tolist() == [len(set(r) - {-1}) for r in want_ids[1:]]
    assert set(ids[1].tolist()) - {-1} <= set(range(8)) and set(ids[2].tolist()) - {-1} <= set(range(8, 16))
    assert not features["block01"][0, 2:].any() and not features["block02"][0, 2:].any()  # padding is zero


@torch.no_grad()
def test_token_ids_are_sorted_unique_patch_ids_then_padding(model: ViT, img: torch.Tensor) -> None:
    model.train()
    try:
        for seed in range(4):
            torch.manual_seed(seed)
            _, ids = model(img, True)
            assert ids.shape == (3, 4)
            for row in ids.tolist():
                real = [t for t in row if t >= 0]
                assert real == sorted(set(real)) and row == real + [-1] * (4 - len(real)) and real
                assert all(0 <= t < 16 for t in real)
    finally:
        model.eval()


@torch.no_grad()
def test_training_draws_from_torchs_generator_and_eval_draws_nothing(model: ViT, img: torch.Tensor) -> None:
    model.train()
    try:
        torch.manual_seed(7)
        a = model(img, True)
        torch.manual_seed(7)
        b = model(img, True)
        others = []
        for seed in range(8, 12):
            torch.manual_seed(seed)
            others.append(model(img, True)[1])
    finally:
        model.eval()
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert torch.equal(a[1], b[1]) and any(not torch.equal(a[1], o) for o in others)
    state = torch.random.get_rng_state()
    first, again = model(img, True), model(img, True)
    assert torch.equal(torch.random.get_rng_state(), state), "eval mode drew random numbers"
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    # eval keeps the highest-scoring tokens: always the budget's count when there are more tokens than that
    assert (first[1] >= 0).all()


@torch.no_grad()
def test_an_explicit_draw_gives_the_same_numbers_in_either_mode(model: ViT, img: torch.Tensor) -> None:
    noise = _noise(model, img, 4)
    in_eval = model(img, True, noise=noise)
    model.train()  # no dropout in this model
    try:
        in_train = model(img, True, noise=noise)
    finally:
        model.eval()
    torch.testing.assert_close(in_train[0], in_eval[0], rtol=0, atol=0)
    assert torch.equal(in_train[1], in_eval[1])


@torch.no_grad()
def test_the_scores_read_the_attention_before_its_dropout(img: torch.Tensor) -> None:
    """In training, dropout changes the outputs but not which tokens a layer keeps for a given draw: the scores
    read the attention weights before their dropout (the reference reads them after)."""
    torch.manual_seed(0)
    m = ViT(**dict(SMALL, depth=1, max_tokens_per_depth=(8,), dropout=0.5))
    noise = [torch.rand(3, 8, 16, generator=torch.Generator().manual_seed(6))]
    m.eval()
    want_logits, want_ids = m(img, True, noise=noise)
    m.train()
    for seed in range(3):
        torch.manual_seed(seed)
        logits, ids = m(img, True, noise=noise)
        assert torch.equal(ids, want_ids) and not torch.allclose(logits, want_logits)


@torch.no_grad()
def test_the_masked_attention_gives_padding_no_weight(model: ViT, img: torch.Tensor) -> None:
    noise = [None, forcing((3, 8, 16), [[5] * 8, [1, 2] * 4, list(range(8))]), None]
    _, features = model(img, noise=noise, return_features=True, return_attn=True)
    attn = features["block02/attn"]  # (b, h, 9, 9): layer 2 reads what layer 1 left
    assert attn.shape == (3, 4, 9, 9)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 9))
    assert not attn[0, :, :, 2:].any() and not attn[1, :, :, 3:].any() and attn[2].all()


def test_gradients_reach_every_parameter_through_the_kept_tokens(model: ViT, img: torch.Tensor) -> None:
    model.zero_grad()
    model(img, noise=_noise(model, img, 5)).square().mean().backward()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    model.zero_grad()


def test_small_and_rectangular_images() -> None:
    torch.manual_seed(0)
    m = ViT(**dict(SMALL, image_size=(16, 12), max_tokens_per_depth=(6, 6, 2))).eval()
    img = torch.randn(2, 3, 8, 12)  # 6 patches: within layers 0 and 1's budgets, layer 2 keeps 2
    assert m.noise_shapes(img.shape) == (None, None, (2, 2, 6))
    (logits, ids), f = m(img, True, return_features=True)
    assert logits.shape == (2, 5) and ids.shape == (2, 2)
    assert [tuple(v.shape) for v in f.values()] == [(2, 7, 32), (2, 7, 32), (2, 3, 32), (2, 32)]
    with torch.no_grad():
        want, want_ids, _ = ats_by_hand(m, img, None)
        torch.testing.assert_close(m(img), want, rtol=1e-5, atol=1e-5)
        assert ids.tolist() == want_ids


def test_bad_arguments_and_inputs_are_named(model: ViT, img: torch.Tensor) -> None:
    bad = {
        (8, 4): r"max_tokens_per_depth must hold one token budget per layer, 3 \(depth\) entries, got 2",
        (8, 0, 0): r"max_tokens_per_depth\[1\] must be a positive int",
        (8, 4.0, 2): r"max_tokens_per_depth\[1\] must be a positive int",
        (4, 8, 2): r"must not increase from one layer to the next .* max_tokens_per_depth\[1\] = 8 > "
        r"max_tokens_per_depth\[0\] = 4",
        8: r"max_tokens_per_depth must be a tuple of 3 \(depth\) positive ints",
    }
    for budgets, message in bad.items():
        with pytest.raises(ValueError, match=message):
            ViT(**dict(SMALL, max_tokens_per_depth=budgets))
    with pytest.raises(ValueError, match="depth must be a positive int"):
        ViT(**dict(SMALL, depth=0, max_tokens_per_depth=()))
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        ViT(**dict(SMALL, image_size=18))
    assert ViT(**dict(SMALL, max_tokens_per_depth=[8, 8, 2])).config["max_tokens_per_depth"] == [8, 8, 2]
    with pytest.raises(ValueError, match="channels=3"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="height 20 is larger than the model's 16"):
        model(torch.randn(1, 3, 20, 16))
    with pytest.raises(ValueError, match="width 6 must be a positive multiple of the patch size 4"):
        model(torch.randn(1, 3, 16, 6))
    with pytest.raises(ValueError, match=r"img must be a 4-D tensor"):
        model(torch.randn(3, 16, 16))
    noise = _noise(model, img, 0)
    with pytest.raises(ValueError, match=r"noise must be a list with one entry per layer, 3 \(depth\).*got 2 entries"):
        model(img, noise=noise[:2])
    with pytest.raises(ValueError, match=r"noise must be a list .* got a Tensor"):
        model(img, noise=noise[1])
    with pytest.raises(ValueError, match=r"noise\[0\] must be None: layer 0 reads 16 patch tokens, within its budget"):
        model(img, noise=[torch.rand(3, 16, 16), *noise[1:]])
    with pytest.raises(ValueError, match=r"noise\[2\] must have shape .* = \(3, 4, 8\), got \(3, 4, 16\)"):
        model(img, noise=[None, noise[1], torch.rand(3, 4, 16)])


def test_readme_example() -> None:
    """The seed README's example with the import changed (one image instead of four, without gradients: its size
    takes seconds per call here)."""
    v = ViT(
        image_size=256,
        patch_size=16,
        num_classes=1000,
        dim=1024,
        depth=6,
        # a tuple that denotes the maximum number of tokens that any given layer should have. if the layer has
        # greater than this amount, it will undergo adaptive token sampling
        max_tokens_per_depth=(256, 128, 64, 32, 16, 8),
        heads=16,
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
    )

    img = torch.randn(1, 3, 256, 256)

    with torch.no_grad():
        preds = v(img)  # (1, 1000)

        # you can also get a list of the final sampled patch ids
        # a value of -1 denotes padding

        preds, token_ids = v(img, return_sampled_token_ids=True)  # (1, 1000), (1, <=8)
    assert preds.shape == (1, 1000) and token_ids.shape == (1, 8)
