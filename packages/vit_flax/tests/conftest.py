"""Settings of the vit_flax test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jax._src.interpreters import partial_eval


@pytest.fixture(autouse=True, scope="session")
def cheap_tracer_messages() -> Iterator[None]:
    """Flax asks each traced RNG count for its sharding (``getattr(value, "sharding", None)``), and JAX answers with
    an AttributeError whose message walks the whole trace: ``nnx.eval_shape`` of a large model (the seed's examples)
    grows with the square of its size. Nothing shows that message, so the tests do not build it."""
    tracer = getattr(partial_eval, "DynamicJaxprTracer", None)
    if tracer is None or not hasattr(tracer, "_origin_msg"):
        yield
        return
    original = tracer._origin_msg
    tracer._origin_msg = lambda self: ""
    yield
    tracer._origin_msg = original
