"""vit_flax: Vision Transformers in Flax NNX, checkpoint-compatible with vit_torch."""

from vit_flax.checkpoint import load, load_weights, save
from vit_flax.simple_vit import SimpleViT
from vit_flax.vit import ViT

__all__ = ["SimpleViT", "ViT", "load", "load_weights", "save"]
