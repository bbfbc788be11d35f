"""How ``vit train`` builds and feeds each architecture of the registry, keyed by registry name.

An :class:`Adapter` maps the generic size options of the command (:class:`Options`: ``--dim``,
``--depth``, ``--heads``, ``--mlp-dim``, ``--dim-head``, ``--patch-size``, ``--frame-patch-size``, ...)
and the data's geometry (channels, ``(h, w)`` or ``(t, h, w)``, classes) onto the architecture's own
constructor arguments, and says how a batch of same-sized samples becomes the model's inputs in each
backend (a :class:`Feed`; ``None`` where the model takes the batch array itself). An architecture that
cannot train from the command has a :class:`Refusal` instead, saying why; every registry entry has one
or the other.

Feeds are framework-free: ``inputs`` returns numpy arrays (in lists where the model takes lists) that the
backend's loop converts, and ``logits`` only indexes the model's output. The backends' ``fit`` and
``predict`` take a feed as an argument (``feed=``); they never import this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vit_parity.core import packing, spec
from vit_parity.core.config import MODEL_KEY
from vit_parity.tools.training import constructor_config

__all__ = [
    "ADAPTERS",
    "Adapter",
    "Feed",
    "Geometry",
    "NotTrainable",
    "Options",
    "Refusal",
    "adapter",
    "feed",
    "trains",
]


class NotTrainable(ValueError):
    """The architecture has no adapter (a :class:`Refusal`, or no entry); the message says why."""


@dataclass(frozen=True)
class Options:
    """The generic model-size options of ``vit train``; ``None`` means the default noted."""

    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int | None = None  # 2 * dim
    dim_head: int | None = None  # dim // heads (at least 1)
    patch_size: int = 4
    frame_patch_size: int = 2
    pool: str | None = None  # the architecture's own default
    dropout: float = 0.0
    emb_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "mlp_dim", "dim_head", "patch_size", "frame_patch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("dropout", "emb_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")

    @property
    def mlp(self) -> int:
        return self.mlp_dim or 2 * self.dim

    @property
    def head_dim(self) -> int:
        return self.dim_head or max(self.dim // self.heads, 1)


@dataclass(frozen=True)
class Geometry:
    """What the data fixes: ``channels``, ``size`` (``(h, w)`` or ``(t, h, w)``) and ``num_classes``."""

    channels: int
    size: tuple[int, ...]
    num_classes: int

    @property
    def image_size(self) -> int | tuple[int, int]:
        h, w = self.size[-2:]
        return h if h == w else (h, w)

    @property
    def frames(self) -> int:
        if len(self.size) != 3:
            raise ValueError(f"the data holds images {self.size}, not videos or volumes")
        return self.size[0]


class Feed:
    """How a batch of same-sized, channels-first samples becomes a model's inputs, and its output logits.

    ``inputs(x)`` takes ``x`` of shape ``(n, c, *sides)`` (numpy) and returns the model's positional
    arguments, numpy arrays (in lists where the model takes lists) in the backend's layout; the shapes
    depend only on ``x.shape``, so a compiled model sees one set of shapes per batch size.
    ``logits(out)`` maps the model's output to ``(n, classes)`` by indexing only (it runs on torch and
    JAX arrays, inside ``jit`` too). Feeds compare by value, so a compiled step is reused across runs.
    """

    def inputs(self, x: np.ndarray) -> tuple[Any, ...]:
        raise NotImplementedError

    def logits(self, out: Any) -> Any:
        return out


@dataclass(frozen=True)
class ImageLists(Feed):
    """torch NaViT inputs: one list per sequence (``grouped``: ``[[x0], [x1], ...]``, each image alone
    in its sequence) or a flat list (the nested-tensor models)."""

    grouped: bool

    def inputs(self, x: np.ndarray) -> tuple[Any, ...]:
        images = [np.ascontiguousarray(im) for im in x]
        return ([[im] for im in images],) if self.grouped else (images,)


@dataclass(frozen=True)
class Packed(Feed):
    """flax NaViT inputs: :func:`vit_parity.core.packing.pack_images` of the batch, each sample alone in
    a sequence of its own (``(n, tokens)`` arrays: the same shapes for every batch of ``n``), logits
    read from every sequence's first slot."""

    patch: tuple[int, ...]
    axis_names: tuple[str, ...]

    def inputs(self, x: np.ndarray) -> tuple[Any, ...]:
        n, sides = len(x), x.shape[2:]
        tokens = math.prod(s // p for s, p in zip(sides, self.patch))
        batch = packing.pack_images(
            list(np.moveaxis(x, 1, -1)), patch_size=self.patch, group_max_seq_len=tokens, max_images=1,
            num_seqs=n, groups=[(i,) for i in range(n)], axis_names=self.axis_names,
        )  # fmt: skip
        return batch.arrays

    def logits(self, out: Any) -> Any:
        return out[:, 0]


Arguments = Callable[[Options, Geometry], dict[str, Any]]


@dataclass(frozen=True)
class Adapter:
    """``arguments`` maps the generic options and the data onto constructor arguments (names the class
    does not take are dropped, so one mapping serves both backends); ``feeds`` builds each backend's
    :class:`Feed` from the model's config (no entry: the model takes the batch array)."""

    arguments: Arguments
    feeds: Mapping[str, Callable[[Mapping[str, Any]], Feed]] | None = None

    def config(
        self, cls: type, geometry: Geometry, options: Options, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Constructor arguments of ``cls``; ``overrides`` (``--set``) win. Raises ``ValueError``."""
        return constructor_config(cls, self.arguments(options, geometry), overrides)

    def feed(self, backend: str, config: Mapping[str, Any]) -> Feed | None:
        if backend not in spec.BACKENDS:
            raise ValueError(f"backend must be one of {spec.BACKENDS}, got {backend!r}")
        make = (self.feeds or {}).get(backend)
        return None if make is None else make(config)


@dataclass(frozen=True)
class Refusal:
    """An architecture that does not train from the command, and why."""

    reason: str


def _common(o: Options, g: Geometry) -> dict[str, Any]:
    return dict(
        num_classes=g.num_classes, channels=g.channels, dim=o.dim, depth=o.depth, heads=o.heads, mlp_dim=o.mlp,
        dim_head=o.head_dim, pool=o.pool, dropout=o.dropout, emb_dropout=o.emb_dropout,
    )  # fmt: skip


def _image(o: Options, g: Geometry) -> dict[str, Any]:
    return dict(_common(o, g), image_size=g.image_size, patch_size=o.patch_size)


def _class_attention(o: Options, g: Geometry) -> dict[str, Any]:
    """CaiT (and XCiT): ``--depth`` blocks over the patches, then two class-attention blocks (``--set cls_depth=``)."""
    return dict(_image(o, g), cls_depth=2)


def _token_sampling(o: Options, g: Geometry) -> dict[str, Any]:
    """ATS: the first layer reads every patch, each later one at most half of the layer before (the seed's schedule,
    ``--set max_tokens_per_depth=...`` for another)."""
    h, w = g.size
    patches = (h // o.patch_size) * (w // o.patch_size)
    return dict(_image(o, g), max_tokens_per_depth=tuple(max(1, patches >> i) for i in range(o.depth)))


def _pluggable(o: Options, g: Geometry) -> dict[str, Any]:
    """The efficient ViT's transformer is a model argument: the library's own, of the size options, recorded so that
    the checkpoint rebuilds it (any other module trains in Python)."""
    transformer = dict(dim=o.dim, depth=o.depth, heads=o.heads, dim_head=o.head_dim, mlp_dim=o.mlp, dropout=o.dropout)
    return dict(
        image_size=g.image_size, patch_size=o.patch_size, num_classes=g.num_classes, dim=o.dim, channels=g.channels,
        pool=o.pool, transformer={MODEL_KEY: "efficient_transformer", "config": transformer},
    )  # fmt: skip


def _tokens_to_token(o: Options, g: Geometry) -> dict[str, Any]:
    """T2T's soft splits replace the patches: ``--patch-size`` p (a power of two) becomes log2(p) overlapping
    (3, 2) splits, the same overall stride as patches of p; another p is one (p, p) split. ``--set
    t2t_layers=...`` gives them explicitly (the paper's ((7, 4), (3, 2), (3, 2)) is millions of parameters wide
    on its own)."""
    p = o.patch_size
    splits = ((3, 2),) * (p.bit_length() - 1) if p > 1 and p & (p - 1) == 0 else ((p, p),)
    return dict(_common(o, g), image_size=g.image_size, t2t_layers=splits)


def _cross_vit(o: Options, g: Geometry) -> dict[str, Any]:
    """Two branches: small patches of ``--patch-size`` at ``--dim``, large patches of twice that at twice the width,
    each encoder one block deep; ``--depth`` multi-scale blocks (``--set`` for the per-branch arguments)."""
    p = o.patch_size
    branch = dict(enc_heads=o.heads, enc_mlp_dim=o.mlp, enc_dim_head=o.head_dim, enc_depth=1)
    return dict(
        image_size=g.image_size, num_classes=g.num_classes, channels=g.channels, depth=o.depth, sm_dim=o.dim,
        lg_dim=2 * o.dim, sm_patch_size=p, lg_patch_size=2 * p, cross_attn_heads=o.heads,
        cross_attn_dim_head=o.head_dim, dropout=o.dropout, emb_dropout=o.emb_dropout,
        **{f"sm_{k}": v for k, v in branch.items()}, **{f"lg_{k}": v for k, v in branch.items()},
    )  # fmt: skip


def _tubelets(o: Options, g: Geometry) -> dict[str, Any]:
    return dict(
        _common(o, g), image_size=g.image_size, frames=g.frames, image_patch_size=o.patch_size,
        frame_patch_size=o.frame_patch_size,
    )  # fmt: skip


def _vivit(o: Options, g: Geometry) -> dict[str, Any]:
    args = _tubelets(o, g)
    depth = args.pop("depth")
    return dict(args, spatial_depth=depth, temporal_depth=depth)


def _cct(o: Options, g: Geometry) -> dict[str, Any]:
    """CCT's tokenizer is convolutional (``--set kernel_size=... stride=...``): the patch sizes do not apply,
    and its heads are ``dim / heads`` wide. Images or clips (``num_frames``) by the data's geometry."""
    if o.dim_head is not None and o.dim_head * o.heads != o.dim:
        raise ValueError(f"CCT's heads are dim / heads wide; drop --dim-head {o.dim_head} or set --dim to match")
    if o.dim % o.heads:
        raise ValueError(f"CCT needs --dim ({o.dim}) divisible by --heads ({o.heads})")
    clip = {"num_frames": g.frames} if len(g.size) == 3 else {}
    return dict(
        img_size=g.image_size, **clip, n_input_channels=g.channels, num_classes=g.num_classes,
        embedding_dim=o.dim, num_layers=o.depth, num_heads=o.heads, mlp_ratio=o.mlp / o.dim, dropout_rate=o.dropout,
    )  # fmt: skip


def _navit(o: Options, g: Geometry) -> dict[str, Any]:
    args = _image(o, g)
    del args["pool"]  # attention pooling
    return args


def _navit_3d(o: Options, g: Geometry) -> dict[str, Any]:
    return dict(_navit(o, g), max_frames=g.frames, frame_patch_size=o.frame_patch_size)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _packed(config: Mapping[str, Any]) -> Feed:
    return Packed(_pair(config["patch_size"]), ("height", "width"))


def _packed_3d(config: Mapping[str, Any]) -> Feed:
    return Packed((config["frame_patch_size"], *_pair(config["patch_size"])), ("frames", "height", "width"))


ADAPTERS: dict[str, Adapter | Refusal] = {
    "vit": Adapter(_image),
    "simple_vit": Adapter(_image),
    "deepvit": Adapter(_image),
    "distill": Adapter(_image),  # the student alone: its default call is the plain model's
    "distill_t2t": Adapter(_tokens_to_token),
    "distill_wrapper": Refusal(
        "distillation needs a teacher and labels in the loss: build vit_torch.distill.DistillWrapper (or "
        "vit_flax's) in Python and train it there; `vit train --arch distill` trains the student alone"
    ),
    "cait": Adapter(_class_attention),
    "xcit": Adapter(_class_attention),
    "t2t": Adapter(_tokens_to_token),
    "cross_vit": Adapter(_cross_vit),
    "vit_3d": Adapter(_tubelets),
    "simple_vit_3d": Adapter(_tubelets),
    "vivit": Adapter(_vivit),
    "cct": Adapter(_cct),
    "cct_3d": Adapter(_cct),
    "ats_vit": Adapter(_token_sampling),
    "vit_with_patch_merger": Adapter(_image),
    "vit_for_small_dataset": Adapter(_image),
    "parallel_vit": Adapter(_image),
    "learnable_memory_vit": Adapter(_image),
    "learnable_memory_vit_adapter": Refusal(
        "an adapter fine-tunes a trained learnable_memory_vit: train that (`vit train --arch learnable_memory_vit`), "
        "then build vit_torch.learnable_memory_vit.Adapter (or vit_flax's) on the loaded model in Python"
    ),
    "efficient": Adapter(_pluggable),
    "distill_efficient": Adapter(_pluggable),  # the student alone, as distill
    "efficient_transformer": Refusal(
        "it maps tokens to tokens and has no classifier: `vit train --arch efficient` trains it inside a ViT"
    ),
    "navit": Adapter(_navit, {"torch": lambda c: ImageLists(grouped=True), "flax": _packed}),
    "navit_nested": Adapter(_navit, {"torch": lambda c: ImageLists(grouped=False), "flax": _packed}),
    "navit_nested_3d": Adapter(_navit_3d, {"torch": lambda c: ImageLists(grouped=False), "flax": _packed_3d}),
}


def adapter(name: str) -> Adapter:
    """The adapter of registry architecture ``name``; :class:`NotTrainable` says why there is none."""
    entry = ADAPTERS.get(name)
    if isinstance(entry, Refusal):
        raise NotTrainable(f"architecture {name!r} does not train from `vit train`: {entry.reason}")
    if entry is None:
        raise NotTrainable(f"architecture {name!r} has no training adapter (vit_parity.tools.adapters)")
    return entry


def trains(name: str) -> str:
    """``'yes'``, or ``'no: <why>'``, for ``vit list``."""
    entry = ADAPTERS.get(name)
    if isinstance(entry, Adapter):
        return "yes"
    return f"no: {entry.reason}" if isinstance(entry, Refusal) else "no adapter"


def feed(arch: str, backend: str, config: Mapping[str, Any]) -> Feed | None:
    """The :class:`Feed` of a model of architecture ``arch`` with ``config``, in ``backend`` (``None``: the
    model takes the batch array), e.g. for ``predict(model, x, feed=feed(arch, backend, model.config))``."""
    return adapter(arch).feed(backend, config)
