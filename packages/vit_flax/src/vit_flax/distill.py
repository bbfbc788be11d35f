"""Distillation: "Training data-efficient image transformers & distillation through attention" (Touvron et al., 2020).

A student (:class:`DistillableViT`, :class:`DistillableT2TViT`, :class:`DistillableEfficientViT`) is the plain model
plus a distillation token and a distillation head, both its own, so that a student checkpoint is complete. Its
default call is exactly the plain model's; ``student(img, distill=True)`` also runs the distillation token (appended
after the patches, without a position) through the transformer and returns ``(class_logits, distill_logits)``.
:class:`DistillWrapper` turns a teacher and a student into the training loss; :data:`TRAINABLE` selects what an
optimizer may change (everything but the teacher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vit_flax.efficient import ViT as EfficientViT
from vit_flax.layers import default_rngs, layer_norm, with_features
from vit_flax.t2t import T2TViT
from vit_flax.vit import ViT
from vit_parity.core.config import records_config
from vit_parity.core.facts import distill as facts
from vit_parity.core.facts import t2t
from vit_parity.core.features import Features

__all__ = [
    "TRAINABLE",
    "DistillWrapper",
    "DistillableEfficientViT",
    "DistillableT2TViT",
    "DistillableViT",
    "distillation_loss",
]

Array = jax.Array

# the student's own parameters that its plain model lacks
DISTILL_KEYS = ("distillation_token", "distill_head")

TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))
"""The parameters of a :class:`DistillWrapper` that training may change: all but the teacher's. Give it as the
optimizer's ``wrt`` (``nnx.Optimizer(wrapper, optax.adamw(1e-3), wrt=TRAINABLE)``) and differentiate with respect to
it (``nnx.grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE))``), so that not even weight decay moves the teacher."""


class DistillMixin:
    """The distillation token mechanism of every student: a model built from ``tokens`` (the embedded sequence
    with its class token and positions), ``encode`` (the transformer) and ``pool_tokens`` gains a distillation token
    ``distillation_token`` ``(1, 1, dim)``, appended after the patches (no position, as in DeiT), and a
    distillation head ``distill_head`` (``Linear(dim, num_classes)``) reading its output.

    ``plain`` is the model class the student extends; :meth:`to_vit` returns one with the same weights.
    """

    plain: type[nnx.Module]
    distillation_token: nnx.Param
    distill_head: nnx.Linear

    def _add_distillation(self, dim: int, num_classes: int, dtype: jnp.dtype | None, rngs: nnx.Rngs) -> None:
        self.dim, self.num_classes, self.dtype = dim, num_classes, dtype
        self.distillation_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)))
        self.distill_head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def distill_tokens(self, img: Array, features: Features | None = None) -> tuple[Array, Array]:
        """The transformer's output with the distillation token: ``(pooled, token)``, ``pooled`` what the class head
        reads (the class token, or the mean of every token but the distillation token) and ``token`` the
        distillation token's output ``(b, dim)``. Records the blocks (their sequences end with the distillation
        token) in ``features``."""
        x = self.tokens(img, features)
        token = jnp.broadcast_to(self.distillation_token[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        x = self.encode(self._embedding_dropout(jnp.concatenate((x, token), axis=1)), features)
        return self.pool_tokens(x[:, :-1]), x[:, -1]

    def _embedding_dropout(self, x: Array) -> Array:
        """The plain model's dropout on the embedded sequence, between ``tokens`` and ``encode``."""
        return self.dropout(x)

    def _evaluating(self) -> bool:
        """Whether the student is in eval mode (its embedding dropout draws nothing)."""
        return self.dropout.deterministic

    def __call__(
        self,
        img: Array,
        *,
        distill: bool = False,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Any:
        """The class logits ``(b, num_classes)``, exactly the plain model's; with ``distill=True`` the pair
        ``(class_logits, distill_logits)`` of the distillation pass. ``(output, features)`` when features are asked
        for."""
        if not distill:
            return super().__call__(img, return_features=return_features, return_attn=return_attn)
        features = Features.request(return_features, return_attn)
        pooled, token = self.distill_tokens(img, features)
        if features is not None:
            features.add("pre_logits", pooled)
        return with_features((self.mlp_head(pooled), self.distill_head(token)), features)

    def to_vit(self, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
        """The plain model (``plain``) with this student's weights (all but the distillation token and head), its
        compute dtype and its train or eval mode; ``rngs`` seeds the plain model's dropout."""
        config = dict(self.config)
        if config.get("transformer") is not None:  # a user's transformer module: the copy gets its own
            config["transformer"] = nnx.clone(self.transformer)
        model = self.plain(**config, dtype=self.dtype, rngs=default_rngs(rngs))
        keep = nnx.Not(nnx.Any(nnx.RngState, nnx.PathContains(DISTILL_KEYS[0]), nnx.PathContains(DISTILL_KEYS[1])))
        nnx.update(model, nnx.state(self, keep))
        if self._evaluating():
            model.eval()
        return model


@records_config
class DistillableViT(DistillMixin, ViT):
    """A :class:`vit_flax.vit.ViT` student for distillation through attention (DeiT, Touvron et al., 2020).

    The same constructor, parameters and default call as ``ViT``, plus ``distillation_token`` ``(1, 1, dim)`` and
    ``distill_head``; ``model(img, distill=True)`` returns ``(class_logits, distill_logits)``; :meth:`to_vit`
    returns a plain ``ViT`` with the same weights. Takes channels-last images.
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
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        super().__init__(
            image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
            mlp_dim=mlp_dim, pool=pool, channels=channels, dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
            dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self._add_distillation(dim, num_classes, dtype, rngs)


@records_config
class DistillableT2TViT(DistillMixin, T2TViT):
    """A :class:`vit_flax.t2t.T2TViT` student for distillation through attention (DeiT, Touvron et al., 2020).

    The same constructor, parameters and default call as ``T2TViT``, plus ``distillation_token`` ``(1, 1, dim)``
    and ``distill_head``; ``model(img, distill=True)`` returns ``(class_logits, distill_logits)``; :meth:`to_vit`
    returns a plain ``T2TViT`` with the same weights. Takes channels-last images.
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
        transformer: nnx.Module | None = None,
        t2t_layers: Sequence[tuple[int, int]] = t2t.DEFAULT_LAYERS,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        super().__init__(
            image_size=image_size, num_classes=num_classes, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
            pool=pool, channels=channels, dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
            transformer=transformer, t2t_layers=t2t_layers, dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self._add_distillation(dim, num_classes, dtype, rngs)


@records_config
class DistillableEfficientViT(DistillMixin, EfficientViT):
    """A :class:`vit_flax.efficient.ViT` student (a ViT around a transformer of one's choice) for distillation
    through attention (DeiT, Touvron et al., 2020).

    The same constructor, parameters and default call as ``efficient.ViT``, plus ``distillation_token`` ``(1, 1,
    dim)`` and ``distill_head``; ``model(img, distill=True)`` runs the distillation token through ``transformer`` with
    the others and returns ``(class_logits, distill_logits)`` (the class head, LayerNorm and Linear, reads the pooled
    tokens; the distillation head the distillation token); :meth:`to_vit` returns a plain ``efficient.ViT`` with the
    same weights and a copy of the transformer. Takes channels-last images.
    """

    plain = EfficientViT

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        transformer: nnx.Module,
        pool: str = "cls",
        channels: int = 3,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        super().__init__(
            image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, transformer=transformer,
            pool=pool, channels=channels, dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self._add_distillation(dim, num_classes, dtype, rngs)

    def _embedding_dropout(self, x: Array) -> Array:
        return x  # efficient.ViT has no embedding dropout

    def _evaluating(self) -> bool:
        """In eval mode when every module of it that has a mode (dropout, batch norm) is deterministic."""
        modes = [getattr(n, "deterministic", None) for _, n in nnx.iter_graph(self)]
        modes += [getattr(n, "use_running_average", None) for _, n in nnx.iter_graph(self)]
        known = [m for m in modes if isinstance(m, bool)]
        return bool(known) and all(known)


def distillation_loss(
    logits: Array,
    distill_logits: Array,
    teacher_logits: Array,
    labels: Array,
    *,
    temperature: float,
    alpha: float,
    hard: bool,
) -> Array:
    """``(1 - alpha) * CE(logits, labels) + alpha * distill``: ``distill`` is ``KL(softmax(teacher / T) ||
    softmax(distill / T))``, the batch mean, times ``T ** 2`` (soft), or ``CE(distill_logits, argmax teacher)``
    (hard). Computed in float32."""
    logits, distill_logits, teacher_logits = (x.astype(jnp.float32) for x in (logits, distill_logits, teacher_logits))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    if hard:
        distill = optax.softmax_cross_entropy_with_integer_labels(distill_logits, teacher_logits.argmax(-1)).mean()
    else:
        t = temperature
        log_q = jax.nn.log_softmax(distill_logits / t, axis=-1)
        p = jax.nn.softmax(teacher_logits / t, axis=-1)
        kl = jax.scipy.special.xlogy(p, p) - p * log_q  # torch's kl_div: 0 where the target is 0
        distill = kl.sum() / logits.shape[0] * t**2
    return loss * (1 - alpha) + distill * alpha


@records_config
class DistillWrapper(nnx.Module):
    """Distillation through attention (DeiT, Touvron et al., 2020): ``wrapper(img, labels)`` is the training loss of
    ``student`` (a :class:`DistillableViT`, :class:`DistillableT2TViT` or :class:`DistillableEfficientViT`) taught by
    ``teacher``.

    ``teacher`` is any nnx module or callable mapping channels-last ``img`` to logits over the student's classes.
    Its logits pass through ``jax.lax.stop_gradient``, and it stays in eval mode when the wrapper trains (its
    dropout and batch statistics never move); an optimizer must leave its parameters alone: build it with
    ``wrt=TRAINABLE`` (see :data:`TRAINABLE`). The loss is :func:`distillation_loss` of the student's class
    logits and distillation logits (``hard``: against the teacher's argmax; soft: at ``temperature``), weighted by
    ``alpha``; ``temperature`` and ``alpha`` may be overridden per call. ``mlp_layernorm=True`` adds
    ``distill_norm``, a LayerNorm on the distillation token before the student's ``distill_head``, owned by the
    wrapper.

    With ``return_features``/``return_attn`` the call returns ``(loss, features)``, the student's features on its
    distillation pass. A wrapper saves (and loads in either backend) when teacher and student are registry models;
    otherwise save the student alone.
    """

    def __init__(
        self,
        *,
        teacher: nnx.Module | Callable[[Array], Array],
        student: DistillableViT | DistillableT2TViT | DistillableEfficientViT,
        temperature: float = 1.0,
        alpha: float = 0.5,
        hard: bool = False,
        mlp_layernorm: bool = False,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        if not isinstance(student, DistillMixin):
            raise ValueError(
                "student must be a DistillableViT or DistillableT2TViT or DistillableEfficientViT (a model with a "
                f"distillation token and head), got {type(student).__name__}"
            )
        if not callable(teacher):
            raise ValueError(f"teacher must be an nnx module or callable mapping images to logits, got {teacher!r}")
        self.temperature = facts.check_temperature(temperature)
        self.alpha = facts.check_alpha(alpha)
        self.hard = bool(hard)
        teacher_config = getattr(teacher, "config", None)
        if isinstance(teacher_config, dict) and isinstance(teacher_config.get("num_classes"), int):
            facts.check_classes(teacher_config["num_classes"], student.num_classes)
        self.teacher = teacher
        if isinstance(teacher, nnx.Module):
            teacher.eval()
        self.student = student
        self.distill_norm = layer_norm(student.dim, 1e-5, rngs, dtype) if mlp_layernorm else None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "config":  # a teacher or student no checkpoint can rebuild: a stand-in that says what to save
            value = {
                k: facts.NotSaved(v, k) if k in ("teacher", "student") and not isinstance(v, dict) else v
                for k, v in value.items()
            }
        super().__setattr__(name, value)

    def train(self, **attributes: Any) -> None:
        """Train the student (and ``distill_norm``); the teacher stays in eval mode."""
        super().train(**attributes)
        if isinstance(self.teacher, nnx.Module):
            self.teacher.eval()

    def __call__(
        self,
        img: Array,
        labels: Array,
        temperature: float | None = None,
        alpha: float | None = None,
        *,
        return_features: bool | Sequence[str | int] = False,
        return_attn: bool = False,
    ) -> Array | tuple[Array, dict[str, Array]]:
        t = self.temperature if temperature is None else facts.check_temperature(temperature)
        alpha = self.alpha if alpha is None else facts.check_alpha(alpha)
        features = Features.request(return_features, return_attn)
        pooled, token = self.student.distill_tokens(img, features)
        facts.check_labels(labels.shape, img.shape[0])
        teacher_logits = jax.lax.stop_gradient(self.teacher(img))
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
