"""ViT with a patch merger (Renggli et al., 2022): the argument and input checks that both backends make."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_features", "merge_index"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def merge_index(*, depth: int, patch_merge_layer: int | None, patch_merge_num_tokens: int) -> int:
    """The 0-based index of the block after which the tokens are merged, or raise naming the argument at fault.

    ``patch_merge_layer`` counts the blocks from 1 (``1`` merges after the first block, ``depth`` after the last);
    ``None`` merges half-way through the stack, after block ``depth // 2`` (after the only block when
    ``depth == 1``). ``patch_merge_num_tokens`` is the number of tokens the merger keeps.
    """
    if not _is_int(depth) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if not _is_int(patch_merge_num_tokens) or patch_merge_num_tokens < 1:
        raise ValueError(f"patch_merge_num_tokens must be a positive int, got {patch_merge_num_tokens!r}")
    if patch_merge_layer is None:
        return max(depth // 2, 1) - 1
    if not _is_int(patch_merge_layer) or not 1 <= patch_merge_layer <= depth:
        raise ValueError(
            f"patch_merge_layer counts the transformer's blocks from 1 and must be in 1..{depth} (depth={depth}) "
            f"or None (after block depth // 2), got {patch_merge_layer!r}"
        )
    return patch_merge_layer - 1


def check_features(shape: Sequence[int], dim: int) -> None:
    """Raise unless ``shape`` is a ``(b, n, dim)`` token sequence with at least one token, as a patch merger takes."""
    if len(shape) != 3 or shape[-1] != dim or shape[1] < 1:
        raise ValueError(f"x must be tokens of shape (b, n, dim={dim}) with n >= 1, got shape {tuple(shape)}")
