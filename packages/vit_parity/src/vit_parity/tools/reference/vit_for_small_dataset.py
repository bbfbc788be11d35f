"""Reference tables: vit_for_small_dataset."""

from __future__ import annotations

from vit_parity.tools.reference.common import attention, depth, feedforward
from vit_parity.tools.reference.importer import Difference, Rule, Table

# the reference's ViT takes a (h, w) image_size, but hands patch_size to its SPT unchanged, which cuts patches by one
# int: a (ph, pw) patch_size fails there
INT_PATCH_ONLY = Difference(
    "vit-pytorch's SPT takes one int patch_size; this one also takes (ph, pw)",
    lambda c: not isinstance(c["patch_size"], int),
)


def _lsa_layers() -> tuple:
    """The reference's layers: locality self-attention (its norm inside, a bias-free ``to_qkv``, the learned
    ``temperature``, an output projection that is always there) and ViT's feed-forward, as our ``LocalityBlock`` s."""
    layer, block = "transformer.layers.{i}", "transformer.blocks.{i}"
    return (
        *attention(f"{layer}.0", block, out="to_out.0", out_bias=True, when=None),
        Rule(f"{layer}.0.temperature", f"{block}.attn.temperature"),
        *feedforward(f"{layer}.1.net", block, out=4),
    )


TABLES: dict[str, Table] = {
    "vit_for_small_dataset": Table(
        reference="vit_pytorch.vit_for_small_dataset:ViT",
        rules=(
            Rule("cls_token", "cls_token"),
            Rule("pos_embedding", "pos_embedding"),
            Rule("to_patch_embedding.to_patch_tokens.1", "to_patch_embedding.norm", "layernorm"),
            Rule("to_patch_embedding.to_patch_tokens.2", "to_patch_embedding.proj", "linear"),
            *_lsa_layers(),
            Rule("mlp_head.0", "norm", "layernorm"),
            Rule("mlp_head.1", "mlp_head", "linear"),
        ),
        counts=depth,
        differences=(INT_PATCH_ONLY,),
    ),
}
