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
from a sample of rows, *checks it on every row* with random row probes, and then fits in
``rank`` coordinates read directly from ``rank`` well-conditioned columns of X. Units whose data
are not (to ``span_tol``) in a low-dimensional span are fitted in all d dimensions.

``optimizer="adam"`` reproduces the expert-heads paper's training (Adam, lr 1e-3, a few epochs of
mini-batches) for the same objective; it does not use the shortcut.

Example::

    probes = LinearProbes().fit(x_train, y_train)      # x_train [n, 144, 512], y_train [n]
    acc = probes.score(x_test, y_test)                 # [144]
    res = probe(acts, gender, unit_index=["layer", "head"])   # acts [n, 12, 12, 512]
    res.top(5)
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from workbench.metrics.scores import auroc, average_precision, pr_curve

__all__ = ["LinearProbes", "ProbeResult", "probe", "unit_scores"]

_SPAN_SAMPLE_ROWS = 128  # rows used to find a unit's span; ranks up to ~120 are detected
_SPAN_PROBES = 4  # random row combinations that check the span on every row
_SOLVER_BATCH_BYTES = 16 * 2**20  # features per solver batch: stays in cache across iterations
_PRECONDITIONER_ROWS = 2048  # rows whose Gram approximates the start Hessian (when not needed exactly)
_DENSE_PRECONDITIONER_MAX_DIM = 1024
_LBFGS_HISTORY = 10


