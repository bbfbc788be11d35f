"""Spec entries, one module per model family."""

from vit_parity.core.registry import image, navit, video  # noqa: F401
