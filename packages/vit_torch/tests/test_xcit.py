"""XCiT: cross-covariance attention, local patch interaction, BatchNorm, depthwise convolution, class attention and
layer dropout against computations from the parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vit_parity.core.facts import xcit as xcit_facts
from vit_torch.attention_variants import CrossCovarianceAttention
from vit_torch.convolution import BatchNorm, DepthwiseConv
from vit_torch.init import init_weights
from vit_torch.xcit import XCiT

SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=16, heads=2, mlp_dim=32, dim_head=8)


# --- an independent XCiT, from the parameters with plain tensor ops ---------------------------------------------


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def depthwise(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """``(n, c, h, w)`` maps, one ``(k, k)`` kernel per channel (``w`` is ``(c, 1, k, k)``): a sum of shifted,
    zero-padded copies."""
    k = w.shape[-1]
    pad = k // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    h_out = (x.shape[2] + 2 * pad - k) // stride + 1
    w_out = (x.shape[3] + 2 * pad - k) // stride + 1
    out = torch.zeros(x.shape[0], x.shape[1], h_out, w_out)
    for i in range(k):
        for j in range(k):
            window = xp[:, :, i : i + stride * (h_out - 1) + 1 : stride, j : j + stride * (w_out - 1) + 1 : stride]
            out = out + window * w[:, 0, i, j][None, :, None, None]
    return out + b[None, :, None, None]


def xca(x: torch.Tensor, p: dict, pre: str, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-covariance attention of ``(b, n, dim)`` tokens: maps ``(b, h, d, d)`` over the feature axis."""
    w = p[pre + "to_qkv.weight"]
    inner = w.shape[0] // 3
    b, n, _ = x.shape
    q, k, v = ((x @ w[i * inner : (i + 1) * inner].T).reshape(b, n, heads, -1).permute(0, 2, 3, 1) for i in range(3))
    q = q / torch.sqrt((q**2).sum(-1, keepdim=True))
    k = k / torch.sqrt((k**2).sum(-1, keepdim=True))
    logits = torch.einsum("bhin,bhjn->bhij", q, k) * torch.exp(p[pre + "temperature"])
    probs = torch.exp(logits - logits.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    out = torch.einsum("bhij,bhjn->bhin", probs, v).permute(0, 3, 1, 2).reshape(b, n, -1)
    return out @ p[pre + "to_out.weight"].T + p[pre + "to_out.bias"], probs


def class_attention(cls: torch.Tensor, patches: torch.Tensor, p: dict, pre: str, heads: int) -> torch.Tensor:
    w = p[pre + "to_qkv.weight"]
    inner = w.shape[0] // 3
    ctx = torch.cat((cls, patches), 1)
    b, m = cls.shape[0], ctx.shape[1]
    q = (cls @ w[:inner].T).reshape(b, 1, heads, -1).transpose(1, 2)
    k = (ctx @ w[inner : 2 * inner].T).reshape(b, m, heads, -1).transpose(1, 2)
    v = (ctx @ w[2 * inner :].T).reshape(b, m, heads, -1).transpose(1, 2)
    probs = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b, 1, -1)
    return out @ p[pre + "to_out.weight"].T + p[pre + "to_out.bias"]


def mlp(x: torch.Tensor, p: dict, pre: str) -> torch.Tensor:
    h = gelu(x @ p[pre + "fc1.weight"].T + p[pre + "fc1.bias"])
    return h @ p[pre + "fc2.weight"].T + p[pre + "fc2.bias"]


