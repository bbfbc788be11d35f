"""Spec entry of the image CCT (inputs ``b c h w``); the video CCT's entry is in :mod:`.video`.

Cases stay few and small: every flax case compiles its own forward and backward pass.
"""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, image, register

_CCT = dict(embedding_dim=32, num_layers=2, num_heads=2, mlp_ratio=2.0, num_classes=10)

register(
    ArchSpec(
        name="cct",
        torch="vit_torch.cct:CCT",
        flax="vit_flax.cct:CCT",
        paper="Escaping the Big Data Paradigm with Compact Transformers (Hassani et al., 2021)",
        cases=(
            # wide padding and no pooling: border tokens see one row or column of pixels, so their features have
            # a small variance and a wrong LayerNorm eps shows at 1e-5 (a 3 x 3 pool would hand them their
            # neighbours' full views; the first case is the one the tampering tests use)
            Case(
                "learnable-wide-padding",
                dict(
                    _CCT,
                    img_size=12,
                    kernel_size=3,
                    stride=2,
                    padding=2,
                    pooling_kernel_size=1,
                    pooling_stride=1,
                    pooling_padding=0,
                    positional_embedding="learnable",
                ),
                (image(h=12, w=12),),
                ("b", 10),
            ),
            # two convolutions with an even kernel and pool, one channel, a smaller non-square image; 'none' is
            # the same computation without the addition (checked in the backends' own tests)
            Case(
                "sine-two-convs-even-kernel-smaller-input",
                dict(
                    _CCT,
                    img_size=(16, 12),
                    n_input_channels=1,
                    n_conv_layers=2,
                    kernel_size=4,
                    stride=1,
                    padding=2,
                    pooling_kernel_size=2,
                    pooling_stride=2,
                    pooling_padding=0,
                    num_layers=1,
                    dropout_rate=0.1,
                    positional_embedding="sine",
                ),
                (image(c=1, h=8, w=12),),
                ("b", 10),
            ),
        ),
    )
)
