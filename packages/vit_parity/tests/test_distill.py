"""Distillation across the backends: the students' distillation pass (both logits and every block) agrees on
converted weights, and checkpoints of a student and of a wrapper saved by torch load in flax with the same numbers."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vit_flax
import vit_torch
from vit_parity.core import spec
from vit_parity.tools.parity import build_pair, compare, strict_float32

STUDENT_CASES = [pytest.param(name, c, id=f"{name}-{c.name}") for name in ("distill", "distill_t2t")
                 for c in spec.get(name).cases]  # fmt: skip


@pytest.mark.parametrize(("name", "case"), STUDENT_CASES)
def test_the_distillation_pass_agrees_on_both_logits_and_every_block(name: str, case: spec.Case) -> None:
    arch = spec.get(name)
    torch_model, flax_model = build_pair(arch, case)
    img = case.sample("torch")[0]
    with strict_float32(), torch.no_grad():
        t_out, t_feats = torch_model(torch.from_numpy(img), distill=True, return_features=True)
        f_out, f_feats = flax_model(jnp.asarray(case.sample("flax")[0]), distill=True, return_features=True)
    assert list(t_feats) == list(f_feats) and len(t_feats) >= 2
    diffs = [compare(label, np.asarray(f), t.numpy()) for label, t, f in zip(("logits", "distill"), t_out, f_out)]
    diffs += [compare(k, np.asarray(f_feats[k]), t_feats[k].numpy()) for k in t_feats]
    assert all(d.ok for d in diffs), diffs
    # the distillation logits are not the class logits: the comparison covers the distillation head
    assert not np.allclose(t_out[0].numpy(), t_out[1].numpy(), atol=1e-3)


def test_a_student_saved_by_torch_loads_in_flax(tmp_path: Path) -> None:
    case = spec.get("distill").case("mean")
    torch.manual_seed(0)
    student = case.build("torch", spec.get("distill").load_class("torch")).eval()
    vit_torch.save(student, tmp_path / "student")
    flax_student = vit_flax.load(tmp_path / "student")
    assert type(flax_student).__name__ == "DistillableViT"
    img = case.sample("torch")[0]
    f_img = jnp.asarray(case.sample("flax")[0])
    with strict_float32(), torch.no_grad():
        want = student(torch.from_numpy(img)).numpy()
        want_pair = [t.numpy() for t in student(torch.from_numpy(img), distill=True)]
        got, got_pair = flax_student(f_img), flax_student(f_img, distill=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_pair, want_pair):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    # the plain ViT of either side gives the same logits as well
    np.testing.assert_allclose(flax_student.to_vit()(f_img), want, rtol=1e-5, atol=1e-5)


def test_a_wrapper_saved_by_torch_loads_in_flax_with_the_same_loss(tmp_path: Path) -> None:
    arch = spec.get("distill_wrapper")
    case = arch.case("soft-layernorm")
    torch.manual_seed(0)
    wrapper = case.build("torch", arch.load_class("torch")).eval()
    vit_torch.save(wrapper, tmp_path / "wrapper")
    flax_wrapper = vit_flax.load(tmp_path / "wrapper")
    assert flax_wrapper.distill_norm is not None and flax_wrapper.temperature == 3.0
    img, labels = case.sample("torch")
    f_img, f_labels = case.sample("flax")
    with strict_float32(), torch.no_grad():
        want = wrapper(torch.from_numpy(img), torch.from_numpy(labels)).item()
        got = float(flax_wrapper(jnp.asarray(f_img), jnp.asarray(f_labels)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    vit_flax.save(flax_wrapper, tmp_path / "back")
    again = vit_torch.load(tmp_path / "back")
    for k, v in wrapper.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
