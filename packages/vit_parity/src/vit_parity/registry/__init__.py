"""Spec entries, one module per model family."""

from vit_parity.registry import image, navit, video  # noqa: F401
