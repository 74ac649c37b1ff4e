"""Debiasing methods, one module each, registered by name (see docs/methods.md).

- `registry`: `register_method`, `get_method`, `list_methods`, `method_for_spec` (a spec's
  `provenance["method"]` → the function that made it).
- `expert_heads`: `find_expert_heads` (per-head probes, per-neuron AP and bias attribution; probe-AP and
  attribution selections side by side) and `expert_variants` (prototype replacement, zero ablation,
  damping, expert neurons, intersectional sets); the first version `expert_heads` (top heads by bias
  attribution, neutral prototype) is registered as "expert_heads" and run by `workbench demo`.

Each method is a thin composition of the layers below it (activations, probes, primitives, evaluation):
it never re-implements a forward pass, a probe or a metric, and its result is a list of edits that
exports as an `InterventionSpec`.
"""
from . import expert_heads  # noqa: F401  (registers "expert_heads"; the module keeps its name here)
from .registry import get_method, list_methods, method_for_spec, register_method

__all__ = ["register_method", "get_method", "list_methods", "method_for_spec"]
