"""vit_torch: Vision Transformers in PyTorch, checkpoint-compatible with vit_flax."""

from vit_torch.checkpoint import load, load_weights, save
from vit_torch.simple_vit import SimpleViT
from vit_torch.vit import ViT

__all__ = ["SimpleViT", "ViT", "load", "load_weights", "save"]
