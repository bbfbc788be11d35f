"""Tools on top of the contract: the ``vit`` command, data, training helpers, parity checks and inflation.

The backends never import from here; tools import the backends that are installed.
"""
