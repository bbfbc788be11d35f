"""DeepViT (Zhou et al., 2021): the argument checks that both backends make."""

from __future__ import annotations

from vit_parity.core.validate import check_choice

__all__ = ["POOLS", "check_arguments"]

POOLS = ("cls", "mean")


def check_arguments(*, pool: str, heads: int) -> None:
    """Raise naming the argument at fault: ``pool`` must be known, and re-attention needs ``heads >= 2`` (its
    LayerNorm runs over the heads: over one head it returns its bias whatever the attention, and nothing trains)."""
    check_choice(pool, POOLS, "pool")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 2:
        raise ValueError(
            f"heads must be an int >= 2: re-attention mixes and normalizes the attention maps across heads, "
            f"got {heads!r}"
        )
