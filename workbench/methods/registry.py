"""Methods by name: `register_method`, `get_method`, `list_methods`, `method_for_spec`.

A method registers the function that runs it end to end under a short name (SAELens's
`register_sae_class` is the model). The name is what an `InterventionSpec` records as
`provenance["method"]`, so a spec found on disk leads back to the code that made it:

    @register_method("expert_heads")
    def expert_heads(model, reference, ...): ...

    method_for_spec(InterventionSpec.load("spec.json"))   # -> the expert_heads function

See docs/methods.md.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from typing import Any, Optional, Union

__all__ = ["register_method", "get_method", "list_methods", "method_for_spec"]

_METHODS: dict[str, Callable] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # snake_case: names go into JSON files and CLI commands


def register_method(name: str, method: Optional[Callable] = None) -> Callable:
    """Register `method` under `name`; without `method`, return a decorator.

    name: snake_case (letters, digits, underscores). Registering the same object twice is a no-op;
    a different object under a taken name raises ValueError (a method name must mean one thing).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"method name must be snake_case (lowercase letters, digits, underscores, starting with "
                         f"a letter), got {name!r}")

    def register(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"register_method({name!r}) needs a callable (the function that runs the method), "
                            f"got {type(fn).__name__}")
        taken = _METHODS.get(name)
        if taken is not None and taken is not fn:
            raise ValueError(f"method name {name!r} is already registered to {_describe(taken)}; pick another name")
        _METHODS[name] = fn
        return fn

    return register if method is None else register(method)


def get_method(name: str) -> Callable:
    """The function registered under `name`; ValueError with close matches for an unknown name."""
    if not isinstance(name, str):
        raise TypeError(f"method name must be a string, got {type(name).__name__}")
    try:
        return _METHODS[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(_METHODS), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown method {name!r}.{hint} Registered methods: {list_methods()}")


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def method_for_spec(spec: Union[Any, str, os.PathLike]) -> Callable:
    """The method that produced an `InterventionSpec` (or a spec file path), from `provenance["method"]`."""
    if isinstance(spec, (str, os.PathLike)):
        from workbench.primitives import InterventionSpec

        spec = InterventionSpec.load(spec)
    provenance = getattr(spec, "provenance", None)
    if not isinstance(provenance, dict):
        raise TypeError(f"method_for_spec needs an InterventionSpec or a spec file path, got {type(spec).__name__}")
    name = provenance.get("method")
    if name is None:
        raise ValueError("the spec records no method (provenance['method'] is missing or null); it was made "
                         "without one, e.g. InterventionSpec.from_edits(..., method=None)")
    return get_method(name)


def _describe(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
