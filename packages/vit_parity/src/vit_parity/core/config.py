"""Constructor arguments captured on every model, so that a checkpoint can rebuild it in either backend."""

from __future__ import annotations

import functools
import inspect
from typing import Any

# Arguments that belong to the runtime, not to the architecture.
_RUNTIME_ARGS = ("rngs", "dtype", "param_dtype")
# How a constructor argument that is itself a model (a wrapper's encoder) is recorded.
MODEL_KEY = "__model__"


def model_record(value: Any) -> Any:
    """A model argument as ``{"__model__": registry name, "config": its config}``; other values unchanged.

    A wrapper's checkpoint so records its encoder by architecture and constructor arguments, which both
    backends rebuild (:func:`vit_parity.core.spec.build_models`).
    """
    config = getattr(value, "config", None)
    if not isinstance(config, dict) or isinstance(value, (dict, type)):
        return value
    from vit_parity.core import spec  # the registry imports this module

    name = spec.registered_name(type(value))
    return value if name is None else {MODEL_KEY: name, "config": dict(config)}


def records_config(cls: type) -> type:
    """Class decorator: after ``__init__`` the instance holds ``config``, its bound constructor arguments.

    Defaults are filled in, tuples are kept as tuples, and runtime-only arguments (``rngs``, ``dtype``)
    are left out. Only the outermost ``__init__`` of a subclass chain records.
    """
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is wrapped:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    config.update(value)
                else:
                    config[name] = model_record(value)
            self.config = {k: v for k, v in config.items() if k not in _RUNTIME_ARGS}

    cls.__init__ = wrapped
    return cls


def to_json(config: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of ``config``; raises naming the argument that cannot be stored."""

    def convert(key: str, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (tuple, list)):
            return [convert(key, v) for v in value]
        if isinstance(value, dict):
            return {k: convert(key, v) for k, v in value.items()}
        raise TypeError(
            f"constructor argument {key!r} = {value!r} cannot be stored in a checkpoint config "
            "(only numbers, strings, booleans, None, lists and dicts)"
        )

    return {k: convert(k, v) for k, v in config.items()}


def from_json(config: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_json`: lists become tuples again."""

    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return tuple(convert(v) for v in value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {k: convert(v) for k, v in config.items()}
