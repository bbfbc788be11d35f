"""Import the reference library's (vit-pytorch's) own state dicts: numpy in, a torch-layout checkpoint out.

``import_state(arch, reference_state, config)`` takes a state dict of a vit-pytorch model as numpy arrays and the
constructor arguments that built it, and returns a :class:`~vit_parity.core.checkpoint.Checkpoint` of this
library's architecture ``arch`` (torch layout, with the module kinds, so it loads in either backend and converts
with ``vit convert``). No framework is imported; :func:`read_state_dict` is the only place torch is used, to read
a file, always with ``torch.load(path, map_location="cpu", weights_only=True)``.

Each architecture has one :class:`Table` in :data:`TABLES`, keyed by its registry name. The tables live in one
module per family beside this one (``image``, ``video``, ``cait`` ...), each with a module-level ``TABLES`` dict
that this package merges; the rules several tables share (the reference's pre-norm transformer layers, its
attention and feed-forward, patch embedding, common differences) are in :mod:`.common`, and the machinery that
applies a table in :mod:`.importer`. A table:

- ``reference``: the vit-pytorch class (``"vit_pytorch.vivit:ViViT"``), for messages and the reference check;
- ``rules``: :class:`Rule` s, one per module of this library, each naming the reference module(s) it comes from,
  the module it becomes and that module's kind (``linear``, ``layernorm``, ``conv``, ``rmsnorm``, ``param`` ...,
  the kinds of :mod:`vit_parity.core.convert`). Paths are templates whose ``{i}`` fields run over ``counts``::

      Rule("transformer.layers.{i}.0.norm", "transformer.blocks.{i}.norm1", "layernorm")

  The leaves (``weight``, ``bias``; a ``param`` is the path itself) are the kind's, unless ``leaves`` names the
  reference's (a tuple, or ``{"gamma": "weight"}`` to rename them); ``fill`` names leaves the reference lacks
  (a LayerNorm without bias: zeros); ``fn(arrays, leaf, config)`` reshapes, reorders or merges (one array per
  source: ``to_q`` and ``to_kv`` into ``to_qkv``); ``when(config)`` keeps a rule to some configs; a ``dst`` of
  None drops what the reference saves and this library recomputes (a constant table). A :class:`Derived` rule
  computes a module from whole reference tensors where per-leaf rules cannot (NaViT's pooling query).
- ``counts(config)``: the range of every template field (``{"i": config["depth"]}``);
- the constructor arguments: ``renamed`` (reference name to ours; none so far: the names agree),
  ``reference_only`` (the reference's arguments this library lacks, with the one value it reproduces, e.g.
  NaViT's ``num_registers=0``), ``ignored`` (reference arguments that do not change the weights),
  ``fixed`` (our arguments the reference does not take, with the value it hard-codes);
- ``differences``: :class:`Difference` s, configs where the two models compute different functions on purpose;
  the import refuses them, naming why;
- ``check_with``: reference arguments the reference check builds it with (ViViT's explicit softmax);
- ``dropped``: prefixes of reference keys that belong to no module of this model and are left out (the teacher
  in a distillation wrapper's state dict, when the student is imported).

Every key of the state dict must be consumed and every key the rules expect present; otherwise one
:class:`ReferenceImportError` lists them all. Functions and configs see this library's constructor arguments
(after renaming, with our defaults filled in from :data:`vit_parity.core.facts.SIGNATURES`).

Adding an architecture: build the reference model at a small config and print its ``state_dict()`` keys and shapes
beside this library's model's; write one ``Rule`` per module of ours (the helpers of :mod:`.common` cover the
reference's usual pre-norm transformer), add a module ``reference/<family>.py`` holding ``TABLES = {"<registry
name>": Table(...)}`` (or an entry in an existing family's module) and run ``nox -s reference``: its tests iterate
over the registry, compare the kinds the rules produce with the built model's and the logits of every case with the
reference's, and fail for an architecture that has a reference counterpart but no table.
"""

import importlib
import pkgutil

from vit_parity.tools.reference.importer import (
    LIBRARY,
    TABLES,
    Derived,
    Difference,
    Only,
    ReferenceImportError,
    Rule,
    Table,
    import_state,
    module_kinds,
    our_config,
    read_state_dict,
    reference_config,
    reference_keys,
    table,
)

__all__ = [
    "LIBRARY",
    "TABLES",
    "Derived",
    "Difference",
    "Only",
    "ReferenceImportError",
    "Rule",
    "Table",
    "import_state",
    "module_kinds",
    "our_config",
    "read_state_dict",
    "reference_config",
    "reference_keys",
    "table",
]

_SUPPORT = {"common", "importer"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _SUPPORT:
        _tables = importlib.import_module(f"{__name__}.{_info.name}").TABLES
        if clash := TABLES.keys() & _tables.keys():
            raise RuntimeError(f"reference tables defined twice: {sorted(clash)}")
        TABLES.update(_tables)
