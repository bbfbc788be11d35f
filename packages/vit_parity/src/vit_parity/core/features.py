"""Labelled features of one forward pass, returned by the model rather than stored on it.

Every model of both backends takes ``return_features`` and ``return_attn`` and then returns
``(logits, features)``, ``features`` a dict from label to array:

- ``block00``, ``block01``, ... each transformer block's output (``spatial/block00``,
  ``temporal/block00`` where a model has several stacks), in the order the blocks run;
- ``stage0``, ``stage1``, ... the output map of each stage of a hierarchical model;
- ``pre_logits``: what the classifier head reads;
- ``block00/attn``: the block's attention weights ``(b, heads, n_q, n_k)``, only with ``return_attn``
  (the explicit-softmax path runs only then).

A :class:`Features` lives for one call: the model creates it, its layers add to it, and the model
returns its :meth:`Features.result`. Nothing outlives the call, so this works under ``nnx.jit`` and
``torch.compile``. The class only stores what it is given: it imports no framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ATTN", "Features", "block_label"]

ATTN = "attn"
Selection = bool | Sequence[str | int]


def block_label(i: int, prefix: str = "") -> str:
    """The label of the ``i``-th block of a stack: ``block00``, or ``spatial/block00`` with a prefix."""
    return f"{prefix}block{i:02d}"


class Features:
    """Collects labelled features during one forward pass and returns the selected ones.

    ``select`` is True (every feature), False (none but attention maps) or a sequence of labels and
    block indices (``-1`` is the last block, counted over every block label in running order).
    ``attn`` asks for attention maps (of the selected blocks when ``select`` is a sequence).
    """

    def __init__(self, select: Selection = True, attn: bool = False) -> None:
        if not isinstance(select, bool):
            if isinstance(select, (str, int)) or not isinstance(select, Sequence):
                raise TypeError(f"return_features must be True, False or a list of labels and indices, got {select!r}")
            for item in select:
                if isinstance(item, bool) or not isinstance(item, (str, int)):
                    raise TypeError(f"return_features items must be labels (str) or block indices (int), got {item!r}")
        self.select = select
        self.attn = bool(attn)
        self._items: dict[str, Any] = {}

    @classmethod
    def request(cls, return_features: Selection, return_attn: bool) -> Features | None:
        """A collector for a model call, or None when neither features nor attention maps are asked for."""
        if return_features is False and not return_attn:
            return None
        return cls(return_features, return_attn)

    def add(self, label: str, value: Any) -> None:
        if label in self._items:
            raise ValueError(f"feature {label!r} recorded twice")
        self._items[label] = value

    def add_attn(self, label: str, attn: Any) -> None:
        """Attention weights of the block ``label``: one array, or a mapping for blocks that attend twice."""
        if isinstance(attn, Mapping):
            for name, a in attn.items():
                self.add(f"{label}/{ATTN}/{name}", a)
        else:
            self.add(f"{label}/{ATTN}", attn)

    def result(self) -> dict[str, Any]:
        """The selected features, in recording order; unknown labels or indices raise listing the known ones."""
        items = self._items
        if self.select is True:
            return dict(items)
        if self.select is False:
            return {k: v for k, v in items.items() if _is_attn(k)}
        plain = [k for k in items if not _is_attn(k)]
        blocks = [k for k in plain if _is_block(k)]
        chosen: list[str] = []
        for item in self.select:
            if isinstance(item, int):
                if not -len(blocks) <= item < len(blocks):
                    raise IndexError(f"block index {item} out of range: the model ran {len(blocks)} blocks")
                label = blocks[item]
            elif item in items:
                label = item
            else:
                raise KeyError(f"no feature {item!r}; this model records {plain}")
            chosen.append(label)
        return {k: v for k, v in items.items() if k in chosen or (self.attn and _is_attn(k) and _owner(k) in chosen)}


def _is_attn(label: str) -> bool:
    return f"/{ATTN}" in label


def _owner(label: str) -> str:
    return label.split(f"/{ATTN}")[0]


def _is_block(label: str) -> bool:
    return label.rsplit("/", 1)[-1].startswith("block")
