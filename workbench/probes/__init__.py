"""Batched linear probes: estimators on activation tensors (they never touch a model).

- `api`: `LinearProbes` (fit / predict / score over many units at once), `probe` (fit on a split and
  return a tidy table), `ProbeResult`.
- `inputs`: activation layouts, labels, unit tables and splits.
- `span`: the exact low-rank shortcut (a unit whose activations span r < d dimensions is fitted in r).
- `solver`: batched L-BFGS / Adam over units; `kernels`: the CPU hot loops compiled with numba.

Per-unit ranking scores without a fit (`unit_scores`: AUROC / AP of every coordinate) live in
`workbench.metrics`.
"""
from .api import LinearProbes, ProbeResult, probe

__all__ = ["LinearProbes", "ProbeResult", "probe"]
