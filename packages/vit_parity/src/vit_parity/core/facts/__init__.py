"""Model facts written once for both backends, pure Python: constructor signatures (:mod:`.signatures`), CCT's
tokenizer arithmetic, defaults, rates and presets (:mod:`.cct`) and ViViT's argument checks (:mod:`.vivit`)."""

from vit_parity.core.facts import cct, vivit
from vit_parity.core.facts.signatures import REQUIRED, SIGNATURES, Signature, signature

__all__ = ["REQUIRED", "SIGNATURES", "Signature", "cct", "signature", "vivit"]