def xca_block(x: torch.Tensor, grid: tuple[int, int], p: dict, pre: str, heads: int) -> torch.Tensor:
    """One XCA layer in eval mode: attention, local patch interaction (BatchNorm's running statistics), MLP."""
    x = x + p[pre + "ls1.gamma"] * xca(layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"]), p,
                                       pre + "attn.", heads)[0]  # fmt: skip
    b, n, d = x.shape
    h = layer_norm(x, p[pre + "norm_lpi.weight"], p[pre + "norm_lpi.bias"]).transpose(1, 2).reshape(b, d, *grid)
    h = depthwise(h, p[pre + "lpi.conv1.weight"], p[pre + "lpi.conv1.bias"])
    mean, var = p[pre + "lpi.bn.running_mean"], p[pre + "lpi.bn.running_var"]
    h = (h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    h = gelu(h * p[pre + "lpi.bn.weight"][:, None, None] + p[pre + "lpi.bn.bias"][:, None, None])
    h = depthwise(h, p[pre + "lpi.conv2.weight"], p[pre + "lpi.conv2.bias"])
    x = x + p[pre + "ls_lpi.gamma"] * h.reshape(b, d, n).transpose(1, 2)
    return x + p[pre + "ls2.gamma"] * mlp(layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"]), p, pre + "ff.")


def cls_block(cls: torch.Tensor, patches: torch.Tensor, p: dict, pre: str, heads: int) -> torch.Tensor:
    h = layer_norm(cls, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
    cls = cls + p[pre + "ls1.gamma"] * class_attention(h, patches, p, pre + "attn.", heads)
    h = layer_norm(cls, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
    return cls + p[pre + "ls2.gamma"] * mlp(h, p, pre + "ff.")


def xcit_by_hand(model: XCiT, img: torch.Tensor, keep: list[bool], heads: int) -> torch.Tensor:
    p = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    b, c, hh, ww = img.shape
    ph, pw = model.patch_size
    grid = (hh // ph, ww // pw)
    patches = img.reshape(b, c, grid[0], ph, grid[1], pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * c)
    e = "to_patch_embedding."
    x = layer_norm(patches, p[e + "pre_norm.weight"], p[e + "pre_norm.bias"])
    x = layer_norm(x @ p[e + "proj.weight"].T + p[e + "proj.bias"], p[e + "post_norm.weight"], p[e + "post_norm.bias"])
    full = model.grid
    x = x + p["pos_embedding"].reshape(full[0], full[1], -1)[: grid[0], : grid[1]].reshape(1, -1, x.shape[-1])
    depth, cls_depth = model.depths
    for i in range(depth):
        if keep[i]:
            x = xca_block(x, grid, p, f"patch_transformer.blocks.{i}.", heads)
    x = layer_norm(x, p["patch_transformer.norm.weight"], p["patch_transformer.norm.bias"])
    cls = p["cls_token"].expand(b, 1, -1)
    for j in range(cls_depth):
        if keep[depth + j]:
            cls = cls_block(cls, x, p, f"cls_transformer.blocks.{j}.", heads)
    return layer_norm(cls[:, 0], p["norm.weight"], p["norm.bias"]) @ p["mlp_head.weight"].T + p["mlp_head.bias"]


@torch.no_grad()
def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Layer scales, temperatures, BatchNorm affine parameters and running statistics moved from their start, so
    that all count."""
    g = torch.Generator().manual_seed(seed)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name.endswith(("gamma", "temperature", "bn.weight", "running_var")):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif name.endswith(("bn.bias", "running_mean")):
            t.copy_(0.3 * torch.randn(t.shape, generator=g))
    return model


# --- the model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "kernel", "size"),
    [([True] * 4, 3, (16, 16)), ([False, True, True, False], 5, (16, 16)), ([True, False, False, True], 1, (8, 12))],
)
@torch.no_grad()
def test_xcit_matches_a_computation_from_its_parameters(keep: list[bool], kernel: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = _perturbed(XCiT(depth=2, cls_depth=2, local_patch_kernel_size=kernel, **SMALL)).eval()
    img = torch.randn(2, 3, *size)
    want = xcit_by_hand(model, img, keep, heads=2)
    got = model(img, keep_layers=keep) if not all(keep) else model(img)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_features_and_attention_maps() -> None:
    torch.manual_seed(0)
    model = XCiT(depth=2, cls_depth=1, **SMALL).eval()
    with torch.no_grad():
        out, f = model(torch.randn(2, 3, 16, 16), return_attn=True)
    assert out.shape == (2, 5)
    assert list(f) == ["block00/attn", "block01/attn", "cls/block00/attn"]
    assert f["block00/attn"].shape == (2, 2, 8, 8)  # over the features of each head
    assert f["cls/block00/attn"].shape == (2, 2, 1, 17)  # the class token over itself and 16 patches
    with torch.no_grad():
        _, every = model(torch.randn(2, 3, 16, 16), return_features=True)
    assert list(every) == ["block00", "block01", "cls/block00", "pre_logits"]


@torch.no_grad()
def test_smaller_input_uses_the_top_left_positions() -> None:
    torch.manual_seed(0)
    model = XCiT(depth=1, cls_depth=1, **SMALL).eval()
    img = torch.randn(1, 3, 8, 12)
    _, f = model(img, return_features=["block00"])
    tokens, grid = model.to_patch_embedding(img)
    assert grid == (2, 3)
    pos = model.pos_embedding.reshape(1, 4, 4, -1)[:, :2, :3].reshape(1, 6, -1)
    torch.testing.assert_close(f["block00"], model.patch_transformer.blocks[0](tokens + pos, grid=grid))


def test_layer_scale_and_temperature_starts() -> None:
    a = init_weights(XCiT(depth=2, cls_depth=1, **SMALL), seed=3)
    gammas = [(n, p) for n, p in a.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 3 * 2 + 2 * 1  # three branches per XCA block, two per class block
    assert all(torch.all(p == 0.1) for _, p in gammas)
    temps = [p for n, p in a.named_parameters() if n.endswith("temperature")]
    assert len(temps) == 2 and all(t.shape == (2, 1, 1) and torch.all(t == 1) for t in temps)
    assert all(torch.all(t == 1) for n, t in XCiT(depth=1, cls_depth=1, **SMALL).named_parameters()
               if n.endswith("temperature"))  # fmt: skip
    assert xcit_facts.layer_scale_init(18) == 0.1 and xcit_facts.layer_scale_init(24) == 1e-5
    assert xcit_facts.layer_scale_init(25) == 1e-6


# --- layer dropout -------------------------------------------------------------------------------------------


def test_a_dropped_block_passes_its_input_keeps_its_statistics_and_gets_no_gradient() -> None:
    torch.manual_seed(0)
    model = XCiT(depth=2, cls_depth=2, layer_dropout=0.5, **SMALL).train()
    img = torch.randn(2, 3, 16, 16)
    keep = [True, False, False, True]
    out, f = model(img, keep_layers=torch.tensor(keep), return_features=True, return_attn=True)
    torch.testing.assert_close(f["block01"], f["block00"], rtol=0, atol=0)
    assert f["block01/attn"].shape == (2, 2, 8, 8) and not f["block01/attn"].any()
    assert f["cls/block00/attn"].shape == (2, 2, 1, 17) and not f["cls/block00/attn"].any()
    bn0, bn1 = (model.patch_transformer.blocks[i].lpi.bn for i in range(2))
    assert int(bn0.num_batches_tracked) == 1 and not torch.all(bn0.running_var == 1)
    assert int(bn1.num_batches_tracked) == 0 and torch.all(bn1.running_var == 1) and torch.all(bn1.running_mean == 0)
    out.sum().backward()
    for name, p in model.named_parameters():
        dropped = name.startswith(("patch_transformer.blocks.1.", "cls_transformer.blocks.0."))
        assert (p.grad is None) == dropped, name


def test_layer_dropout_draws_in_training_only() -> None:
    model = XCiT(depth=3, cls_depth=2, layer_dropout=0.5, **SMALL)
    img = torch.randn(1, 3, 16, 16)
    model.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(img), model(img, keep_layers=[True] * 5)
    assert torch.equal(torch.get_rng_state(), state), "eval draws nothing"
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.train()
    outs = []
    for seed in range(6):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(model(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))))
    assert any(not torch.equal(outs[0], o) for o in outs[1:]), "the draw differs between calls"


# --- the shared pieces -----------------------------------------------------------------------------------------


@torch.no_grad()
def test_cross_covariance_attention_by_hand() -> None:
    torch.manual_seed(0)
    attn = _perturbed(CrossCovarianceAttention(16, heads=3, dim_head=8)).eval()
    p = {f"a.{k}": v for k, v in attn.named_parameters()}
    x = torch.randn(2, 7, 16)
    out, probs = attn(x, return_attn=True)
    want, want_probs = xca(x, p, "a.", 3)
    assert out.shape == (2, 7, 16) and probs.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, want_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 8))
    torch.testing.assert_close(attn(x), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="CrossCovarianceAttention takes no mask"):
        attn(x, torch.ones(2, 1, 7, 7, dtype=torch.bool))
    # the temperature multiplies the logits by its exponential: at -inf the maps are uniform
    attn.temperature.fill_(-1e4)
    _, flat = attn(x, return_attn=True)
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / 8))


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (5, 1), (1, 1), (3, 2)])
@torch.no_grad()
def test_depthwise_conv_by_hand(kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    conv = DepthwiseConv(6, kernel, stride=stride)
    assert conv.weight.shape == (6, 1, kernel, kernel) and conv.bias.shape == (6,)
    x = torch.randn(2, 6, 5, 7)
    out = conv(x)
    if stride == 1:
        assert out.shape == x.shape  # an odd kernel keeps the map's size
    torch.testing.assert_close(out, depthwise(x, conv.weight, conv.bias, stride), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_batchnorm_updates_as_torch_and_normalizes_by_its_mode() -> None:
    torch.manual_seed(0)
    bn = BatchNorm(4, momentum=0.3, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(4) + 0.5)
        bn.bias.copy_(torch.randn(4))
    x = 2 + 3 * torch.randn(3, 4, 5, 2)
    n = 3 * 5 * 2
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    y = bn.train()(x)
    norm = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-3)
    torch.testing.assert_close(y, norm * bn.weight[:, None, None] + bn.bias[:, None, None], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.3 * mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var, 0.7 + 0.3 * var * n / (n - 1), rtol=1e-6, atol=1e-6)
    y = bn.eval()(x)
    norm = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-3)
    torch.testing.assert_close(y, norm * bn.weight[:, None, None] + bn.bias[:, None, None], rtol=1e-5, atol=1e-5)
    for bad in (1.5, -0.1, None, True):
        with pytest.raises(ValueError, match="BatchNorm momentum must be a number in"):
            BatchNorm(4, momentum=bad)


# --- arguments, inputs, the seed example -------------------------------------------------------------------------


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"cls_depth .* must be an int >= 1"):
        XCiT(depth=1, cls_depth=0, **SMALL)
    with pytest.raises(ValueError, match=r"depth \(cross-covariance blocks\) must be an int >= 0"):
        XCiT(depth=-1, cls_depth=1, **SMALL)
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"layer_dropout must be a probability in \[0, 1\)"):
            XCiT(depth=1, cls_depth=1, layer_dropout=rate, **SMALL)
    for k in (0, 2, 4, -3, 3.0, True):
        with pytest.raises(ValueError, match=r"local_patch_kernel_size must be an odd int >= 1"):
            XCiT(depth=1, cls_depth=1, local_patch_kernel_size=k, **SMALL)
    with pytest.raises(ValueError, match=r"image_size .* divisible by patch_size"):
        XCiT(depth=1, cls_depth=1, **dict(SMALL, image_size=18))
    model = XCiT(depth=1, cls_depth=1, **SMALL)
    with pytest.raises(ValueError, match="channels=3"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="height 20 is larger than the model's 16"):
        model(torch.randn(1, 3, 20, 16))
    with pytest.raises(ValueError, match="width 6 must be a positive multiple of the patch size 4"):
        model(torch.randn(1, 3, 16, 6))
    with pytest.raises(ValueError, match=r"keep_layers must hold one boolean per block, shape \(2,\)"):
        model(torch.randn(1, 3, 16, 16), keep_layers=[True, True, False])
    gray = XCiT(depth=1, cls_depth=1, channels=1, **SMALL).eval()
    assert gray(torch.randn(2, 1, 16, 16)).shape == (2, 5)


def test_readme_example() -> None:
    v = XCiT(
        image_size=256,
        patch_size=32,
        num_classes=1000,
        dim=1024,
        depth=12,  # depth of xcit transformer
        cls_depth=2,  # depth of cross attention of CLS tokens to patch, attention pool at end
        heads=16,
        mlp_dim=2048,
        dropout=0.1,
        emb_dropout=0.1,
        layer_dropout=0.05,  # randomly dropout 5% of the layers
        local_patch_kernel_size=3,  # kernel size of the local patch interaction module (depthwise convs)
    )
    img = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        preds = v(img)  # (1, 1000)
    assert preds.shape == (1, 1000)
