"""The ViT shell around a transformer of one's choice (``efficient.ViT``): the checks of its transformer and of the
token sequences it gives and takes, once for both backends.

The shell hands its transformer the token sequence ``(b, n, dim)`` (the class token first) and reads back a sequence
of the same shape: any module with that contract plugs in (a Nystromformer, an x-transformers ``Encoder``, this
library's ``efficient.Transformer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vit_parity.core.validate import check_choice

__all__ = ["POOLS", "check_arguments", "check_output", "check_tokens"]

POOLS = ("cls", "mean")


def check_arguments(
    *, transformer: Any, module_type: type, module_name: str, dim: int, pool: str, width: int | None = None
) -> None:
    """Raise naming the argument at fault: ``transformer`` must be a ``module_type`` (the backend's module class,
    called ``module_name`` in the message), ``pool`` one of :data:`POOLS`, and a transformer whose width is known at
    construction (``width``: this library's transformers tell it) must be ``dim`` wide."""
    if not isinstance(transformer, module_type):
        raise ValueError(
            f"transformer must be a {module_name} mapping (b, n, dim) tokens to (b, n, dim), "
            f"got {type(transformer).__name__}"
        )
    check_choice(pool, POOLS, "pool")
    if width is not None and width != dim:
        raise ValueError(f"transformer is {width} wide, but the model's tokens are dim={dim} wide: it must be {dim}")


def check_output(given: Sequence[int], returned: Sequence[int] | None, dim: int) -> None:
    """The transformer's output (of shape ``returned``; None for something that is no array) must have the shape of
    the ``(b, n, dim)`` sequence it was ``given``."""
    if returned is None or tuple(returned) != tuple(given):
        got = "something that is no array" if returned is None else f"shape {tuple(returned)}"
        raise ValueError(
            f"transformer must map the (b, n, dim) tokens to (b, n, dim) with dim={dim}: given shape "
            f"{tuple(given)}, it returned {got}"
        )


def check_tokens(shape: Sequence[int], dim: int, name: str = "x") -> None:
    """A token sequence for a transformer must have shape ``(b, n, dim)``."""
    if len(shape) != 3 or shape[-1] != dim:
        raise ValueError(f"{name} must be a (b, n, {dim}) token sequence, got shape {tuple(shape)}")
