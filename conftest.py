"""Test-wide settings for every package's tests."""

import importlib.util

if importlib.util.find_spec("jax") is not None:
    import jax

    # The test programs are tiny: compiling them without most XLA optimizations takes about a third
    # less time, and the numbers stay within the fp32 parity tolerance.
    jax.config.update("jax_disable_most_optimizations", True)
