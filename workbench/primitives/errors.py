"""Errors raised by edits (the spec's errors live in `spec.py`)."""
from __future__ import annotations

__all__ = ["EditError", "EditTargetError"]


class EditError(ValueError):
    """An edit is malformed on its own (unknown op or target, missing or extra field, bad value)."""


class EditTargetError(EditError):
    """An edit does not fit the model it is applied to (layer/head/index out of range, wrong value shape)."""
