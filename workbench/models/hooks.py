"""Small helpers around transformer_lens hook points."""
from __future__ import annotations

from transformer_lens.hook_points import HookPoint


def is_active(*points: HookPoint) -> bool:
    """True if any hook point has a forward or backward hook attached.

    Used to pick the fused fast path when nobody is looking at (or editing) an intermediate value:
    a hook point that is not called cannot cache or edit, so we only skip it when it is inactive.
    """
    return any(bool(p._forward_hooks) or bool(p._backward_hooks) for p in points)
