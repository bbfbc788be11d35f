"""ATS-ViT ("Adaptive Token Sampling For Efficient Vision Transformers", Fayyaz et al., 2021): the token budgets,
the number of tokens each layer reads and the shapes of an explicit sampling draw, for both backends.

A layer reads ``n`` patch tokens (and the class token). When ``n`` exceeds its budget ``k``
(``max_tokens_per_depth[i]``) it keeps at most ``k`` of them, so the next layer reads ``min(n, k)`` (an image may
keep fewer, the rest is padding under a mask); otherwise it keeps all ``n``. The counts depend on the image size
only, never on the data, so a compiled model is traced once per input shape. A sampling draw is ``k`` uniform
numbers per token read: shape ``(batch, k, n)``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["EPS", "check_max_tokens", "check_noise", "noise_shapes", "token_counts"]

EPS = 1e-6
"""Added before each logarithm: of the normalized significance scores and of the Gumbel transform (the
reference's value)."""


def _positive_int(value: object) -> bool:
    """An int (or an integer array scalar: it has ``__index__``) above zero; not a bool."""
    return not isinstance(value, bool) and hasattr(value, "__index__") and value.__index__() > 0


def check_max_tokens(max_tokens_per_depth: Sequence[int], depth: int) -> tuple[int, ...]:
    """The budgets as a tuple of ints, or a ValueError naming the argument: ``depth`` a positive int,
    ``max_tokens_per_depth`` one positive int per layer, never increasing from a layer to the next (a layer cannot
    keep more tokens than the layers before it left; equal budgets are allowed, as in the reference)."""
    if not _positive_int(depth):
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if isinstance(max_tokens_per_depth, (str, bytes)) or not isinstance(max_tokens_per_depth, Sequence):
        raise ValueError(
            f"max_tokens_per_depth must be a tuple of {depth} (depth) positive ints, got {max_tokens_per_depth!r}"
        )
    budgets = tuple(max_tokens_per_depth)
    if len(budgets) != depth:
        raise ValueError(
            f"max_tokens_per_depth must hold one token budget per layer, {depth} (depth) entries, got {len(budgets)}: "
            f"{budgets!r}"
        )
    for i, k in enumerate(budgets):
        if not _positive_int(k):
            raise ValueError(
                f"max_tokens_per_depth[{i}] must be a positive int (the most patch tokens layer {i} keeps), got {k!r}"
            )
    for i in range(1, depth):
        if budgets[i] > budgets[i - 1]:
            raise ValueError(
                f"max_tokens_per_depth must not increase from one layer to the next (a layer cannot keep more tokens "
                f"than the layers before it left): max_tokens_per_depth[{i}] = {budgets[i]} > "
                f"max_tokens_per_depth[{i - 1}] = {budgets[i - 1]} in {budgets!r}"
            )
    return tuple(int(k) for k in budgets)


def token_counts(num_patches: int, max_tokens: Sequence[int]) -> tuple[int, ...]:
    """How many patch tokens each layer reads (``len(max_tokens) + 1`` entries: the last is what the stack leaves),
    the class token aside: ``num_patches``, then ``min(previous, budget)`` after each layer."""
    counts = [int(num_patches)]
    for k in max_tokens:
        counts.append(min(counts[-1], int(k)))
    return tuple(counts)


def noise_shapes(batch: int, num_patches: int, max_tokens: Sequence[int]) -> tuple[tuple[int, int, int] | None, ...]:
    """The shape of the uniform draw of each layer, ``(batch, k, n)`` for a layer that samples (it reads ``n``
    tokens, more than its budget ``k``), None for one that does not."""
    counts = token_counts(num_patches, max_tokens)
    return tuple((batch, k, n) if n > k else None for n, k in zip(counts, max_tokens))


def check_noise(noise: object, batch: int, num_patches: int, max_tokens: Sequence[int]) -> None:
    """An explicit draw ``noise`` (a list or tuple of arrays of any framework, or None entries) holds one entry per
    layer: None, or an array of the shape :func:`noise_shapes` gives for a layer that samples."""
    expected = noise_shapes(batch, num_patches, max_tokens)
    if not isinstance(noise, (list, tuple)) or len(noise) != len(expected):
        got = f"{len(noise)} entries" if isinstance(noise, (list, tuple)) else f"a {type(noise).__name__}"
        raise ValueError(
            f"noise must be a list with one entry per layer, {len(expected)} (depth): uniform draws of shape (batch, "
            f"max_tokens, tokens read) for a layer that samples, or None; got {got}"
        )
    counts = token_counts(num_patches, max_tokens)
    for i, (entry, want) in enumerate(zip(noise, expected)):
        if entry is None:
            continue
        got = tuple(getattr(entry, "shape", ()))
        if want is None:
            raise ValueError(
                f"noise[{i}] must be None: layer {i} reads {counts[i]} patch tokens, within its budget "
                f"max_tokens_per_depth[{i}] = {max_tokens[i]}, and samples nothing; got an array of shape {got}"
            )
        if got != want:
            raise ValueError(
                f"noise[{i}] must have shape (batch, max_tokens_per_depth[{i}], tokens read) = {want}, got {got}"
            )
