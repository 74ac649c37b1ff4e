"""Batched linear probes: one L2-regularised logistic regression per unit, all units fitted together.

A *unit* is anything with a feature vector per sample: a head's CLS contribution x^(l,h)
(``blocks.{l}.attn.hook_cls_result``), a layer's residual stream, one neuron (1-d), one SAE latent.
Activations are laid out samples first, ``X [n, units, d]``, the layout hooks cache
(``hook_cls_result [b, head, d_model]``; stack layers and flatten ``[b, layer, head, d]``).

Every unit minimises scikit-learn's objective (``LogisticRegression(C=1/(l2 * n))``)::

    mean_i CE(softmax(x_i W + b), y_i) + l2/2 * ||W||^2        (intercept not penalised)

with one weight vector for binary labels (sigmoid) and one per class otherwise (multinomial).
``optimizer="lbfgs"`` runs one full-batch L-BFGS for all units at once (per-unit step sizes,
histories and stopping), preconditioned by each unit's exact Hessian at the start, so it is as
fast on badly scaled activations as on whitened ones. It stops a unit when the Euclidean norm of its
gradient is below ``tol``, which implies scikit-learn's stopping rule (max-abs gradient <= tol).

Exact shortcut for low-rank units: the L2-regularised solution lies in the span of the centred
data, and a head's contribution lies in a ``d_head``-dimensional subspace (it is a combination of
rows of W_O^h; projecting it to the joint space keeps the rank). ``fit`` finds each unit's span
from a sample of rows, *checks it on every row* with random row probes -- in the same single pass
over X that reads ``rank`` well-conditioned columns of X -- and then fits in those ``rank``
coordinates. Units whose data are not (to ``span_tol``) in a low-dimensional span are fitted in all
d dimensions.

``optimizer="adam"`` reproduces the expert-heads paper's training (Adam, lr 1e-3, a few epochs of
mini-batches) for the same objective; it does not use the shortcut.

This module is the public API (``docs/probes.md``); the work is done in :mod:`.inputs` (input
layouts, splits; labels and unit tables come from :mod:`workbench.metrics.units`), :mod:`.span`
(the low-rank shortcut), :mod:`.solver` (batched L-BFGS / Adam), :mod:`.kernels` (the CPU hot
loops compiled with numba; the first fit after installing spends ~10 s compiling them, once) and
:mod:`.threads` (how chunks of units share the cores).

Example::

    probes = LinearProbes().fit(x_train, y_train)      # x_train [n, 144, 512], y_train [n]
    acc = probes.score(x_test, y_test)                 # [144]
    res = probe(acts, gender, unit_index=["layer", "head"])   # acts [n, 12, 12, 512]
    res.top(5)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from workbench.metrics.scores import auroc, average_precision, pr_curve
from workbench.metrics.units import encode_labels, labels_array, unit_frame

from .inputs import describe_unit, nonfinite_error, require_rows, split_rows, units_tensor
from .solver import Fit, Problem, dense_features, feature_products, fit_adam, fit_lbfgs
from .span import find_spans, span_features
from .threads import map_tasks

__all__ = ["LinearProbes", "ProbeResult", "probe"]


# ============================================================================ estimator

_CPU_CHUNK_BYTES = 16 * 2**20  # a CPU chunk's gathered features (at rank 64): stays in cache


def _cpu_chunk(n: int, n_units: int, itemsize: int) -> int:
    """Units per chunk on CPU: cache-sized at a head's typical rank, and at least 4 chunks so the
    threads share the work evenly."""
    return max(1, min(_CPU_CHUNK_BYTES // (n * 64 * itemsize), -(-n_units // 4)))


class LinearProbes:
    """L2-regularised logistic-regression probes for many units, fitted in one vectorised solve.

    Args:
        n_classes: number of classes; labels must then lie in ``[0, n_classes)``. ``None`` takes
            the sorted distinct labels of ``y`` (like scikit-learn's ``classes_``).
        l2: penalty ``l2/2 * ||W||^2`` added to the *mean* cross-entropy. ``None`` uses
            ``1 / n_train``, i.e. scikit-learn's default ``C=1.0`` (``l2 = 1 / (C * n_train)``).
        max_iter: L-BFGS iterations (``"lbfgs"``) or epochs (``"adam"``); default 100 / 10.
        tol: stop a unit when the Euclidean norm of its gradient (in the standardised space when
            ``standardize``) is at most ``tol``.
        lr: Adam learning rate (paper: 1e-3); unused by L-BFGS.
        optimizer: ``"lbfgs"`` (full batch, exact objective) or ``"adam"`` (mini-batches).
        standardize: fit on features scaled to zero mean and unit variance (per unit and feature,
            training statistics; constant features are left unscaled). The penalty then acts on the
            standardised weights; ``coef_`` is always expressed for raw inputs.
        batch_size: Adam mini-batch size.
        unit_chunk: units processed together (bounds memory: a chunk's activations are copied
            when they must move device or be centred); ``None`` = cache-sized chunks on CPU
            (fitted in parallel, one per thread) / 64 units on GPU.
        span_tol: relative size (Frobenius norm, centred data) below which data outside a unit's
            detected span count as round-off; ``0`` disables the low-rank shortcut.
        dtype: compute dtype (``torch.float32`` default; ``torch.float64`` for reference fits).
        device: torch device for the solve (default: where X lives).
        seed: seeds the span sample, the row probes and Adam's shuffling.

    Attributes (after ``fit``):
        classes_: ``[classes]`` label values. coef_: ``[units, d, k]`` weights for raw inputs
        (``k = 1`` for binary, the logit of ``classes_[1]``; else one column per class).
        intercept_: ``[units, k]``. n_iter_: ``[units]``. converged_: ``[units]`` bool.
        span_rank_: ``[units]`` dimension each unit was fitted in (``d`` when no shortcut applied).
        unit_shape_: unit axes of the training X; unit_keys_: dict keys when X was a dict.
    """

    def __init__(
        self,
        n_classes: int | None = None,
        l2: float | None = None,
        max_iter: int | None = None,
        tol: float = 1e-4,
        lr: float = 1e-3,
        optimizer: str = "lbfgs",
        standardize: bool = True,
        batch_size: int = 256,
        unit_chunk: int | None = None,
        span_tol: float = 1e-4,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        seed: int = 0,
    ):
        self.n_classes = n_classes
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self.lr = lr
        self.optimizer = optimizer
        self.standardize = standardize
        self.batch_size = batch_size
        self.unit_chunk = unit_chunk
        self.span_tol = span_tol
        self.dtype = dtype
        self.device = device
        self.seed = seed

    # ------------------------------------------------------------------ fit

    def fit(self, X, y) -> "LinearProbes":
        """Fit one probe per unit.

        Args:
            X: ``[n, units, d]``; ``[n, units]`` for scalar units; ``[n, *unit_axes, d]`` (unit
                axes are flattened in C order); or a dict ``{key: [n, d] or [n]}``.
            y: ``[n]`` integer (or bool) labels, at least two classes.
        """
        self._check_params()
        acts, unit_shape, keys = units_tensor(X, self.dtype)
        require_rows(acts, X)
        n, n_units, d = acts.shape
        codes, classes = encode_labels(y, n, self.n_classes)
        n_out = 1 if len(classes) == 2 else len(classes)
        device = torch.device(self.device) if self.device is not None else acts.device
        l2 = 1.0 / n if self.l2 is None else float(self.l2)
        max_iter = self.max_iter if self.max_iter is not None else (10 if self.optimizer == "adam" else 100)
        on_cpu = device.type == "cpu"
        chunk = self.unit_chunk or (_cpu_chunk(n, n_units, acts.element_size()) if on_cpu else 64)

        coef = torch.zeros(n_units, d, n_out, dtype=torch.float64)
        intercept = torch.zeros(n_units, n_out, dtype=torch.float64)
        n_iter = torch.zeros(n_units, dtype=torch.long)
        converged = torch.zeros(n_units, dtype=torch.bool)
        span_rank = torch.full((n_units,), d, dtype=torch.long)
        codes_dev = codes.to(device)

        def fit_chunk(start):
            x = acts[:, start : start + chunk]
            if x.device != device:
                x = x.to(device)
            return start, self._fit_chunk(x, codes_dev, len(classes), l2, max_iter, start, keys, unit_shape)

        # On CPU whole chunks share the cores (one worker each, one intra-op thread per op; the
        # policy is in .threads); on other devices they run in turn.
        for start, fits in map_tasks(fit_chunk, range(0, n_units, chunk), device):
            for rows, fit in fits:
                at = rows + start
                coef[at], intercept[at] = fit.coef.cpu(), fit.intercept.cpu()
                n_iter[at], converged[at], span_rank[at] = fit.n_iter.cpu(), fit.converged.cpu(), fit.rank

        if not bool(converged.all()) and self.optimizer == "lbfgs":
            bad = (~converged).nonzero().flatten()
            warnings.warn(
                f"LinearProbes: {len(bad)} of {n_units} units did not reach tol={self.tol} in "
                f"max_iter={max_iter} iterations (first: {describe_unit(int(bad[0]), unit_shape, keys)}); "
                "raise max_iter, or standardize=True for badly scaled activations",
                RuntimeWarning,
                stacklevel=2,
            )
        self.classes_ = classes
        self.coef_ = coef.numpy()
        self.intercept_ = intercept.numpy()
        self.n_iter_ = n_iter.numpy()
        self.converged_ = converged.numpy()
        self.span_rank_ = span_rank.numpy()
        self.unit_shape_ = unit_shape
        self.unit_keys_ = keys
        self.n_features_ = d
        self.l2_ = l2
        return self

    def _fit_chunk(self, x, codes, n_classes, l2, max_iter, offset, keys, unit_shape) -> list[tuple[torch.Tensor, Fit]]:
        """Fit the units of ``x [n, u, d]``; returns ``[(unit rows, Fit)]`` covering all u units."""
        n, n_units, d = x.shape
        problem = Problem(codes, n_classes, l2, self.tol, max_iter)

        def dense(rows, with_gram=True):
            return dense_features(x[:, rows.to(x.device)], self.standardize, offset, keys, unit_shape, with_gram)

        all_rows = torch.arange(n_units)
        if self.optimizer == "adam":
            return [(all_rows, fit_adam(dense(all_rows, False), problem, self.lr, self.batch_size, self.seed))]

        out = []
        in_span = torch.zeros(n_units, dtype=torch.bool)
        spans = find_spans(x, self.span_tol, self.seed, offset, keys, unit_shape) if self.span_tol > 0 else []
        for span in spans:
            make = partial(span_features, span, standardize=self.standardize)
            fits = fit_lbfgs(torch.arange(len(span.units)), make, span.rank, n, x.element_size(), problem)
            out += [(span.units[rows], fit) for rows, fit in fits]
            in_span[span.units] = True
            span.columns = None  # free the gathered columns before the next group
        dense_rows = (~in_span).nonzero().flatten()
        if len(dense_rows):
            out += fit_lbfgs(dense_rows, dense, d, n, x.element_size(), problem)
        return out

    def _check_params(self):
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.l2 is not None and not self.l2 > 0:
            raise ValueError(f"l2 must be > 0 (or None for 1/n_train), got {self.l2}")
        if self.tol <= 0 or (self.max_iter is not None and self.max_iter < 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={self.tol}, max_iter={self.max_iter}")
        if self.unit_chunk is not None and self.unit_chunk < 1:
            raise ValueError(f"unit_chunk must be a positive number of units, got {self.unit_chunk}")

    # ------------------------------------------------------------------ predict

    def decision_function(self, X) -> np.ndarray:
        """Logits: ``[n, units]`` for binary probes (logit of ``classes_[1]``), else ``[n, units, classes]``."""
        logits = self._logits(X)
        return (logits[..., 0] if logits.shape[-1] == 1 else logits).numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[n, units, classes]``."""
        logits = self._logits(X)
        if logits.shape[-1] == 1:
            p1 = torch.sigmoid(logits)
            return torch.cat([1 - p1, p1], dim=-1).numpy()
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, X) -> np.ndarray:
        """Predicted labels ``[n, units]`` (values of ``classes_``)."""
        logits = self._logits(X)
        index = (logits[..., 0] > 0).long() if logits.shape[-1] == 1 else logits.argmax(-1)
        return self.classes_[index.numpy()]

    def score(self, X, y) -> np.ndarray:
        """Accuracy of every unit's probe, ``[units]``."""
        pred = self.predict(X)
        labels = labels_array(y, pred.shape[0])
        return (pred == labels[:, None]).mean(0)

    def _logits(self, X) -> torch.Tensor:
        """``[n, units, k]`` float64 logits, computed in the fit dtype on CPU in row blocks."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("LinearProbes is not fitted yet; call fit(X, y) first")
        acts, unit_shape, keys = units_tensor(X, self.dtype)
        n, n_units, d = acts.shape
        if (n_units, d) != self.coef_.shape[:2]:
            raise ValueError(
                f"X has {n_units} units of dimension {d} but the probes were fitted on "
                f"{self.coef_.shape[0]} units of dimension {self.coef_.shape[1]}"
            )
        device = acts.device
        intercept = torch.as_tensor(self.intercept_, dtype=torch.float64, device=device)
        coef_t = torch.as_tensor(self.coef_, dtype=acts.dtype, device=device).transpose(1, 2).contiguous()  # [u, k, d]
        out = torch.empty(n, n_units, coef_t.shape[1], dtype=torch.float64, device=device)
        # On CPU the per-unit products read X's strided rows in place: all rows at once. Elsewhere a
        # batched product copies its rows, so they go in blocks of 64 MiB.
        block = max(1, n if device.type == "cpu" else (64 * 2**20) // max(1, n_units * d * acts.element_size()))
        for start in range(0, n, block):
            rows = slice(start, start + block)
            logits = feature_products(acts[rows].transpose(0, 1), coef_t)  # [u, k, b]
            out[rows] = logits.permute(2, 0, 1).double() + intercept
        if not bool(torch.isfinite(out).all()):
            bad = (~torch.isfinite(out)).any(-1).any(0).nonzero()[0].item()
            raise nonfinite_error(bad, unit_shape, keys)
        return out.cpu()


# ============================================================================ convenience API


@dataclass
class ProbeResult:
    """Held-out results of :func:`probe`.

    Attributes:
        table: one row per unit -- the unit columns (e.g. layer, head), ``accuracy``, ``auroc``,
            ``ap`` (macro one-vs-rest for multi-class), ``n_train``, ``n_test``, ``converged``.
        probes: the fitted :class:`LinearProbes`.
        pr_curves: long table (unit columns, [class], threshold, precision, recall) or ``None``.
        classes: label values; train_index, test_index: the split (row indices into ``acts``).
    """

    table: Any
    probes: LinearProbes
    classes: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    pr_curves: Any = None
    unit_columns: list = field(default_factory=list)

    def top(self, k: int = 10, by: str = "ap"):
        """The ``k`` best units by a metric column (descending)."""
        if by not in self.table.columns:
            raise KeyError(f"no column {by!r}; choose one of {list(self.table.columns)}")
        return self.table.sort_values(by, ascending=False, kind="stable").head(k)

    def __repr__(self) -> str:
        kind = "binary" if len(self.classes) == 2 else f"{len(self.classes)}-class"
        head = self.top(min(5, len(self.table))).to_string(index=False)
        return (
            f"ProbeResult({len(self.table)} units, {kind} labels {list(self.classes)}, "
            f"n_train={len(self.train_index)}, n_test={len(self.test_index)}"
            f"{', PR curves' if self.pr_curves is not None else ''})\n"
            f"top units by ap:\n{head}"
        )


def probe(
    acts,
    labels,
    unit_index=None,
    *,
    test_size: float = 0.2,
    stratify: bool = True,
    seed: int = 0,
    pr_curves: bool = False,
    **probe_kwargs,
) -> ProbeResult:
    """Split, fit a probe per unit on the training part and score it on the held-out part.

    Args:
        acts: ``[n, *unit_axes, d]`` activations (e.g. ``[n, 12, 12, 512]`` for layer x head), a 2-d
            ``[n, units]`` for scalar units, or a dict ``{key: [n, d]}``.
        labels: ``[n]`` integer (or bool) labels.
        unit_index: names of the unit axes (``["layer", "head"]``), or a ``pandas`` Index /
            MultiIndex / DataFrame with one row per unit. Default: ``unit`` (one axis) or
            ``axis1, axis2, ...``; dict keys for dicts (tuple keys are split when names are given).
        test_size: fraction of samples held out. stratify: keep class proportions in both parts.
        seed: seeds the split and the fit. pr_curves: also return held-out PR curves.
        **probe_kwargs: passed to :class:`LinearProbes` (``l2``, ``optimizer``, ``standardize``...).

    Returns:
        :class:`ProbeResult` whose ``table`` lists every unit's held-out accuracy, AUROC and AP.
    """
    acts_t, unit_shape, keys = units_tensor(acts, probe_kwargs.get("dtype", torch.float32))
    require_rows(acts_t, acts)
    n = acts_t.shape[0]
    codes, classes = encode_labels(labels, n, probe_kwargs.get("n_classes"))
    units = unit_frame(unit_index, unit_shape, keys)
    train, test = split_rows(codes.numpy(), test_size, stratify, seed)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)

    probes = LinearProbes(seed=seed, **probe_kwargs).fit(acts_t[train_t], codes[train_t])
    y_test = codes[test_t]
    logits = probes._logits(acts_t[test_t])  # [n_test, units, k]
    if len(classes) == 2:
        scores = logits[..., 0]
        predicted = (scores > 0).long()
    else:
        scores = torch.softmax(logits, dim=-1)
        predicted = scores.argmax(-1)

    table = units.copy()
    table["accuracy"] = (predicted == y_test[:, None]).double().mean(0).numpy()
    table["auroc"] = _safe_metric(auroc, scores, y_test)
    table["ap"] = _safe_metric(average_precision, scores, y_test)
    table["n_train"] = len(train)
    table["n_test"] = len(test)
    table["converged"] = probes.converged_
    curves = _pr_table(scores, y_test, units, classes) if pr_curves else None
    return ProbeResult(
        table=table.reset_index(drop=True),
        probes=probes,
        classes=classes,
        train_index=train,
        test_index=test,
        pr_curves=curves,
        unit_columns=list(units.columns),
    )


def _safe_metric(metric, scores, y) -> np.ndarray:
    """Metric per unit, NaN where it is undefined on this test split (a class absent)."""
    try:
        return metric(scores, y).numpy()
    except ValueError:
        return np.full(scores.shape[1], np.nan)


def _pr_table(scores, y, units, classes):
    """Long table of held-out PR curves: unit columns, [class], threshold, precision, recall."""
    import pandas as pd

    curves = pr_curve(scores, y)
    frames = []
    for u, unit_curves in enumerate(curves):
        per_class = [(None, unit_curves)] if len(classes) == 2 else list(zip(classes, unit_curves))
        for cls, curve in per_class:
            # the final (recall 0, precision 1) point has no threshold
            thr = torch.cat([curve.thresholds, torch.tensor([np.inf], dtype=torch.float64)])
            frame = pd.DataFrame(
                {"threshold": thr.numpy(), "precision": curve.precision.numpy(), "recall": curve.recall.numpy()}
            )
            if cls is not None:
                frame.insert(0, "class", cls)
            for col in reversed(units.columns):
                frame.insert(0, col, units.iloc[u][col])
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)

