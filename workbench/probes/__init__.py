"""Batched linear probes: estimators on activation tensors (they never touch a model).

- `api`: `LinearProbes` (fit / predict / score over many units at once), `probe` (fit on a split and
  return a tidy table), `ProbeResult`.
- `inputs`: activation layouts and splits (labels and unit tables: `workbench.metrics.units`).
- `span`: the exact low-rank shortcut (a unit whose activations span r < d dimensions is fitted in r).
- `solver`: batched L-BFGS / Adam over units; `kernels`: the CPU hot loops compiled with numba.
- `threads`: the one thread policy (chunks of units share the cores; no pool inside a pool).

Per-unit ranking scores without a fit (`unit_scores`: AUROC / AP of every coordinate) live in
`workbench.metrics`. Definitions and usage: docs/probes.md.
"""
from .api import LinearProbes, ProbeResult, probe

__all__ = ["LinearProbes", "ProbeResult", "probe"]
