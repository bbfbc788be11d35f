"""Spec entries of the ViT around a transformer of one's choice (``efficient.ViT``) and of this library's transformer
as a model of its own (``efficient.Transformer``, registry name ``efficient_transformer``).

``efficient.ViT`` takes its transformer as a constructor argument, so its cases build one from the registry
(``Case.models``): this library's transformer, whose keys stay ``transformer.<its keys>`` and convert leaf by leaf
like any other, and which a checkpoint records as ``{"__model__": "efficient_transformer", ...}``. Any other module
(a Nystromformer) plugs in as well but saves in no checkpoint; the backends' own tests run those.

The transformer's case runs it alone on tokens: two blocks with dropout, one head as wide as the model (no output
projection). Its tokens are 4 wide: the parity check feeds standard normal tokens, and only short rows leave some of
low variance, where a wrong LayerNorm eps shows (with 16-wide rows it stayed within the tolerance). The ViT's case
covers what the shell itself computes: mean pooling (over the class token too), a non-square image with two channels
smaller than the model's (cropped positions); the class token is pooled in the ``distill_efficient`` student's case
(its default call is the plain model's).
"""

from __future__ import annotations

from vit_parity.core.spec import ArchSpec, Case, Input, image, register

TRANSFORMER_PAPER = "Attention Is All You Need (Vaswani et al., 2017)"
PAPER = "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale (Dosovitskiy et al., 2020)"

register(
    ArchSpec(
        name="efficient_transformer",
        torch="vit_torch.efficient:Transformer",
        flax="vit_flax.efficient:Transformer",
        paper=TRANSFORMER_PAPER,
        cases=(
            Case(
                "one-wide-head-dropout",
                dict(dim=4, depth=2, heads=1, dim_head=4, mlp_dim=16, dropout=0.1),
                (Input("x", "b n d", {"b": 2, "n": 8, "d": 4}),),
                ("b", "n", "d"),
            ),
        ),
    )
)

register(
    ArchSpec(
        name="efficient",
        torch="vit_torch.efficient:ViT",
        flax="vit_flax.efficient:ViT",
        paper=PAPER,
        cases=(
            Case(
                "mean-rect-smaller-input",
                dict(image_size=(16, 12), patch_size=4, num_classes=10, dim=16, pool="mean", channels=2),
                (image(c=2, h=12, w=8),),
                ("b", 10),
                models={
                    "transformer": ("efficient_transformer", dict(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32))
                },
            ),
        ),
    )
)
