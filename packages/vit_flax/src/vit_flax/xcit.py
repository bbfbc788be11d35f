"""XCiT: "XCiT: Cross-Covariance Image Transformers" (El-Nouby et al., 2021)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vit_flax.attention_variants import CrossCovarianceAttention, LayerDropTransformer, TalkingHeadsBlock
from vit_flax.cait import ClassAttentionViT
from vit_flax.convolution import BatchNorm, DepthwiseConv
from vit_flax.layers import Block, LayerScale, apply_scale, default_rngs, gelu, make_norm
from vit_parity.core.config import records_config
from vit_parity.core.facts import xcit

__all__ = ["XCiT"]

Array = jax.Array


class LocalPatchInteraction(nnx.Module):
    """XCiT's local patch interaction: on the ``(h, w)`` map of the patch tokens (channels-last), a depthwise
    convolution (``conv1``), BatchNorm (``bn``), exact GELU and a second depthwise convolution (``conv2``), each of
    ``kernel_size`` with padding ``kernel_size // 2``. ``__call__(x, grid)`` takes and returns tokens
    ``(b, n, dim)`` with ``n = h * w`` in row-major order."""

    def __init__(self, dim: int, kernel_size: int = 3, *, dtype: jnp.dtype | None = None, rngs: nnx.Rngs) -> None:
        self.conv1 = DepthwiseConv(dim, kernel_size, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(dim, dtype=dtype, rngs=rngs)
        self.conv2 = DepthwiseConv(dim, kernel_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, grid: tuple[int, int]) -> Array:
        b, n, d = x.shape
        maps = self.conv2(gelu(self.bn(self.conv1(x.reshape(b, *grid, d)))))
        return maps.reshape(b, n, d)


class XCABlock(Block):
    """An XCiT layer: a :class:`~vit_flax.layers.Block` with cross-covariance attention as its ``attn`` and a third
    residual branch between the attention and the MLP: ``x + drop_path(ls_lpi(lpi(norm_lpi(x), grid)))``, the local
    patch interaction on the patch grid (layer-scaled like the other two when ``layer_scale`` is given).

    ``__call__(x, mask=None, grid=(h, w), return_attn=...)``; the attention maps are ``(b, heads, dim_head,
    dim_head)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        *,
        local_patch_kernel_size: int = 3,
        layer_scale: float | None = None,
        eps: float = 1e-5,
        norm: str = "layernorm",
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
        **options: Any,
    ) -> None:
        attn = CrossCovarianceAttention(dim, heads, dim_head, dropout, dtype=dtype, rngs=rngs)
        super().__init__(
            dim, heads, dim_head, mlp_dim, dropout, layer_scale=layer_scale, eps=eps, norm=norm, attn=attn,
            dtype=dtype, rngs=rngs, **options,
        )  # fmt: skip
        self.norm_lpi = make_norm(norm, dim, eps, rngs, dtype)
        self.lpi = LocalPatchInteraction(dim, local_patch_kernel_size, dtype=dtype, rngs=rngs)
        self.ls_lpi = LayerScale(dim, layer_scale) if layer_scale is not None else None

    def __call__(
        self, x: Array, mask: Array | None = None, *, grid: tuple[int, int], return_attn: bool = False
    ) -> Array | tuple[Array, Array]:
        y = self.attn(self.norm1(x), mask, return_attn=return_attn)
        y, attn = y if return_attn else (y, None)
        x = x + self.drop_path(apply_scale(self.ls1, y))
        x = x + self.drop_path(apply_scale(self.ls_lpi, self.lpi(self.norm_lpi(x), grid)))
        x = x + self.drop_path(apply_scale(self.ls2, self.ff(self.norm2(x))))
        return (x, attn) if return_attn else x


@records_config
class XCiT(ClassAttentionViT):
    """XCiT (El-Nouby et al., 2021): cross-covariance image transformer.

    CaiT's body (:class:`~vit_flax.cait.ClassAttentionViT`) with ``depth`` XCA layers over the patches
    (``patch_transformer``: cross-covariance attention over the feature axis, local patch interaction through
    depthwise convolutions and BatchNorm on the patch grid, MLP; three layer-scaled residual branches) ending in a
    LayerNorm, then ``cls_depth`` class-attention blocks (``cls_transformer``, CaiT's without head mixing). Every
    ``gamma`` starts at CaiT's value for ``depth`` (0.1 up to 18 blocks). In training each block of both stacks is
    skipped with probability ``layer_dropout`` (at least one of each stack runs), drawn from the 'dropout' stream;
    ``model(img, keep_layers=...)`` gives that draw explicitly (the ``depth`` XCA blocks, then the ``cls_depth``
    class blocks) in either mode; a skipped block leaves its BatchNorm statistics as they were. BatchNorm follows
    ``model.train()`` / ``model.eval()``. Takes ``img`` of shape ``(b, h, w, channels)`` with ``h, w`` at most
    ``image_size`` and divisible by ``patch_size``; smaller images use the top-left part of the position grid.
    Features: ``block00`` ... (the patches after each XCA block; their attention maps are ``(b, heads, dim_head,
    dim_head)``), ``cls/block00`` ..., ``pre_logits``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        cls_depth: int,
        heads: int,
        mlp_dim: int,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        local_patch_kernel_size: int = 3,
        layer_dropout: float = 0.0,
        channels: int = 3,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = default_rngs(rngs)
        xcit.check_arguments(
            depth=depth, cls_depth=cls_depth, layer_dropout=layer_dropout,
            local_patch_kernel_size=local_patch_kernel_size,
        )  # fmt: skip
        stack = dict(layer_scale=xcit.layer_scale_init(depth), layer_dropout=layer_dropout, dtype=dtype, rngs=rngs)
        super().__init__(
            image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, emb_dropout=emb_dropout,
            channels=channels,
            patch_transformer=LayerDropTransformer(
                dim, depth, heads, dim_head, mlp_dim, dropout, block=XCABlock,
                local_patch_kernel_size=local_patch_kernel_size, **stack,
            ),
            cls_transformer=LayerDropTransformer(
                dim, cls_depth, heads, dim_head, mlp_dim, dropout, final_norm=False, block=TalkingHeadsBlock,
                class_attention=True, pre_mix=False, post_mix=False, **stack,
            ),
            dtype=dtype, rngs=rngs,
        )  # fmt: skip

    def patch_options(self, grid: tuple[int, int]) -> dict[str, Any]:
        return {"grid": grid}  # the local patch interaction works on the patch grid
