"""Constructor arguments captured on every model, so that a checkpoint can rebuild it in either backend."""

from __future__ import annotations

import functools
import inspect
from typing import Any

# Arguments that belong to the runtime, not to the architecture.
_RUNTIME_ARGS = ("rngs", "dtype", "param_dtype")


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
                    config[name] = value
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
