"""Inflate a 2D image checkpoint into a video model ("ViViT", Arnab et al., 2021, Sec. 3.4), framework-free.

Works on :class:`vit_parity.core.checkpoint.Checkpoint` objects in either layout, with numpy only, so the result
loads in both backends. A ``vit`` checkpoint inflates into ``vit_3d`` or ``vivit``, a ``simple_vit``
checkpoint into ``simple_vit_3d``:

- the patch embedding becomes a tubelet embedding. A tubelet is flattened as ``(pt, ph, pw, c)``, i.e.
  ``pt`` copies of the 2D patch layout, so the LayerNorm over it gets the 2D weight and bias tiled ``pt``
  times and the projection gets the 2D kernel in every frame slot divided by ``pt`` (``method='average'``)
  or in the central slot ``pt // 2`` only, zeros elsewhere (``method='central'``). A clip of identical
  frames then has the same tubelet statistics as one frame, so both methods give exactly the 2D patch
  embeddings on it. With ``'central'`` on a clip whose frames differ, the LayerNorm still sees every frame
  of the tubelet, so the embedding is not the 2D embedding of the central frame (it is for ``pt = 1``).
- learned positions are resized to the new patch grid (bilinear, half-pixel centers, as
  ``torch.nn.functional.interpolate(..., align_corners=False)``) and repeated over the frame groups;
  the class token keeps its position. SimpleViT's sin-cos positions are fixed and need nothing.
- the transformer is copied (ViViT: into the spatial transformer, or into the spatial attention and MLP
  of each factorized block). Parts with no 2D counterpart are drawn from a seeded numpy generator: the
  factorized encoder's temporal transformer and class token start like fresh layers (Linear weights
  N(0, 0.02), zero biases, unit LayerNorms), and the temporal attention of factorized self-attention starts
  with a zero output projection, so each block is exactly the 2D block at first (as in the paper).
  The ViViT spatial class token absorbs the 2D class position.
- the classifier head is copied; with another ``num_classes`` it starts at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vit_parity.core.checkpoint import Checkpoint
from vit_parity.core.facts import signature, vivit
from vit_parity.core.validate import as_tuple, check_choice, video_geometry

__all__ = ["METHODS", "TARGETS", "inflate", "resize_grid"]

METHODS = ("average", "central")
TARGETS = {"vit": ("vit_3d", "vivit"), "simple_vit": ("simple_vit_3d",)}
# Arguments that fix the shape of copied weights: they must equal the source's.
_FIXED = ("dim", "heads", "dim_head", "mlp_dim", "channels", "image_patch_size")


def resize_grid(grid: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Resize ``grid`` of shape ``(*sides, d)`` to ``(*size, d)`` by (multi)linear interpolation.

    Half-pixel centers with edge clamping, the rule of ``torch.nn.functional.interpolate`` with
    ``align_corners=False``; an unchanged side is copied exactly.
    """
    out = np.asarray(grid, dtype=np.float64)
    if len(size) != out.ndim - 1:
        raise ValueError(f"size {tuple(size)} must have one entry per grid axis of shape {out.shape[:-1]}")
    for axis, (n, m) in enumerate(zip(out.shape[:-1], size)):
        if n == m:
            continue
        src = np.clip((np.arange(m) + 0.5) * (n / m) - 0.5, 0.0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = (src - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1.0 - w) + np.take(out, hi, axis=axis) * w
    return out.astype(np.asarray(grid).dtype)


def _target_config(src: Checkpoint, arch: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    target = signature(arch)  # the constructor arguments of arch, with their defaults
    unknown = sorted(set(overrides) - set(target.names))
    if unknown:
        raise ValueError(f"unknown {arch} argument(s) {unknown}; {arch} takes {sorted(target.names)}")
    c2 = src.config
    base = {k: c2[k] for k in target.names if k in c2}
    base["image_patch_size"] = c2["patch_size"]
    base["channels"] = c2.get("channels", 3)
    base["dim_head"] = c2.get("dim_head", 64)
    if arch == "vivit":
        base.pop("depth", None)
        base["spatial_depth"] = c2["depth"]
        base["temporal_depth"] = overrides.get("spatial_depth", c2["depth"])
    config = {**target.defaults, **base, **overrides}
    missing = [k for k in target.required if config.get(k) is None]
    if missing:
        raise ValueError(f"inflating into {arch} needs {missing}")
    for key in _FIXED:
        want = c2["patch_size"] if key == "image_patch_size" else base[key]
        got = config[key]
        if key == "image_patch_size":
            want, got = as_tuple(want, 2, "patch_size"), as_tuple(got, 2, "image_patch_size")
        if got != want:
            raise ValueError(f"{key}={got!r} differs from the source checkpoint's {want!r}: the copied weights fix it")
    depth_key = "spatial_depth" if arch == "vivit" else "depth"
    if config[depth_key] != c2["depth"]:
        raise ValueError(f"{depth_key}={config[depth_key]} differs from the source checkpoint's depth {c2['depth']}")
    if arch == "vivit":
        vivit.check_arguments(
            pool=config["pool"], variant=config["variant"],
            spatial_depth=config["spatial_depth"], temporal_depth=config["temporal_depth"],
        )  # fmt: skip
    video_geometry(config["image_size"], config["image_patch_size"], config["frames"], config["frame_patch_size"])
    return config


class _Init:
    """Fresh tensors (torch layout) and their module kinds for the parts with no 2D counterpart."""

    def __init__(self, seed: int, dtype: np.dtype) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.tensors: dict[str, np.ndarray] = {}
        self.kinds: dict[str, str] = {}

    def linear(self, path: str, n_in: int, n_out: int, *, bias: bool = True, zero: bool = False) -> None:
        w = np.zeros((n_out, n_in)) if zero else 0.02 * self.rng.standard_normal((n_out, n_in))
        self.tensors[f"{path}.weight"] = w.astype(self.dtype)
        if bias:
            self.tensors[f"{path}.bias"] = np.zeros(n_out, self.dtype)
        self.kinds[path] = "linear"

    def layernorm(self, path: str, dim: int) -> None:
        self.tensors[f"{path}.weight"] = np.ones(dim, self.dtype)
        self.tensors[f"{path}.bias"] = np.zeros(dim, self.dtype)
        self.kinds[path] = "layernorm"

    def param(self, path: str, shape: tuple[int, ...]) -> None:
        self.tensors[path] = (0.02 * self.rng.standard_normal(shape)).astype(self.dtype)
        self.kinds[path] = "param"

    def attention(self, path: str, dim: int, heads: int, dim_head: int, *, zero_out: bool) -> None:
        """The shared Attention (its norm lives in the block); ``zero_out``: its output is zero (a zero output
        projection, or zero values when it has no projection, i.e. one head as wide as ``dim``)."""
        inner = heads * dim_head
        self.linear(f"{path}.to_qkv", dim, 3 * inner, bias=False)
        if not (heads == 1 and dim_head == dim):
            self.linear(f"{path}.to_out", inner, dim, zero=zero_out)
        elif zero_out:
            self.tensors[f"{path}.to_qkv.weight"][2 * inner :] = 0

    def transformer(self, path: str, depth: int, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        for i in range(depth):
            self.layernorm(f"{path}.blocks.{i}.norm1", dim)
            self.attention(f"{path}.blocks.{i}.attn", dim, heads, dim_head, zero_out=False)
            self.layernorm(f"{path}.blocks.{i}.norm2", dim)
            self.linear(f"{path}.blocks.{i}.ff.fc1", dim, mlp_dim)
            self.linear(f"{path}.blocks.{i}.ff.fc2", mlp_dim, dim)
        self.layernorm(f"{path}.norm", dim)


def _copy(
    tensors: Mapping[str, np.ndarray], kinds: Mapping[str, str], src: str, dst: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor and module kind under ``src`` (a dotted prefix), renamed to sit under ``dst``."""

    def rename(key: str) -> str | None:
        if key == src:
            return dst
        return dst + key[len(src) :] if key.startswith(src + ".") else None

    out_t = {rename(k): v for k, v in tensors.items() if rename(k) is not None}
    out_k = {rename(k): v for k, v in kinds.items() if rename(k) is not None}
    return out_t, out_k  # type: ignore[return-value]


def inflate(
    src: Checkpoint,
    arch: str,
    *,
    frames: int,
    frame_patch_size: int,
    method: str = "average",
    seed: int = 0,
    **config: Any,
) -> Checkpoint:
    """Build a ``vit_3d`` / ``simple_vit_3d`` / ``vivit`` checkpoint from a 2D ``vit`` / ``simple_vit`` one.

    ``frames`` and ``frame_patch_size`` are required; every other constructor argument of ``arch``
    defaults to the source's (``image_patch_size`` to its ``patch_size``, ViViT's ``spatial_depth`` to
    its ``depth``) and may be given in ``config``. ``image_size`` may change (positions are resized);
    ``dim``, ``heads``, ``dim_head``, ``mlp_dim``, ``channels``, the patch size and the depth may not.
    ``method`` is ``'average'`` or ``'central'`` (see the module docstring); ``seed`` draws the parts that
    have no 2D counterpart. The result has ``src``'s layout and records its origin in ``extra``.
    """
    if src.arch not in TARGETS:
        raise ValueError(f"can only inflate {sorted(TARGETS)} checkpoints, got a {src.arch!r} checkpoint")
    if arch not in TARGETS[src.arch]:
        raise ValueError(f"a {src.arch!r} checkpoint inflates into {list(TARGETS[src.arch])}, not {arch!r}")
    check_choice(method, METHODS, "method")
    cfg = _target_config(src, arch, {**config, "frames": frames, "frame_patch_size": frame_patch_size})
    (t, h, w), (pt, ph, pw) = video_geometry(cfg["image_size"], cfg["image_patch_size"], frames, frame_patch_size)
    grid3 = (t // pt, h // ph, w // pw)
    h2, w2 = as_tuple(src.config["image_size"], 2, "image_size")
    grid2 = (h2 // ph, w2 // pw)

    torch_src = src.to_layout("torch")
    tensors, kinds = dict(torch_src.tensors), dict(torch_src.kinds)
    dtype = tensors["to_patch_embedding.proj.weight"].dtype
    out: dict[str, np.ndarray] = {}
    out_kinds: dict[str, str] = {}

    def take(src_prefix: str, dst_prefix: str) -> None:
        t_, k_ = _copy(tensors, kinds, src_prefix, dst_prefix)
        out.update(t_)
        out_kinds.update(k_)

    # tubelet embedding
    take("to_patch_embedding", "to_patch_embedding")
    for leaf in ("weight", "bias"):
        key = f"to_patch_embedding.pre_norm.{leaf}"
        out[key] = np.tile(tensors[key], pt)
    kernel = tensors["to_patch_embedding.proj.weight"]  # (dim, ph * pw * c)
    if method == "average":
        out["to_patch_embedding.proj.weight"] = np.tile(kernel, (1, pt)) / np.asarray(pt, dtype)
    else:
        slots = np.zeros((kernel.shape[0], pt, kernel.shape[1]), dtype)
        slots[:, pt // 2] = kernel
        out["to_patch_embedding.proj.weight"] = slots.reshape(kernel.shape[0], -1)

    # classifier head
    head = "linear_head" if src.arch == "simple_vit" else "mlp_head"
    if cfg["num_classes"] == src.config["num_classes"]:
        take(head, head)
    else:
        out[f"{head}.weight"] = np.zeros((cfg["num_classes"], cfg["dim"]), dtype)
        out[f"{head}.bias"] = np.zeros(cfg["num_classes"], dtype)
        out_kinds[head] = "linear"

    if arch == "simple_vit_3d":
        take("transformer", "transformer")
    else:
        pos = tensors["pos_embedding"]  # (1, 1 + gh * gw, d): the class position, then the patch grid
        d = pos.shape[-1]
        spatial = resize_grid(pos[0, 1:].reshape(*grid2, d), grid3[1:])
        tiled = np.broadcast_to(spatial, (*grid3, d)).reshape(1, -1, d).astype(dtype)
        init = _Init(seed, dtype)
        if arch == "vit_3d":
            out["pos_embedding"] = np.concatenate((pos[:, :1], tiled), axis=1)
            take("cls_token", "cls_token")
            out_kinds["pos_embedding"] = "param"
            take("transformer", "transformer")
        else:
            out["pos_embedding"] = tiled
            out_kinds["pos_embedding"] = "param"
            if cfg["pool"] == "cls":
                out["spatial_cls_token"] = tensors["cls_token"] + pos[:, :1]
                out_kinds["spatial_cls_token"] = "param"
            dims = (cfg["dim"], cfg["heads"], cfg["dim_head"])
            if cfg["variant"] == "factorized_encoder":
                take("transformer", "spatial_transformer")
                init.transformer("temporal_transformer", cfg["temporal_depth"], *dims, cfg["mlp_dim"])
                if cfg["pool"] == "cls":
                    init.param("temporal_cls_token", (1, 1, cfg["dim"]))
            else:
                for i in range(cfg["spatial_depth"]):
                    # the factorized block is the 2D block plus a temporal attention that starts at zero
                    take(f"transformer.blocks.{i}", f"factorized_transformer.blocks.{i}")
                    init.layernorm(f"factorized_transformer.blocks.{i}.temporal_norm", cfg["dim"])
                    init.attention(f"factorized_transformer.blocks.{i}.temporal_attn", *dims, zero_out=True)
                take("transformer.norm", "factorized_transformer.norm")
        out.update(init.tensors)
        out_kinds.update(init.kinds)

    full_config = {k: cfg[k] for k in signature(arch).names}
    extra = {"inflated_from": src.arch, "method": method, "seed": seed}
    result = Checkpoint(arch, full_config, "torch", dict(sorted(out_kinds.items())), out, extra)
    return result.to_layout(src.layout)
