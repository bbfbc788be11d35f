"""CaiT's layer dropout across backends: an explicit draw gives the same numbers in training; torch's own draws vary."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from vit_parity.core import spec
from vit_parity.tools.parity import build_pair, compare, strict_float32

CONFIG = dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=3, cls_depth=2, heads=4, mlp_dim=64,
              dim_head=8, layer_dropout=0.5)  # fmt: skip
CASE = spec.Case("train-layer-dropout", CONFIG, (spec.image(h=16, w=16),), ("b", 10))


def test_an_explicit_draw_gives_the_same_numbers_in_training_in_both_backends() -> None:
    torch_model, flax_model = build_pair(spec.get("cait"), CASE)
    torch_model.train()
    flax_model.train()
    t_img, f_img = CASE.sample("torch", 0)[0], CASE.sample("flax", 0)[0]
    for keep in ([True, False, True, False, True], [False, False, True, True, False]):
        with strict_float32(), torch.no_grad():
            t_out, t_feats = torch_model(torch.from_numpy(t_img), keep_layers=keep, return_features=True)
            f_out, f_feats = flax_model(jnp.asarray(f_img), keep_layers=jnp.asarray(keep), return_features=True)
        assert list(t_feats) == list(f_feats) == [
            "block00", "block01", "block02", "cls/block00", "cls/block01", "pre_logits"
        ]  # fmt: skip
        t_feats = {k: v.detach().numpy() for k, v in t_feats.items()}
        diffs = [compare("logits", np.asarray(f_out), t_out.numpy())]
        diffs += [compare(k, np.asarray(f_feats[k]), t_feats[k]) for k in t_feats]
        assert all(d.ok for d in diffs), [d for d in diffs if not d.ok]
        # the dropped blocks did drop (a dropped block passes its input on), the kept ones ran
        for i, label in enumerate(["block00", "block01", "block02"][1:], start=1):
            previous = t_feats[f"block{i - 1:02d}"]
            assert np.array_equal(t_feats[label], previous) == (not keep[i]), label


def test_without_an_explicit_draw_torch_draws_anew_each_call() -> None:
    torch_model, _ = build_pair(spec.get("cait"), CASE)
    torch_model.train()
    img = torch.from_numpy(CASE.sample("torch", 0)[0])
    with torch.no_grad():
        outs = [torch_model(img) for _ in range(6)]
        torch_model.eval()
        every = torch_model(img)
        everything_kept = torch_model(img, keep_layers=[True] * 5)
    assert any(not torch.equal(outs[0], o) for o in outs[1:]), "the draws differ between calls"
    assert torch.equal(every, everything_kept), "eval runs every block"
