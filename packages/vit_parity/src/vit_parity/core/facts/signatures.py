"""The constructor arguments of every registry architecture, with their defaults: the signature that the torch
class and the flax class both spell out (flax adds its runtime-only ``dtype`` and ``rngs``)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["REQUIRED", "SIGNATURES", "Signature", "signature"]


class _Required:
    """The type of :data:`REQUIRED`."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Marks an argument without a default (``None`` is a real default, e.g. CCT's ``frame_padding``)."""


@dataclass(frozen=True)
class Signature:
    """A constructor's arguments in order: ``positional`` ones (positional or keyword), then ``keyword`` ones
    (keyword-only); each is ``(name, default)`` with :data:`REQUIRED` for an argument that has none."""

    positional: tuple[tuple[str, Any], ...] = ()
    keyword: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, positional: Mapping[str, Any] | None = None, **keyword: Any) -> Signature:
        """``Signature.of({name: default, ...}, name=default, ...)``: positional arguments in a mapping, then the
        keyword-only ones."""
        return cls(tuple((positional or {}).items()), tuple(keyword.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in (*self.positional, *self.keyword))

    @property
    def defaults(self) -> dict[str, Any]:
        """The arguments that have a default, with it."""
        return {name: d for name, d in (*self.positional, *self.keyword) if d is not REQUIRED}

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name, d in (*self.positional, *self.keyword) if d is REQUIRED)

    def parameters(self) -> tuple[inspect.Parameter, ...]:
        """The arguments as :class:`inspect.Parameter` objects without annotations: name, kind and default, as
        ``inspect.signature`` shows them."""

        def param(name: str, default: Any, kind: Any) -> inspect.Parameter:
            return inspect.Parameter(name, kind, default=inspect.Parameter.empty if default is REQUIRED else default)

        return tuple(param(n, d, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n, d in self.positional) + tuple(
            param(n, d, inspect.Parameter.KEYWORD_ONLY) for n, d in self.keyword
        )


_R = REQUIRED

_NAVIT = Signature.of(
    image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, channels=3, dim_head=64,
    dropout=0.0, emb_dropout=0.0, token_dropout_prob=None,
)  # fmt: skip

SIGNATURES: dict[str, Signature] = {
    "vit": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, pool="cls", channels=3,
        dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "simple_vit": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, channels=3, dim_head=64,
    ),
    "vit_3d": Signature.of(
        image_size=_R, image_patch_size=_R, frames=_R, frame_patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R,
        mlp_dim=_R, pool="cls", channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "simple_vit_3d": Signature.of(
        image_size=_R, image_patch_size=_R, frames=_R, frame_patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R,
        mlp_dim=_R, channels=3, dim_head=64,
    ),
    "vivit": Signature.of(
        image_size=_R, image_patch_size=_R, frames=_R, frame_patch_size=_R, num_classes=_R, dim=_R, spatial_depth=_R,
        temporal_depth=_R, heads=_R, mlp_dim=_R, pool="cls", channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0,
        variant="factorized_encoder",
    ),
    "cct": Signature.of(
        dict(
            img_size=224, embedding_dim=768, n_input_channels=3, n_conv_layers=1, kernel_size=7, stride=2, padding=3,
            pooling_kernel_size=3, pooling_stride=2, pooling_padding=1, dropout_rate=0.0, attention_dropout=0.1,
            stochastic_depth_rate=0.1,
        ),
        num_layers=12, num_heads=12, mlp_ratio=4.0, num_classes=1000, positional_embedding="sine",
    ),
    "cct_3d": Signature.of(
        dict(
            img_size=224, num_frames=8, embedding_dim=768, n_input_channels=3, n_conv_layers=1, frame_stride=1,
            frame_kernel_size=3, frame_padding=None, frame_pooling_kernel_size=1, frame_pooling_stride=1,
            frame_pooling_padding=None, kernel_size=7, stride=2, padding=3, pooling_kernel_size=3, pooling_stride=2,
            pooling_padding=1,
        ),
        num_layers=12, num_heads=12, mlp_ratio=4.0, num_classes=1000, positional_embedding="sine", dropout_rate=0.0,
        attention_dropout=0.1, stochastic_depth_rate=0.1,
    ),
    "cross_vit": Signature.of(
        image_size=_R, num_classes=_R, sm_dim=_R, lg_dim=_R, sm_patch_size=12, sm_enc_depth=1, sm_enc_heads=8,
        sm_enc_mlp_dim=2048, sm_enc_dim_head=64, lg_patch_size=16, lg_enc_depth=4, lg_enc_heads=8, lg_enc_mlp_dim=2048,
        lg_enc_dim_head=64, cross_attn_depth=2, cross_attn_heads=8, cross_attn_dim_head=64, depth=3, dropout=0.1,
        emb_dropout=0.1, channels=3,
    ),
    "t2t": Signature.of(
        image_size=_R, num_classes=_R, dim=_R, depth=None, heads=None, mlp_dim=None, pool="cls", channels=3,
        dim_head=64, dropout=0.0, emb_dropout=0.0, transformer=None, t2t_layers=((7, 4), (3, 2), (3, 2)),
    ),
    # the distillation students take their plain model's arguments
    "distill": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, pool="cls", channels=3,
        dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "distill_t2t": Signature.of(
        image_size=_R, num_classes=_R, dim=_R, depth=None, heads=None, mlp_dim=None, pool="cls", channels=3,
        dim_head=64, dropout=0.0, emb_dropout=0.0, transformer=None, t2t_layers=((7, 4), (3, 2), (3, 2)),
    ),
    "distill_wrapper": Signature.of(
        teacher=_R, student=_R, temperature=1.0, alpha=0.5, hard=False, mlp_layernorm=False,
    ),
    "distill_efficient": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, transformer=_R, pool="cls", channels=3,
    ),
    "efficient": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, transformer=_R, pool="cls", channels=3,
    ),
    # positional, as vit-pytorch's vit.Transformer
    "efficient_transformer": Signature.of(dict(dim=_R, depth=_R, heads=_R, dim_head=_R, mlp_dim=_R, dropout=0.0)),
    "deepvit": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, pool="cls", channels=3,
        dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "cait": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, cls_depth=_R, heads=_R, mlp_dim=_R,
        dim_head=64, dropout=0.0, emb_dropout=0.0, layer_dropout=0.0, channels=3,
    ),
    "xcit": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, cls_depth=_R, heads=_R, mlp_dim=_R,
        dim_head=64, dropout=0.0, emb_dropout=0.0, local_patch_kernel_size=3, layer_dropout=0.0, channels=3,
    ),
    "vit_for_small_dataset": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, pool="cls", channels=3,
        dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "vit_with_patch_merger": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, patch_merge_layer=None,
        patch_merge_num_tokens=8, channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "parallel_vit": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, pool="cls",
        num_parallel_branches=2, channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "learnable_memory_vit": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R, mlp_dim=_R, pool="cls", channels=3,
        dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "learnable_memory_vit_adapter": Signature.of(vit=_R, num_memories_per_layer=10, num_classes=2),
    "ats_vit": Signature.of(
        image_size=_R, patch_size=_R, num_classes=_R, dim=_R, depth=_R, max_tokens_per_depth=_R, heads=_R, mlp_dim=_R,
        channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0,
    ),
    "navit": _NAVIT,
    # the nested-tensor NaViT of torch shares the packed flax class, and so its arguments
    "navit_nested": _NAVIT,
    "navit_nested_3d": Signature.of(
        image_size=_R, max_frames=_R, patch_size=_R, frame_patch_size=_R, num_classes=_R, dim=_R, depth=_R, heads=_R,
        mlp_dim=_R, channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0, token_dropout_prob=None,
    ),
}  # fmt: skip


def signature(arch: str) -> Signature:
    """The constructor signature of architecture ``arch``; the error lists the known names."""
    try:
        return SIGNATURES[arch]
    except KeyError:
        raise KeyError(f"no constructor signature for {arch!r}; known: {sorted(SIGNATURES)}") from None
