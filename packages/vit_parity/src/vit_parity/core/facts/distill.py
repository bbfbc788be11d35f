"""Distillation through attention (DeiT, Touvron et al., 2020): the argument checks of ``DistillWrapper`` and the
stand-in it records for a teacher no checkpoint can rebuild, once for both backends.

The loss a ``DistillWrapper`` returns is ``(1 - alpha) * CE(class logits, labels) + alpha * distill_loss``, where
``distill_loss`` is ``KL(softmax(teacher / T) || softmax(distill / T))`` (batch mean) times ``T ** 2`` (soft) or
``CE(distill logits, argmax teacher)`` (hard).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["NotSaved", "check_alpha", "check_classes", "check_labels", "check_temperature"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a float; it must be a number above 0."""
    if not _is_number(temperature) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    return float(temperature)


def check_alpha(alpha: Any) -> float:
    """``alpha`` (the share of the distillation loss) as a float; it must lie in [0, 1]."""
    if not _is_number(alpha) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def check_classes(teacher_classes: int, student_classes: int) -> None:
    """The teacher's logits must have one entry per class of the student."""
    if teacher_classes != student_classes:
        raise ValueError(
            f"teacher gives logits over {teacher_classes} classes, the student has {student_classes}: "
            "the teacher must predict the student's classes"
        )


def check_labels(shape: Sequence[int], batch: int) -> None:
    """``labels`` must hold one class index per image: shape ``(batch,)``."""
    if tuple(shape) != (batch,):
        raise ValueError(f"labels must have shape ({batch},) (one class index per image), got {tuple(shape)}")


class NotSaved:
    """Stands in the recorded ``config`` of a ``DistillWrapper`` for a ``teacher`` or ``student`` that is no registry
    model: no checkpoint can rebuild it, so saving the wrapper fails with this in the message, which says what to
    save instead (the student, a registry model, saves alone)."""

    def __init__(self, value: Any, argument: str) -> None:
        kind = type(value)
        self.type = f"{kind.__module__}.{kind.__qualname__}"
        self.argument = argument

    def __repr__(self) -> str:
        return (
            f"<{self.type}: {self.argument} is no registry model, so no checkpoint can rebuild it; "
            "save the student instead (save(wrapper.student, path))>"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotSaved) and (other.type, other.argument) == (self.type, self.argument)

    def __hash__(self) -> int:
        return hash((self.type, self.argument))