# ============================================================================ estimator


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
            when they must move device or be centred); ``None`` = all units (CPU) / 64 (GPU).
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
        acts, unit_shape, keys = _units_tensor(X, self.dtype)
        n, n_units, d = acts.shape
        codes, classes = _encode_labels(y, n, self.n_classes)
        n_out = 1 if len(classes) == 2 else len(classes)
        device = torch.device(self.device) if self.device is not None else acts.device
        l2 = 1.0 / n if self.l2 is None else float(self.l2)
        max_iter = self.max_iter if self.max_iter is not None else (10 if self.optimizer == "adam" else 100)
        chunk = self.unit_chunk or (n_units if device.type == "cpu" else 64)

        coef = torch.zeros(n_units, d, n_out, dtype=torch.float64)
        intercept = torch.zeros(n_units, n_out, dtype=torch.float64)
        n_iter = torch.zeros(n_units, dtype=torch.long)
        converged = torch.zeros(n_units, dtype=torch.bool)
        span_rank = torch.full((n_units,), d, dtype=torch.long)
        codes_dev = codes.to(device)
        for start in range(0, n_units, chunk):
            units = slice(start, min(start + chunk, n_units))
            x = acts[:, units]
            if x.device != device:
                x = x.to(device)
            fits = self._fit_chunk(x, codes_dev, len(classes), l2, max_iter, start, keys, unit_shape)
            for rows, fit in fits:
                at = rows + start
                coef[at], intercept[at] = fit.coef.cpu(), fit.intercept.cpu()
                n_iter[at], converged[at], span_rank[at] = fit.n_iter.cpu(), fit.converged.cpu(), fit.rank

        if not bool(converged.all()) and self.optimizer == "lbfgs":
            bad = (~converged).nonzero().flatten()
            warnings.warn(
                f"LinearProbes: {len(bad)} of {n_units} units did not reach tol={self.tol} in "
                f"max_iter={max_iter} iterations (first: {_describe_unit(int(bad[0]), unit_shape, keys)}); "
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

    def _fit_chunk(self, x, codes, n_classes, l2, max_iter, offset, keys, unit_shape):
        """Fit the units of ``x [n, u, d]``; returns ``[(unit rows, _Fit)]`` covering all u units."""
        n, n_units, d = x.shape
        problem = _ProblemSpec(codes, n_classes, l2, self.tol, max_iter)
        dense = lambda rows, gram=True: _dense_features(  # noqa: E731
            x[:, rows.to(x.device)], self.standardize, offset, keys, unit_shape, gram
        )
        all_rows = torch.arange(n_units)
        if self.optimizer == "adam":
            return [(all_rows, _fit_adam(dense(all_rows, False), problem, self.lr, self.batch_size, self.seed))]

        out, dense_rows = [], all_rows
        spans = _find_spans(x, self.span_tol, self.seed, offset, keys, unit_shape) if self.span_tol > 0 else []
        for span in spans:
            raw = _span_columns(x, span)
            make = lambda r, span=span, raw=raw: _span_features(raw, span, r, self.standardize)  # noqa: E731
            out += _fit_batches(torch.arange(len(span.units)), make, span.rank, n, x.element_size(), problem, span.units)
        if spans:
            in_span = torch.zeros(n_units, dtype=torch.bool)
            for span in spans:
                in_span[span.units] = True
            dense_rows = (~in_span).nonzero().flatten()
        if len(dense_rows):
            out += _fit_batches(dense_rows, dense, d, n, x.element_size(), problem)
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
        labels = _labels_array(y, pred.shape[0])
        return (pred == labels[:, None]).mean(0)

    def _logits(self, X) -> torch.Tensor:
        """``[n, units, k]`` float64 logits, computed in the fit dtype on CPU in row blocks."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("LinearProbes is not fitted yet; call fit(X, y) first")
        acts, unit_shape, keys = _units_tensor(X, self.dtype)
        n, n_units, d = acts.shape
        if (n_units, d) != self.coef_.shape[:2]:
            raise ValueError(
                f"X has {n_units} units of dimension {d} but the probes were fitted on "
                f"{self.coef_.shape[0]} units of dimension {self.coef_.shape[1]}"
            )
        device = acts.device
        # stored class-major [u, k, d] and used transposed: MKL's batched gemv is much faster so
        coef_t = torch.as_tensor(self.coef_, dtype=acts.dtype, device=device).transpose(1, 2).contiguous()
        intercept = torch.as_tensor(self.intercept_, dtype=torch.float64, device=device)
        out = torch.empty(n, n_units, coef_t.shape[1], dtype=torch.float64, device=device)
        block = max(1, (64 * 2**20) // max(1, n_units * d * acts.element_size()))
        for start in range(0, n, block):
            rows = slice(start, start + block)
            # [u, b, d] @ [u, d, k]: one batched product over units
            logits = torch.bmm(acts[rows].transpose(0, 1), coef_t.transpose(1, 2))
            out[rows] = logits.transpose(0, 1).double() + intercept
        if not bool(torch.isfinite(out).all()):
            bad = (~torch.isfinite(out)).any(-1).any(0).nonzero()[0].item()
            raise ValueError(
                f"X contains NaN or infinite values (first affected unit: "
                f"{_describe_unit(bad, unit_shape, keys)}); drop or impute them first"
            )
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
    acts_t, unit_shape, keys = _units_tensor(acts, probe_kwargs.get("dtype", torch.float32))
    n = acts_t.shape[0]
    codes, classes = _encode_labels(labels, n, probe_kwargs.get("n_classes"))
    units = _unit_frame(unit_index, unit_shape, keys)
    train, test = _split(codes.numpy(), test_size, stratify, seed)
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


def unit_scores(acts, labels, unit_index=None, *, max_chunk_bytes: int = 256 * 2**20):
    """AUROC and AP of every coordinate of ``acts`` used directly as a score -- no fitting.

    The neuron-level test of the expert-heads method: a 1-d "probe" on a coordinate is the
    coordinate itself, so its AP is that of the raw activation (paper: expert neurons AP > 0.42).

    Args:
        acts: ``[n, *unit_axes]`` -- every trailing axis indexes units (e.g. ``[n, heads, d_head]``
            gives one unit per head and neuron), or a dict ``{key: [n] or [n, k]}``.
        labels: ``[n]`` integer (or bool) labels. Binary: the positive class is the larger label.
            More classes: one-vs-rest, one row per unit and class.
        unit_index: as in :func:`probe` (names for the unit axes, or an index with one row per unit).
        max_chunk_bytes: bounds the working memory; units are scored in chunks.

    Returns:
        DataFrame: unit columns, [``class``], ``auroc``, ``ap``.
    """
    import pandas as pd

    scores, unit_shape, keys = _score_matrix(acts)
    n, n_units = scores.shape
    codes, classes = _encode_labels(labels, n, None)
    units = _unit_frame(unit_index, unit_shape, keys)
    targets = [(None, codes)] if len(classes) == 2 else [(c, (codes == i).long()) for i, c in enumerate(classes)]
    chunk = max(1, max_chunk_bytes // (64 * n))  # ~8 float64/long temporaries per score
    frames = []
    for cls, target in targets:
        au = torch.empty(n_units, dtype=torch.float64)
        ap = torch.empty(n_units, dtype=torch.float64)
        for start in range(0, n_units, chunk):
            block = scores[:, start : start + chunk]
            au[start : start + chunk] = auroc(block, target).cpu()
            ap[start : start + chunk] = average_precision(block, target).cpu()
        frame = units.copy()
        if cls is not None:
            frame["class"] = cls
        frame["auroc"], frame["ap"] = au.numpy(), ap.numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ============================================================================ inputs and labels


def _units_tensor(X, dtype) -> tuple[torch.Tensor, tuple[int, ...], list | None]:
    """``X`` as ``[n, units, d]`` in ``dtype`` (a view when possible), its unit shape and dict keys."""
    if isinstance(X, Mapping):
        if not X:
            raise ValueError("X is an empty dict; pass {unit_key: [n, d] activations}")
        keys = list(X.keys())
        parts = [_as_float_tensor(X[k], dtype, f"X[{k!r}]") for k in keys]
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1 or parts[0].ndim not in (1, 2):
            raise ValueError(
                f"dict values must all be [n, d] (or all [n]) with the same shape, got {sorted(shapes)}"
            )
        parts = [p if p.ndim == 2 else p[:, None] for p in parts]
        return torch.stack(parts, dim=1), (len(keys),), keys
    acts = _as_float_tensor(X, dtype, "X")
    if acts.ndim < 2:
        raise ValueError(f"X must be [n, units, d] or [n, units]; got shape {tuple(acts.shape)}")
    if acts.ndim == 2:
        return acts[:, :, None], (acts.shape[1],), None
    unit_shape = tuple(acts.shape[1:-1])
    return acts.reshape(acts.shape[0], -1, acts.shape[-1]), unit_shape, None


def _as_float_tensor(x, dtype, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{what} must be numeric, got numpy dtype {array.dtype}")
        t = torch.from_numpy(array)
    if t.dtype != dtype:
        t = t.to(dtype)
    return t


def _labels_array(y, n: int) -> np.ndarray:
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"y must be 1-d with one label per sample ({n}), got shape {labels.shape}")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be integers (or bool), got dtype {labels.dtype}; encode strings with "
            "np.unique(y, return_inverse=True) and cast whole-number floats with y.astype(int)"
        )
    return labels


def _encode_labels(y, n: int, n_classes: int | None) -> tuple[torch.Tensor, np.ndarray]:
    """Class codes ``[n]`` in ``[0, classes)`` and the class values."""
    labels = _labels_array(y, n)
    if n_classes is not None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(
                f"with n_classes={n_classes} labels must lie in [0, {n_classes}); "
                f"got range [{labels.min()}, {labels.max()}]"
            )
        classes = np.arange(n_classes)
        codes = labels.astype(np.int64)
    else:
        classes, codes = np.unique(labels, return_inverse=True)
    present = np.unique(codes)
    if len(present) < 2:
        raise ValueError(
            f"y contains a single class ({classes[present[0]]}); a probe needs at least two classes"
        )
    return torch.from_numpy(codes.astype(np.int64)), classes


def _describe_unit(index: int, unit_shape: tuple, keys) -> str:
    if keys is not None:
        return f"key {keys[index]!r}"
    if len(unit_shape) > 1:
        return f"unit {index} (index {tuple(int(i) for i in np.unravel_index(index, unit_shape))})"
    return f"unit {index}"


def _unit_frame(unit_index, unit_shape: tuple, keys):
    """One row per unit with the unit columns (layer, head, ...)."""
    import pandas as pd

    n_units = int(np.prod(unit_shape))
    if isinstance(unit_index, pd.DataFrame):
        frame = unit_index.reset_index(drop=True).copy()
    elif isinstance(unit_index, pd.MultiIndex):
        names = [name or f"level_{i}" for i, name in enumerate(unit_index.names)]
        frame = pd.DataFrame(list(unit_index), columns=names)
    elif isinstance(unit_index, pd.Index):
        frame = pd.DataFrame({unit_index.name or "unit": np.asarray(unit_index)})
    elif unit_index is None or (
        isinstance(unit_index, Sequence) and all(isinstance(s, str) for s in unit_index)
    ):
        names = list(unit_index) if unit_index is not None else None
        if keys is not None:
            if names and len(names) > 1:
                if not all(isinstance(k, tuple) and len(k) == len(names) for k in keys):
                    raise ValueError(f"unit_index names {names} need dict keys that are {len(names)}-tuples")
                frame = pd.DataFrame(keys, columns=names)
            else:
                frame = pd.DataFrame({(names or ["unit"])[0]: keys})
        else:
            default = ["unit"] if len(unit_shape) == 1 else [f"axis{i + 1}" for i in range(len(unit_shape))]
            names = names or default
            if len(names) != len(unit_shape):
                raise ValueError(
                    f"unit_index names {names} do not match the {len(unit_shape)} unit axes of shape {unit_shape}"
                )
            grid = np.indices(unit_shape).reshape(len(unit_shape), -1)
            frame = pd.DataFrame({name: grid[i] for i, name in enumerate(names)})
    else:
        raise TypeError(
            "unit_index must be None, a list of axis names, or a pandas Index/MultiIndex/DataFrame; "
            f"got {type(unit_index).__name__}"
        )
    if len(frame) != n_units:
        raise ValueError(f"unit_index has {len(frame)} rows but there are {n_units} units")
    return frame


def _score_matrix(acts) -> tuple[torch.Tensor, tuple, list | None]:
    """``[n, units]`` raw scores for :func:`unit_scores` (every trailing axis indexes units)."""
    if isinstance(acts, Mapping):
        keys = list(acts.keys())
        parts = [_as_float_tensor(acts[k], torch.float32, f"acts[{k!r}]") for k in keys]
        if any(p.ndim not in (1, 2) for p in parts) or len({p.shape[0] for p in parts}) != 1:
            raise ValueError("dict values must be [n] or [n, k] with the same n")
        cols, unit_keys = [], []
        for k, p in zip(keys, parts):
            p = p if p.ndim == 2 else p[:, None]
            cols.append(p)
            unit_keys += [k] if p.shape[1] == 1 else [(k, j) for j in range(p.shape[1])]
        scores = torch.cat(cols, dim=1)
        return scores, (scores.shape[1],), unit_keys
    scores = _as_float_tensor(acts, torch.float32, "acts") if not (
        isinstance(acts, torch.Tensor) and acts.dtype == torch.float64
    ) else acts.detach()
    if scores.ndim < 2:
        raise ValueError(f"acts must be [n, units, ...]; got shape {tuple(scores.shape)}")
    return scores.reshape(scores.shape[0], -1), tuple(scores.shape[1:]), None


def _split(codes: np.ndarray, test_size: float, stratify: bool, seed: int):
    """Seeded train/test row indices; stratified keeps each class's share in both parts."""
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    rng = np.random.default_rng(seed)
    n = len(codes)
    if not stratify:
        order = rng.permutation(n)
        n_test = int(round(test_size * n))
        if n_test == 0 or n_test == n:
            raise ValueError(f"test_size={test_size} leaves an empty train or test set for n={n}")
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    train, test = [], []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        if len(members) < 2:
            raise ValueError(
                f"class code {c} has {len(members)} sample(s); stratified splitting needs at least 2 "
                "per class (use stratify=False or drop the class)"
            )
        members = rng.permutation(members)
        n_test = min(max(1, int(round(test_size * len(members)))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


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


# ============================================================================ features per unit


@dataclass
class _ProblemSpec:
    codes: torch.Tensor  # [n] class codes
    n_classes: int
    l2: float
    tol: float
    max_iter: int


@dataclass
class _Features:
    """A batch of units reduced to a logistic regression on centred features with a quadratic penalty.

    ``margin_i = f_i @ V + b`` with ``f = centred features [u, n, p]``; penalty ``l2/2 tr(V^T P V)``
    (``P = None`` means the identity). ``to_raw`` maps the solution to raw-input weights.
    """

    feats: torch.Tensor  # [u, n, p], centred, compute dtype
    gram: torch.Tensor  # [u, p, p] float64, feats^T feats / n
    penalty: torch.Tensor | None  # [u, p, p] float64 P, or None for identity
    penalty_inv: torch.Tensor | None  # [u, p, p] float64 P^{-1}: turns V-gradients into w-gradient norms
    to_raw: Any  # (V [u, p, k], b [u, k]) -> (coef [u, d, k], intercept [u, k]) float64
    rank: torch.Tensor  # [u] dimension fitted in


@dataclass
class _Span:
    """Units sharing a span dimension ``rank``: for each, ``x - anchor = (x - anchor)[cols] @ psi_t^T``
    holds on every row (checked)."""

    units: torch.Tensor  # [g] unit indices within the chunk (CPU)
    cols: torch.Tensor  # [g, rank] long
    psi_t: torch.Tensor  # [g, d, rank] float64
    anchor: torch.Tensor  # [g, d] float64
    rank: int


def _find_spans(x: torch.Tensor, tol: float, seed: int, offset: int, keys, unit_shape) -> list[_Span]:
    """Detect each unit's low-dimensional affine span from sampled rows and verify it on all rows.

    ``x [n, u, d]``. Pivoted Cholesky of the sampled rows' Gram picks rows until the rest lie
    within ``tol / 2`` (relative Frobenius norm) of their span: the rank. A partially pivoted LU of
    those rows then picks ``rank`` well-conditioned feature columns (every entry of L is at most 1)
    and the map ``psi`` from them to the whole row. Every row is checked at once through a few
    random centred row combinations ``h^T x`` (Freivalds' check; one pass over X): the part outside
    the span must be below ``tol`` of their norm. Units without a short span are left out.
    """
    n, n_units, d = x.shape
    m = min(n, d, _SPAN_SAMPLE_ROWS)
    if m < 16:
        return []
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=gen)[:m].to(x.device)
    sample = x[rows].double().transpose(0, 1)  # [u, m, d]
    anchor = sample.mean(1)
    sample -= anchor[:, None, :]
    picked_rows, rank = _pivoted_cholesky(sample @ sample.transpose(1, 2), (tol / 2) ** 2, max_rank=m - 8)
    # A sample that stayed (nearly) full rank may not have seen the whole span: no shortcut.
    reducible = (rank <= m - 8) & (2 * rank <= d)
    if not bool(reducible.any()):
        return []

    probes = torch.randn(n, _SPAN_PROBES, generator=gen, dtype=torch.float64)
    probes = (probes - probes.mean(0)).to(device=x.device, dtype=x.dtype)
    # h^T x for all units in one pass over X; centred h removes the anchor.
    mixed = torch.mm(probes.T, x.reshape(n, n_units * d)) if _is_row_major(x) else torch.einsum("nk,nud->kud", probes, x)
    mixed = mixed.reshape(_SPAN_PROBES, n_units, d).transpose(0, 1).double()  # [u, probes, d]
    if not bool(torch.isfinite(mixed).all()):
        bad = (~torch.isfinite(mixed)).flatten(1).any(1).nonzero()[0].item()
        raise ValueError(
            f"X contains NaN or infinite values (first affected unit: "
            f"{_describe_unit(bad + offset, unit_shape, keys)}); drop or impute them first"
        )
    spans = []
    for r in torch.unique(rank[reducible]).tolist():
        units = (reducible & (rank == r)).nonzero().flatten()
        r = max(int(r), 1)
        basis = torch.gather(sample[units], 1, picked_rows[units, :r, None].expand(-1, -1, d))  # [g, r, d]
        cols, psi_t = _pivot_columns(basis)
        mix = mixed[units]
        outside = mix - torch.gather(mix, 2, cols[:, None, :].expand(-1, _SPAN_PROBES, -1)) @ psi_t.transpose(1, 2)
        ok = (outside.norm(dim=(1, 2)) <= tol * mix.norm(dim=(1, 2))).cpu()
        if bool(ok.any()):
            keep = ok.nonzero().flatten().to(units.device)
            spans.append(_Span(units[keep].cpu(), cols[keep], psi_t[keep], anchor[units[keep]], r))
    return spans


def _pivoted_cholesky(gram: torch.Tensor, rel_energy: float, max_rank: int):
    """Greedy pivoted Cholesky of ``gram [u, m, m]`` (float64), vectorised over units.

    Returns the pivot order ``[u, max_rank]`` and, per unit, the number of pivots after which the
    residual trace is at most ``rel_energy`` of the total (``max_rank + 1`` if never reached).
    """
    u, m, _ = gram.shape
    diag = gram.diagonal(dim1=1, dim2=2).clone()
    total = diag.sum(1)
    lower = gram.new_zeros(u, m, max_rank)
    pivots = torch.zeros(u, max_rank, dtype=torch.long, device=gram.device)
    rank = torch.full((u,), max_rank + 1, dtype=torch.long, device=gram.device)
    for j in range(max_rank):
        done = diag.clamp_min(0).sum(1) <= rel_energy * total
        rank = torch.where(done & (rank > j), j, rank)
        if bool(done.all()):
            break
        i = diag.argmax(1)
        pivots[:, j] = i
        column = torch.gather(gram, 2, i[:, None, None].expand(u, m, 1))[..., 0]
        row_i = torch.gather(lower[:, :, :j], 1, i[:, None, None].expand(u, 1, j))  # [u, 1, j]
        column = column - (lower[:, :, :j] @ row_i.transpose(1, 2))[..., 0]
        lower[:, :, j] = column / torch.gather(diag, 1, i[:, None]).clamp_min(1e-300).sqrt()
        diag -= lower[:, :, j] ** 2
        diag.scatter_(1, i[:, None], 0.0)
    else:
        done = diag.clamp_min(0).sum(1) <= rel_energy * total
        rank = torch.where(done & (rank > max_rank), max_rank, rank)
    return pivots, rank


def _pivot_columns(basis: torch.Tensor):
    """Well-conditioned columns of row bases ``[g, r, d]`` and the map back to whole rows.

    LU with partial pivoting of ``basis^T = P L U`` picks the first ``r`` pivot rows as the columns
    ``J``; every row ``x`` in the span then satisfies ``x = x[J] @ psi`` with
    ``psi^T = P L L[:r]^{-1}``. Returns ``J [g, r]`` and ``psi^T [g, d, r]``.
    """
    g, r, d = basis.shape
    lu, swaps, _ = torch.linalg.lu_factor_ex(basis.transpose(1, 2))  # [g, d, r]
    perm = torch.arange(d, device=basis.device).repeat(g, 1)
    swaps = swaps.long() - 1  # LAPACK: row i was swapped with row swaps[i]
    for i in range(r):
        here, there = perm[:, i].clone(), torch.gather(perm, 1, swaps[:, i : i + 1])[:, 0]
        perm[:, i] = there
        perm.scatter_(1, swaps[:, i : i + 1], here[:, None])
    lower = lu.tril(-1)
    lower[:, :r, :r] += torch.eye(r, dtype=lu.dtype, device=lu.device)
    mapped = torch.linalg.solve_triangular(lower[:, :r, :r], lower, upper=False, left=False, unitriangular=True)
    psi_t = torch.empty_like(mapped).scatter_(1, perm[:, :, None].expand(g, d, r), mapped)  # P @ mapped
    return perm[:, :r], psi_t


def _span_columns(x: torch.Tensor, span: _Span) -> torch.Tensor:
    """The pivot columns of every unit of ``span``: ``[n, g, rank]`` (one gather over X)."""
    n, _, d = x.shape
    units, cols = span.units.to(x.device), span.cols
    if _is_row_major(x):
        index = (units[:, None] * d + cols).reshape(-1)
        return x.reshape(n, -1).index_select(1, index).reshape(n, len(units), span.rank)
    return torch.gather(x[:, units], 2, cols[None].expand(n, -1, -1))


def _span_features(raw: torch.Tensor, span: _Span, rows: torch.Tensor, standardize: bool) -> _Features:
    """Features of in-span units ``rows`` (of the group) from their pivot columns ``raw [n, g, r]``.

    For in-span rows ``x - mean = (x - mean)[cols] @ psi``, so with ``D = diag(std)`` (or ``I``) the
    standardised weight ``w~ = D^-1 psi^T P v`` gives margin ``f @ v`` and ``||w~||^2 = v^T P v`` for
    ``P = (psi D^-2 psi^T)^-1`` -- the same objective, in ``r`` coordinates.
    """
    n = raw.shape[0]
    rows = rows.to(raw.device)
    raw = raw[:, rows]  # [n, u, r]
    cols = span.cols[rows]
    # Centring on any fixed vector is an exact reparametrisation (the intercept absorbs it), so the
    # float32 mean is enough; it only needs to be used consistently in the back-map.
    mean = raw.mean(0)  # [u, r]
    feats = torch.empty(raw.shape[1], n, raw.shape[2], dtype=raw.dtype, device=raw.device)
    torch.sub(raw.transpose(0, 1), mean[:, None, :], out=feats)  # one pass: centre and transpose
    mean = mean.double()
    gram = _gram(feats, exact=standardize)
    psi_t, anchor = span.psi_t[rows], span.anchor[rows]
    # Full-row mean and scale from the pivot columns (exact for in-span rows).
    mean_row = anchor + ((mean - torch.gather(anchor, 1, cols))[:, None, :] @ psi_t.transpose(1, 2))[:, 0]
    std = _row_std(gram, psi_t) if standardize else torch.ones_like(anchor)
    scaled = psi_t / std[:, :, None]  # D^-1 psi^T  [u, d, r]
    penalty_inv = scaled.transpose(1, 2) @ scaled  # psi D^-2 psi^T
    penalty = torch.linalg.inv(penalty_inv)

    def to_raw(v, b):
        coef = (scaled / std[:, :, None]) @ (penalty @ v.double())  # D^-2 psi^T P v  [u, d, k]
        return coef, b.double() - (mean_row[:, None, :] @ coef)[:, 0]

    return _Features(feats, gram, penalty, penalty_inv, to_raw, torch.full((len(rows),), span.rank))


def _gram(feats: torch.Tensor, exact: bool) -> torch.Tensor:
    """``feats^T feats / n`` (float64). Only exact when it feeds statistics; as a preconditioner
    (L-BFGS still converges to the exact optimum) ``_PRECONDITIONER_ROWS`` evenly spaced rows do."""
    n = feats.shape[1]
    if not exact and n > 2 * _PRECONDITIONER_ROWS:
        feats = feats[:, :: n // _PRECONDITIONER_ROWS]
    return (feats.transpose(1, 2) @ feats).double() / feats.shape[1]


def _row_std(gram: torch.Tensor, psi_t: torch.Tensor) -> torch.Tensor:
    """Per-feature standard deviation ``[u, d]`` of in-span rows, sqrt(diag(psi^T Cov psi)); 0 -> 1."""
    std = ((psi_t @ gram) * psi_t).sum(-1).clamp_min(0).sqrt()
    return torch.where(std > 0, std, torch.ones_like(std))


def _is_row_major(x: torch.Tensor) -> bool:
    """Whether ``x [n, u, d]`` can be viewed as ``[n, u * d]`` (units side by side in each row)."""
    return x.stride(2) == 1 and x.stride(1) == x.shape[2]


def _dense_features(x: torch.Tensor, standardize: bool, offset: int, keys, unit_shape, gram: bool = True) -> _Features:
    """All ``d`` coordinates as features (centred, optionally standardised); ``x [n, u, d]``."""
    n, n_units, d = x.shape
    feats = x.transpose(0, 1).contiguous()  # [u, n, d]
    mean = feats.mean(1, dtype=torch.float64)
    if not bool(torch.isfinite(mean).all()):
        bad = (~torch.isfinite(mean)).any(-1).nonzero()[0].item()
        raise ValueError(
            f"X contains NaN or infinite values (first affected unit: "
            f"{_describe_unit(bad + offset, unit_shape, keys)}); drop or impute them first"
        )
    feats -= mean[:, None, :].to(feats.dtype)
    std = torch.ones_like(mean)
    if standardize:
        std = feats.pow(2).mean(1, dtype=torch.float64).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        feats /= std[:, None, :].to(feats.dtype)
    gram = _gram(feats, exact=False) if gram and d <= _DENSE_PRECONDITIONER_MAX_DIM else None

    def to_raw(v, b):
        coef = v.double() / std[:, :, None]
        return coef, b.double() - (mean[:, None, :] @ coef)[:, 0]

    return _Features(feats, gram, None, None, to_raw, torch.full((n_units,), d))


# ============================================================================ solvers


@dataclass
class _Fit:
    coef: torch.Tensor  # [u, d, k] float64, raw-input weights
    intercept: torch.Tensor  # [u, k] float64
    n_iter: torch.Tensor  # [u]
    converged: torch.Tensor  # [u] bool
    rank: torch.Tensor  # [u]


def _fit_batches(rows, make_features, p: int, n: int, itemsize: int, problem: _ProblemSpec, chunk_rows=None):
    """Fit units in batches whose features stay in cache; ``make_features(rows)`` builds a batch.

    Returns ``[(chunk unit indices, _Fit)]``; ``chunk_rows`` maps ``rows`` to chunk indices.
    """
    size = max(1, _SOLVER_BATCH_BYTES // max(1, n * p * itemsize))
    batches = [rows[start : start + size] for start in range(0, len(rows), size)]

    def fit(batch):
        feats = make_features(batch)
        v, b, n_iter, converged = _lbfgs(feats, problem)
        coef, intercept = feats.to_raw(v, b)
        return batch if chunk_rows is None else chunk_rows[batch], _Fit(coef, intercept, n_iter, converged, feats.rank)

    # A batch's tensors are cache-sized: intra-op threads cost more than they save (and stall badly
    # on a shared machine). Use the cores on separate batches instead (torch releases the GIL).
    workers = min(torch.get_num_threads(), len(batches))
    if workers <= 1 or problem.codes.device.type != "cpu":
        return [fit(batch) for batch in batches]
    with _intra_op_threads(1), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fit, batches))


@contextmanager
def _intra_op_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Logistic:
    """Loss, gradient and curvature model of a batch of penalised logistic regressions.

    Parameters ``V [u, k, p]`` and ``b [u, k]``; logits ``M [u, n, k]``; ``k = 1`` (sigmoid) or
    ``classes`` (softmax). The features are used only as ``feats [u, n, p]`` in plain ``bmm``s
    (no transposed copy: it would double the memory a batch keeps in cache).
    """

    def __init__(self, feats: _Features, problem: _ProblemSpec, preconditioner: bool = True):
        f = feats.feats
        self.feats = f
        self.u, self.n, self.p = f.shape
        self.binary = problem.n_classes == 2
        self.k = 1 if self.binary else problem.n_classes
        self.target = _targets(problem.codes, problem.n_classes, f.dtype)  # [1, n, k]
        self.l2 = problem.l2
        self.penalty = None if feats.penalty is None else feats.penalty.to(f.dtype)
        self.penalty_inv = None if feats.penalty_inv is None else feats.penalty_inv.to(f.dtype)
        # Curvature at the start (all probabilities 1/k): c * Gram + l2 * P, c = diag block of the
        # softmax Hessian. Its inverse preconditions L-BFGS (the exact Hessian at 0 when k = 1).
        self.curv = 0.25 if self.binary else (self.k - 1) / self.k**2
        if not preconditioner:
            return
        pen = feats.penalty if feats.penalty is not None else torch.eye(self.p, dtype=torch.float64, device=f.device)
        self.inv_hess = self.inv_diag = None
        if feats.gram is not None:
            hess = self.curv * feats.gram + self.l2 * pen
            chol, info = torch.linalg.cholesky_ex(hess)
            if bool((info != 0).any()):  # numerically indefinite: fall back to the diagonal
                self.inv_diag = 1.0 / hess.diagonal(dim1=-2, dim2=-1).to(f.dtype)
            else:
                self.inv_hess = torch.cholesky_inverse(chol).to(f.dtype)
        else:
            diag = self.curv * f.pow(2).mean(1, dtype=torch.float64) + self.l2 * pen.diagonal(dim1=-2, dim2=-1)
            self.inv_diag = 1.0 / diag.to(f.dtype)

    def take(self, rows: torch.Tensor) -> "_Logistic":
        """The same model restricted to units ``rows`` (drops finished units from a batch)."""
        new = object.__new__(_Logistic)
        new.__dict__.update(self.__dict__)
        for name in ("feats", "penalty", "penalty_inv", "inv_hess", "inv_diag"):
            value = getattr(self, name, None)
            if value is not None:
                setattr(new, name, value[rows])
        new.u = len(rows)
        return new

    def margins(self, V, b):
        """``[u, n, k]`` logits. (``bmm`` + add: ``baddbmm`` takes a slow non-BLAS path on CPU.)"""
        return torch.bmm(self.feats, V.transpose(1, 2)) + b[:, None, :]

    def residual(self, M):
        """``(p - y) / n  [u, n, k]``."""
        return _probs_minus_target(M, self.target, self.binary) / self.n

    def loss(self, M):
        """Per-unit mean cross-entropy ``[u]`` (float64 sums)."""
        if self.binary:
            ce = torch.nn.functional.softplus(M) - self.target * M
        else:
            ce = torch.logsumexp(M, dim=2) - (self.target * M).sum(2)
        return ce.sum((1, 2) if ce.ndim == 3 else 1, dtype=torch.float64) / self.n

    def penalised(self, V, VP):
        return 0.5 * self.l2 * (V * VP).sum((1, 2), dtype=torch.float64)

    def times_penalty(self, V):
        return V if self.penalty is None else torch.bmm(V, self.penalty)

    def grad(self, resid, VP):
        """Gradient ``([u, k, p], [u, k])`` from the residual and ``V P``."""
        return torch.bmm(resid.transpose(1, 2), self.feats) + self.l2 * VP, resid.sum(1)

    def grad_norm(self, gV, gb):
        """Euclidean norm of the gradient w.r.t. the (standardised) weights and intercept."""
        dual = gV if self.penalty_inv is None else torch.bmm(gV, self.penalty_inv)
        return ((gV * dual).sum((1, 2)) + (gb * gb).sum(1)).clamp_min(0).sqrt()

    def precondition(self, gV, gb):
        """Apply the inverse start curvature to a gradient-shaped pair."""
        if self.inv_hess is not None:
            return torch.bmm(gV, self.inv_hess), gb / self.curv
        return gV * self.inv_diag[:, None, :], gb / self.curv


def _targets(codes: torch.Tensor, n_classes: int, dtype) -> torch.Tensor:
    """``[1, n, k]`` regression targets: the label for binary, one-hot otherwise."""
    if n_classes == 2:
        return codes.to(dtype)[None, :, None]
    return (codes[:, None] == torch.arange(n_classes, device=codes.device)).to(dtype)[None]


def _probs_minus_target(M, target, binary: bool):
    return (torch.sigmoid(M) if binary else torch.softmax(M, dim=2)) - target


def _dot(aV, ab, cV, cb):
    """Per-unit inner product of two (V, b) pairs, ``[u]``."""
    return (aV * cV).sum((1, 2)) + (ab * cb).sum(1)


def _lbfgs(feats: _Features, problem: _ProblemSpec):
    """Batched L-BFGS with per-unit line searches; returns ``V [u, p, k]``, ``b``, iterations, converged.

    The line search moves along precomputed direction margins (``M + t * dM``), so a trial costs
    one batched product (its gradient). A step is accepted when the directional derivative is
    still <= 0 (the loss decreased: it is convex), else on the Armijo condition (float64 loss sums,
    computed only then), or -- once the expected decrease is below float32 resolution -- when the
    derivative has shrunk to 0.9 of its start. Units stop independently: converged (gradient norm
    <= tol) or stalled (no acceptable step); finished units are dropped from the working set once
    they are a quarter of it, so a batch costs its units' own iteration counts, not the slowest's.
    """
    lg = _Logistic(feats, problem)
    u, k, p = lg.u, lg.k, lg.p
    dtype, device = lg.feats.dtype, lg.feats.device
    tiny = torch.finfo(dtype).tiny
    out_V = torch.zeros(u, k, p, dtype=dtype, device=device)
    out_b = torch.zeros(u, k, dtype=dtype, device=device)
    n_iter = torch.zeros(u, dtype=torch.long, device=device)
    out_converged = torch.zeros(u, dtype=torch.bool, device=device)
    where = torch.arange(u, device=device)  # working-set row -> unit of the batch

    V = torch.zeros(u, k, p, dtype=dtype, device=device)
    b = torch.zeros(u, k, dtype=dtype, device=device)
    M = lg.margins(V, b)
    VP = lg.times_penalty(V)
    gV, gb = lg.grad(lg.residual(M), VP)
    f = None  # loss at the current point, computed on demand
    history: list[tuple] = []
    stalled = torch.zeros(u, dtype=torch.bool, device=device)
    converged = lg.grad_norm(gV, gb) <= problem.tol
    for iteration in range(problem.max_iter + 1):
        finished = converged | stalled
        if bool(finished.any()):
            out_V[where[finished]], out_b[where[finished]] = V[finished], b[finished]
            out_converged[where[finished]] = converged[finished]
            if bool(finished.all()):
                break
            if 4 * int(finished.sum()) >= len(where):  # compact the working set
                keep = (~finished).nonzero().flatten()
                lg, where = lg.take(keep), where[keep]
                V, b, M, VP, gV, gb = (t[keep] for t in (V, b, M, VP, gV, gb))
                history = [tuple(t[keep] for t in pair) for pair in history]
                stalled, converged = stalled[keep], converged[keep]
                f = None
        if iteration == problem.max_iter:
            break
        active = ~(converged | stalled)
        n_iter[where] += active
        # two-loop recursion, with the start curvature as the initial inverse Hessian
        qV, qb = gV.clone(), gb.clone()
        alphas = []
        for sV, sb, yV, yb, rho in reversed(history):
            a = rho * _dot(sV, sb, qV, qb)
            qV -= a[:, None, None] * yV
            qb -= a[:, None] * yb
            alphas.append(a)
        qV, qb = lg.precondition(qV, qb)
        for (sV, sb, yV, yb, rho), a in zip(history, reversed(alphas)):
            coeff = a - rho * _dot(yV, yb, qV, qb)
            qV += coeff[:, None, None] * sV
            qb += coeff[:, None] * sb
        dV, db = -qV * active[:, None, None], -qb * active[:, None]
        slope0 = _dot(gV, gb, dV, db)
        dM = lg.margins(dV, db)
        dP = lg.times_penalty(dV)
        step = torch.ones(len(where), dtype=dtype, device=device)
        accepted = ~active
        new = None
        for _trial in range(30):
            t = step[:, None, None]
            Mt, VPt, Vt = M + t * dM, VP + t * dP, V + t * dV
            gVt, gbt = lg.grad(lg.residual(Mt), VPt)
            slope = _dot(gVt, gbt, dV, db)
            ok = ~accepted & (slope <= 0)
            if bool((~accepted & ~ok).any()):  # overshoot: decide on the loss itself
                if f is None:
                    f = lg.loss(M) + lg.penalised(V, VP)
                ft = lg.loss(Mt) + lg.penalised(Vt, VPt)
                armijo = ft <= f + 1e-4 * step * slope0
                unresolvable = (step * slope0).abs() <= 1e-6 * f.abs()
                ok |= ~accepted & (armijo | (unresolvable & (slope <= 0.9 * slope0.abs())))
            new = _take(ok, (Vt, b + step[:, None] * db, Mt, VPt, gVt, gbt), new)
            accepted |= ok
            if bool(accepted.all()):
                break
            shrink = (slope0 / (slope0 - slope)).nan_to_num(0.5).clamp(0.1, 0.5)
            step = torch.where(accepted, step, step * shrink)
        stalled |= ~accepted
        moved = accepted & active
        if not bool(moved.all()):
            new = _take(moved, new, (V, b, M, VP, gV, gb))
        Vn, bn, Mn, VPn, gVn, gbn = new
        sV, sb, yV, yb = Vn - V, bn - b, gVn - gV, gbn - gb
        sy = _dot(sV, sb, yV, yb)
        curvature_ok = sy > 1e-10 * torch.sqrt(_dot(sV, sb, sV, sb) * _dot(yV, yb, yV, yb))
        history.append((sV, sb, yV, yb, torch.where(curvature_ok, 1.0 / sy.clamp_min(tiny), torch.zeros_like(sy))))
        del history[:-_LBFGS_HISTORY]
        V, b, M, VP, gV, gb, f = Vn, bn, Mn, VPn, gVn, gbn, None
        converged |= lg.grad_norm(gV, gb) <= problem.tol
    unfinished = ~(converged | stalled)
    if bool(unfinished.any()):  # max_iter reached
        out_V[where[unfinished]], out_b[where[unfinished]] = V[unfinished], b[unfinished]
    return out_V.transpose(1, 2), out_b, n_iter.cpu(), out_converged.cpu()


def _expand(mask, like):
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def _take(ok, values, previous):
    """Per unit, ``values`` where ``ok`` else ``previous`` (the first call takes ``values``)."""
    if previous is None:
        return values
    return tuple(torch.where(_expand(ok, v), v, old) for v, old in zip(values, previous))


def _fit_adam(feats: _Features, problem: _ProblemSpec, lr: float, batch_size: int, seed: int) -> _Fit:
    """Mini-batch Adam on the same objective (the expert-heads paper's training), all units at once.

    Rows are shuffled with one seeded permutation per epoch, shared by all units.
    """
    f = feats.feats  # [u, n, p]
    u, n, p = f.shape
    lg = _Logistic(feats, problem, preconditioner=False)
    k, device = lg.k, f.device
    V = torch.zeros(u, k, p, dtype=f.dtype, device=device)
    b = torch.zeros(u, k, dtype=f.dtype, device=device)
    moments = [torch.zeros_like(V), torch.zeros_like(V), torch.zeros_like(b), torch.zeros_like(b)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _epoch in range(problem.max_iter):
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            fb = f[:, rows]  # [u, B, p]
            M = torch.bmm(fb, V.transpose(1, 2)) + b[:, None, :]  # [u, B, k]
            resid = _probs_minus_target(M, lg.target[:, rows], lg.binary) / len(rows)
            gV = torch.bmm(resid.transpose(1, 2), fb) + problem.l2 * V
            gb = resid.sum(1)
            step += 1
            for param, grad, m, v in ((V, gV, moments[0], moments[1]), (b, gb, moments[2], moments[3])):
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
                param.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
    gV, gb = lg.grad(lg.residual(lg.margins(V, b)), V)
    converged = (lg.grad_norm(gV, gb) <= problem.tol).cpu()
    coef, intercept = feats.to_raw(V.transpose(1, 2), b)
    return _Fit(coef, intercept, torch.full((u,), problem.max_iter), converged, feats.rank)
