"""vit_parity.core.features: the framework-free collector behind every model's return_features."""

from __future__ import annotations

import pytest

from vit_parity.core.features import Features, block_label


def _filled(select: object = True, attn: bool = False) -> Features:
    f = Features(select, attn)
    for prefix in ("spatial/", "temporal/"):
        for i in range(2):
            if attn:
                f.add_attn(block_label(i, prefix), f"a-{prefix}{i}")
            f.add(block_label(i, prefix), f"x-{prefix}{i}")
    f.add("pre_logits", "p")
    return f


def test_request_is_none_unless_something_is_asked() -> None:
    assert Features.request(False, False) is None
    assert Features.request(True, False).select is True
    assert Features.request(False, True).attn


def test_selection() -> None:
    assert list(_filled().result()) == [
        "spatial/block00", "spatial/block01", "temporal/block00", "temporal/block01", "pre_logits",
    ]  # fmt: skip
    assert _filled(select=[-1, 0, "pre_logits"]).result() == {
        "spatial/block00": "x-spatial/0", "temporal/block01": "x-temporal/1", "pre_logits": "p",
    }  # fmt: skip
    assert list(_filled(select=False, attn=True).result()) == [
        "spatial/block00/attn", "spatial/block01/attn", "temporal/block00/attn", "temporal/block01/attn",
    ]  # fmt: skip
    assert list(_filled(select=["temporal/block00"], attn=True).result()) == [
        "temporal/block00/attn", "temporal/block00",
    ]  # fmt: skip


def test_attention_of_a_block_that_attends_twice() -> None:
    f = Features(True, True)
    f.add_attn("block00", {"spatial": 1, "temporal": 2})
    f.add("block00", 0)
    assert f.result() == {"block00/attn/spatial": 1, "block00/attn/temporal": 2, "block00": 0}


def test_bad_requests_are_named() -> None:
    with pytest.raises(KeyError, match=r"no feature 'stage0'; this model records \['spatial/block00'"):
        _filled(select=["stage0"]).result()
    with pytest.raises(IndexError, match="block index -5 out of range: the model ran 4 blocks"):
        _filled(select=[-5]).result()
    with pytest.raises(TypeError, match=r"labels \(str\) or block indices \(int\), got 1.5"):
        Features([1.5])
    with pytest.raises(ValueError, match="feature 'pre_logits' recorded twice"):
        f = _filled()
        f.add("pre_logits", 1)
