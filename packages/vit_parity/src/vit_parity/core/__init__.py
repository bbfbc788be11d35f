"""The contract both backends import: the spec registry, input checks, positional tables, the NaViT packer,
weight conversion, the checkpoint format, recorded configs and the shared initializer. numpy only."""
