"""Reference tables: ats_vit.

The reference's ATS-ViT layers are its ViT's (a LayerNorm inside the attention and the feed-forward; the token
sampler has no weights); its head ``mlp_head.{0, 1}`` is our final norm and head. Its eval mode draws Gumbel noise
(ours draws nothing), so its check feeds both models the same draw rather than comparing eval-mode calls.
"""

from __future__ import annotations

from vit_parity.tools.reference.common import depth, layers, patch_embedding, project_out
from vit_parity.tools.reference.importer import Difference, Rule, Table

ALWAYS_PROJECTS = Difference(
    "with one head as wide as the model (heads=1, dim_head=dim) this library's attention has no output projection; "
    "the reference's ATS-ViT always projects",
    lambda c: not project_out(c),
)

TABLES: dict[str, Table] = {
    "ats_vit": Table(
        reference="vit_pytorch.ats_vit:ViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            *patch_embedding(),
            *layers("transformer", "transformer"),
            Rule("mlp_head.0", "transformer.norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=depth,
        differences=(ALWAYS_PROJECTS,),
    ),
}
