"""Distillation: "Training data-efficient image transformers & distillation through attention" (Touvron et al., 2020).

A student (:class:`DistillableViT`, :class:`DistillableT2TViT`, :class:`DistillableEfficientViT`) is the plain model
plus a distillation token and a distillation head, both its own, so that a student checkpoint is complete. Its
default call is exactly the plain model's; ``student(img, distill=True)`` also runs the distillation token (appended
after the patches, without a position) through the transformer and returns ``(class_logits, distill_logits)``.
:class:`DistillWrapper` turns a teacher and a student into the training loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_parity.core.config import records_config
from vit_parity.core.facts import distill as facts
from vit_parity.core.facts import t2t
from vit_parity.core.features import Features
from vit_torch.efficient import ViT as EfficientViT
from vit_torch.layers import Linear, with_features
from vit_torch.t2t import T2TViT
from vit_torch.vit import ViT

__all__ = ["DistillWrapper", "DistillableEfficientViT", "DistillableT2TViT", "DistillableViT", "distillation_loss"]

# the student's own parameters that its plain model lacks
DISTILL_KEYS = ("distillation_token", "distill_head")


class DistillMixin:
    """The distillation token mechanism of every student: a model built from ``tokens`` (the embedded sequence
    with its class token and positions), ``encode`` (the transformer) and ``pool_tokens`` gains a distillation token
    ``distillation_token`` ``(1, 1, dim)``, appended after the patches (no position, as in DeiT), and a
    distillation head ``distill_head`` (``Linear(dim, num_classes)``) reading its output.

    ``plain`` is the model class the student extends; :meth:`to_vit` returns one with the same weights.
    """

    plain: type[nn.Module]
    distillation_token: nn.Parameter
    distill_head: nn.Linear

    def _add_distillation(self, dim: int, num_classes: int) -> None:
        self.dim, self.num_classes = dim, num_classes
        self.distillation_token = nn.Parameter(torch.randn(1, 1, dim))
        self.distill_head = Linear(dim, num_classes)

    def distill_tokens(self, img: Tensor, features: Features | None = None) -> tuple[Tensor, Tensor]:
        """The transformer's output with the distillation token: ``(pooled, token)``, ``pooled`` what the class head
        reads (the class token, or the mean of every token but the distillation token) and ``token`` the
        distillation token's output ``(b, dim)``. Records the blocks (their sequences end with the distillation
        token) in ``features``."""
        x = self.tokens(img, features)
        token = self.distillation_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = self.encode(self._embedding_dropout(torch.cat((x, token), dim=1)), features)
        return self.pool_tokens(x[:, :-1]), x[:, -1]

    def _embedding_dropout(self, x: Tensor) -> Tensor:
        """The plain model's dropout on the embedded sequence, between ``tokens`` and ``encode``."""
        return self.dropout(x)

    def forward(
        self,
        img: Tensor,
        *,
        distill: bool = False,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Any:
        """The class logits ``(b, num_classes)``, exactly the plain model's; with ``distill=True`` the pair
        ``(class_logits, distill_logits)`` of the distillation pass. ``(output, features)`` when features are asked
        for."""
        if not distill:
            return super().forward(img, return_features=return_features, return_attn=return_attn)
        features = Features.request(return_features, return_attn)
        pooled, token = self.distill_tokens(img, features)
        if features is not None:
            features.add("pre_logits", pooled)
        return with_features((self.mlp_head(pooled), self.distill_head(token)), features)

    def to_vit(self) -> nn.Module:
        """The plain model (``plain``) with this student's weights (all but the distillation token and head), in the
        same train or eval mode, on the same device."""
        config = dict(self.config)
        if config.get("transformer") is not None:  # a user's transformer module: the copy gets its own
            config["transformer"] = copy.deepcopy(self.transformer)
        model = self.plain(**config)
        state = {k: v for k, v in self.state_dict().items() if k.split(".")[0] not in DISTILL_KEYS}
        model.load_state_dict(state)
        token = self.distillation_token
        return model.to(device=token.device, dtype=token.dtype).train(self.training)


@records_config
class DistillableViT(DistillMixin, ViT):
    """A :class:`vit_torch.vit.ViT` student for distillation through attention (DeiT, Touvron et al., 2020).

    The same constructor, parameters and default call as ``ViT``, plus ``distillation_token`` ``(1, 1, dim)`` and
    ``distill_head``; ``model(img, distill=True)`` returns ``(class_logits, distill_logits)``; :meth:`to_vit`
    returns a plain ``ViT`` with the same weights.
    """

    plain = ViT

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
            mlp_dim=mlp_dim, pool=pool, channels=channels, dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
        )  # fmt: skip
        self._add_distillation(dim, num_classes)


