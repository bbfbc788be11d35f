"""ViViT (Arnab et al., 2021): the argument checks that both backends and checkpoint inflation make."""

from __future__ import annotations

from vit_parity.core.validate import check_choice

__all__ = ["POOLS", "VARIANTS", "check_arguments"]

VARIANTS = ("factorized_encoder", "factorized_self_attention")
POOLS = ("cls", "mean")


def check_arguments(*, pool: str, variant: str, spatial_depth: int, temporal_depth: int) -> None:
    """Raise naming the argument at fault: ``pool`` and ``variant`` must be known, and factorized self-attention
    (a spatial and a temporal attention in each block) needs ``spatial_depth == temporal_depth``."""
    check_choice(pool, POOLS, "pool")
    check_choice(variant, VARIANTS, "variant")
    if variant == "factorized_self_attention" and spatial_depth != temporal_depth:
        raise ValueError(
            "variant='factorized_self_attention' alternates spatial and temporal attention in each block, so "
            f"spatial_depth and temporal_depth must be equal, got {spatial_depth} and {temporal_depth}"
        )
