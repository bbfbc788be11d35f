"""Spec entries, one module per model family."""

from vit_parity.registry import image, video  # noqa: F401