@records_config
class DistillableT2TViT(DistillMixin, T2TViT):
    """A :class:`vit_torch.t2t.T2TViT` student for distillation through attention (DeiT, Touvron et al., 2020).

    The same constructor, parameters and default call as ``T2TViT``, plus ``distillation_token`` ``(1, 1, dim)``
    and ``distill_head``; ``model(img, distill=True)`` returns ``(class_logits, distill_logits)``; :meth:`to_vit`
    returns a plain ``T2TViT`` with the same weights.
    """

    plain = T2TViT

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int | None = None,
        heads: int | None = None,
        mlp_dim: int | None = None,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        transformer: nn.Module | None = None,
        t2t_layers: Sequence[tuple[int, int]] = t2t.DEFAULT_LAYERS,
    ) -> None:
        super().__init__(
            image_size=image_size, num_classes=num_classes, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
            pool=pool, channels=channels, dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
            transformer=transformer, t2t_layers=t2t_layers,
        )  # fmt: skip
        self._add_distillation(dim, num_classes)


@records_config
class DistillableEfficientViT(DistillMixin, EfficientViT):
    """A :class:`vit_torch.efficient.ViT` student (a ViT around a transformer of one's choice) for distillation
    through attention (DeiT, Touvron et al., 2020).

    The same constructor, parameters and default call as ``efficient.ViT``, plus ``distillation_token`` ``(1, 1,
    dim)`` and ``distill_head``; ``model(img, distill=True)`` runs the distillation token through ``transformer`` with
    the others and returns ``(class_logits, distill_logits)`` (the class head, LayerNorm and Linear, reads the pooled
    tokens; the distillation head the distillation token); :meth:`to_vit` returns a plain ``efficient.ViT`` with the
    same weights and a copy of the transformer.
    """

    plain = EfficientViT

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        transformer: nn.Module,
        pool: str = "cls",
        channels: int = 3,
    ) -> None:
        super().__init__(
            image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, transformer=transformer,
            pool=pool, channels=channels,
        )  # fmt: skip
        self._add_distillation(dim, num_classes)

    def _embedding_dropout(self, x: Tensor) -> Tensor:
        return x  # efficient.ViT has no embedding dropout


def distillation_loss(
    logits: Tensor,
    distill_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float,
    alpha: float,
    hard: bool,
) -> Tensor:
    """``(1 - alpha) * CE(logits, labels) + alpha * distill``: ``distill`` is ``KL(softmax(teacher / T) ||
    softmax(distill / T))``, the batch mean, times ``T ** 2`` (soft), or ``CE(distill_logits, argmax teacher)``
    (hard)."""
    loss = F.cross_entropy(logits, labels)
    if hard:
        distill = F.cross_entropy(distill_logits, teacher_logits.argmax(dim=-1))
    else:
        t = temperature
        log_q = F.log_softmax(distill_logits / t, dim=-1)
        distill = F.kl_div(log_q, F.softmax(teacher_logits / t, dim=-1), reduction="batchmean") * t**2
    return loss * (1 - alpha) + distill * alpha


