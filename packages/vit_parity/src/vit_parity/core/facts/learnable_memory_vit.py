"""Learnable memory ("Fine-tuning Image Transformers using Learnable Memory", Sandler et al., 2022): the argument
checks and the attention mask that both backends use.

An adapter prepends its task class token to the frozen ViT's tokens and, in every block, appends its memory tokens
of that block to the keys and values. The mask keeps the ViT's own tokens (its class token and the patches) to each
other, so that they compute exactly what the ViT computes alone; only the task token reads everything: itself, the
ViT's tokens and the memories.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_base", "check_memories", "check_num_memories", "memory_mask"]


def check_num_memories(num_memories_per_layer: Any) -> int:
    """``num_memories_per_layer`` must be an int >= 1 (memory tokens per block)."""
    n = num_memories_per_layer
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_memories_per_layer must be an int >= 1 (memory tokens per block), got {n!r}")
    return n


def check_base(dim: int, depth: int, memories: Sequence[int]) -> None:
    """An adapter's ViT (``vit``, of width ``dim`` and ``depth`` blocks) must match its memories ``(depth, m,
    dim)``: the adapter was built on a ViT of that width and depth."""
    want_depth, m, want_dim = tuple(memories)
    if (dim, depth) != (want_dim, want_depth):
        raise ValueError(
            f"vit must be a ViT of dim={want_dim} and depth={want_depth} (the adapter's memories_per_layer has shape "
            f"({want_depth}, {m}, {want_dim})), got a ViT of dim={dim} and depth={depth}"
        )


def check_memories(class_token: Sequence[int], memories: Sequence[int], *, depth: int, dim: int) -> None:
    """A task class token of shape ``(dim,)`` and memories ``(depth, m, dim)`` (``m >= 1``) for a ViT of that depth
    and width; the message names the argument and the shape it must have."""
    if tuple(class_token) != (dim,):
        raise ValueError(
            f"class_token must have shape ({dim},) (the ViT's dim), got {tuple(class_token)}: an adapter works only "
            f"on a ViT of dim={dim}"
        )
    memories = tuple(memories)
    if len(memories) != 3 or memories[0] != depth or memories[2] != dim or memories[1] < 1:
        raise ValueError(
            f"memories must have shape ({depth}, m, {dim}) with m >= 1 (the ViT's depth, memory tokens per block, "
            f"the ViT's dim), got {memories}"
        )


def memory_mask(tokens: int, memories: int) -> list[list[bool]]:
    """The boolean attention mask ``(1 + tokens, 1 + tokens + memories)`` as nested lists, True where a query may
    attend to a key.

    Queries: the task class token, then the ViT's ``tokens`` (its class token and patches). Keys: the same
    sequence, then the block's ``memories``. The task token attends to every key; the ViT's tokens attend only to
    the ViT's tokens (not to the task token, not to the memories).
    """
    width = 1 + tokens + memories
    vit_row = [False] + [True] * tokens + [False] * memories
    return [[True] * width] + [list(vit_row) for _ in range(tokens)]