@records_config
class DistillWrapper(nn.Module):
    """Distillation through attention (DeiT, Touvron et al., 2020): ``wrapper(img, labels)`` is the training loss of
    ``student`` (a :class:`DistillableViT`, :class:`DistillableT2TViT` or :class:`DistillableEfficientViT`) taught by
    ``teacher``.

    ``teacher`` is any module or callable mapping ``img`` to logits over the student's classes. It runs without
    gradients: its parameters are set to ``requires_grad=False`` (so no optimizer over ``wrapper.parameters()``
    changes them, weight decay included), and it stays in eval mode when the wrapper trains (its dropout and
    batch statistics never move). The loss is :func:`distillation_loss` of the student's class logits and
    distillation logits (``hard``: against the teacher's argmax; soft: at ``temperature``), weighted by ``alpha``;
    ``temperature`` and ``alpha`` may be overridden per call. ``mlp_layernorm=True`` adds ``distill_norm``, a
    LayerNorm on the distillation token before the student's ``distill_head``, owned by the wrapper.

    With ``return_features``/``return_attn`` the call returns ``(loss, features)``, the student's features on its
    distillation pass. A wrapper saves (and loads in either backend) when teacher and student are registry models;
    otherwise save the student alone.
    """

    def __init__(
        self,
        *,
        teacher: nn.Module | Callable[[Tensor], Tensor],
        student: DistillableViT | DistillableT2TViT | DistillableEfficientViT,
        temperature: float = 1.0,
        alpha: float = 0.5,
        hard: bool = False,
        mlp_layernorm: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(student, DistillMixin):
            raise ValueError(
                "student must be a DistillableViT or DistillableT2TViT or DistillableEfficientViT (a model with a "
                f"distillation token and head), got {type(student).__name__}"
            )
        if not callable(teacher):
            raise ValueError(f"teacher must be a module or callable mapping images to logits, got {teacher!r}")
        self.temperature = facts.check_temperature(temperature)
        self.alpha = facts.check_alpha(alpha)
        self.hard = bool(hard)
        teacher_config = getattr(teacher, "config", None)
        if isinstance(teacher_config, dict) and isinstance(teacher_config.get("num_classes"), int):
            facts.check_classes(teacher_config["num_classes"], student.num_classes)
        self.teacher = teacher
        if isinstance(teacher, nn.Module):
            teacher.requires_grad_(False)
            teacher.eval()
        self.student = student
        self.distill_norm = nn.LayerNorm(student.dim) if mlp_layernorm else None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "config":  # a teacher or student no checkpoint can rebuild: a stand-in that says what to save
            value = {
                k: facts.NotSaved(v, k) if k in ("teacher", "student") and not isinstance(v, dict) else v
                for k, v in value.items()
            }
        super().__setattr__(name, value)

    def train(self, mode: bool = True) -> DistillWrapper:
        """Train or evaluate the student (and ``distill_norm``); the teacher stays in eval mode."""
        super().train(mode)
        if isinstance(self.teacher, nn.Module):
            self.teacher.eval()
        return self

    def forward(
        self,
        img: Tensor,
        labels: Tensor,
        temperature: float | None = None,
        alpha: float | None = None,
        *,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        t = self.temperature if temperature is None else facts.check_temperature(temperature)
        alpha = self.alpha if alpha is None else facts.check_alpha(alpha)
        features = Features.request(return_features, return_attn)
        pooled, token = self.student.distill_tokens(img, features)
        facts.check_labels(labels.shape, img.shape[0])
        with torch.no_grad():
            teacher_logits = self.teacher(img)
        facts.check_classes(teacher_logits.shape[-1], self.student.num_classes)
        if features is not None:
            features.add("pre_logits", pooled)
        if self.distill_norm is not None:
            token = self.distill_norm(token)
        loss = distillation_loss(
            self.student.mlp_head(pooled), self.student.distill_head(token), teacher_logits, labels,
            temperature=t, alpha=alpha, hard=self.hard,
        )  # fmt: skip
        return with_features(loss, features)
