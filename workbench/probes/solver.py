"""The solvers behind :class:`~workbench.probes.LinearProbes`: many penalised logistic
regressions minimised together, as one batched tensor program.

Kept apart from the estimator because it is pure optimisation: it sees a batch of units only as
:class:`Features` (centred features ``[u, n, p]``, a quadratic penalty and a map back to raw-input
weights), whether those are all ``d`` coordinates (:func:`dense_features`) or a unit's low-rank span
(:mod:`workbench.probes.span`). Every unit minimises::

    mean_i CE(softmax(f_i V + b), y_i) + l2/2 * tr(V^T P V)        (P = I unless a span says otherwise)

- :func:`fit_lbfgs` -- full-batch L-BFGS, batches of units sized to stay in cache, per-unit line
  searches and stopping, preconditioned by each unit's start Hessian (binary float32 problems on
  CPU run it compiled: :mod:`workbench.probes.kernels`).
- :func:`fit_adam` -- mini-batch Adam (the expert-heads paper's training) on the same objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import kernels
from .inputs import nonfinite_error
from .threads import map_tasks

__all__ = ["Features", "Fit", "Problem", "dense_features", "feature_products", "fit_adam", "fit_lbfgs", "gram", "residual_products"]

_SOLVER_BATCH_BYTES = 16 * 2**20  # features per solver batch: stays in cache across iterations
_PRECONDITIONER_ROWS = 2048  # rows whose Gram approximates the start Hessian (when not needed exactly)
_DENSE_PRECONDITIONER_MAX_DIM = 1024  # above this, a diagonal preconditioner (a p x p inverse per unit is too big)
_LBFGS_HISTORY = 10


@dataclass
class Problem:
    """What every unit is fitted to: labels, penalty and stopping rule."""

    codes: torch.Tensor  # [n] class codes in [0, n_classes)
    n_classes: int
    l2: float
    tol: float
    max_iter: int
    solver: str = "auto"  # L-BFGS backend: "torch", "compiled" (binary float32 on CPU) or "auto"


@dataclass
class Features:
    """A batch of units reduced to a logistic regression on centred features with a quadratic penalty.

    ``margin_i = f_i @ V + b`` with ``f = centred features [u, n, p]``; penalty ``l2/2 tr(V^T P V)``
    (``P = None`` means the identity). ``to_raw`` maps the solution to raw-input weights.
    """

    feats: torch.Tensor  # [u, n, p], centred, compute dtype
    gram: torch.Tensor | None  # [u, p, p] float64, feats^T feats / n (None: diagonal preconditioner)
    penalty: torch.Tensor | None  # [u, p, p] float64 P, or None for identity
    penalty_inv: torch.Tensor | None  # [u, p, p] float64 P^{-1}: turns V-gradients into w-gradient norms
    to_raw: Callable  # (V [u, p, k], b [u, k]) -> (coef [u, d, k], intercept [u, k]) float64
    rank: torch.Tensor  # [u] dimension fitted in


@dataclass
class Fit:
    """A fitted batch of units, in raw-input coordinates."""

    coef: torch.Tensor  # [u, d, k] float64
    intercept: torch.Tensor  # [u, k] float64
    n_iter: torch.Tensor  # [u]
    converged: torch.Tensor  # [u] bool
    rank: torch.Tensor  # [u]


# ============================================================================ features


def gram(feats: torch.Tensor, exact: bool) -> torch.Tensor:
    """``feats^T feats / n`` (float64) of ``feats [u, n, p]``. Only exact when it feeds statistics;
    as a preconditioner (L-BFGS still converges to the exact optimum) ``_PRECONDITIONER_ROWS``
    evenly spaced rows do."""
    n = feats.shape[1]
    if not exact and n > 2 * _PRECONDITIONER_ROWS:
        feats = feats[:, :: n // _PRECONDITIONER_ROWS]
    return (feats.transpose(1, 2) @ feats).double() / feats.shape[1]


def dense_features(x: torch.Tensor, standardize: bool, offset: int, keys, unit_shape, with_gram: bool = True) -> Features:
    """All ``d`` coordinates of ``x [n, u, d]`` as features (centred, optionally standardised).

    ``offset``, ``keys`` and ``unit_shape`` locate the batch's units in the user's X for errors.
    """
    n, n_units, d = x.shape
    feats = x.transpose(0, 1).contiguous()  # [u, n, d]
    mean = feats.mean(1, dtype=torch.float64)
    if not bool(torch.isfinite(mean).all()):
        bad = (~torch.isfinite(mean)).any(-1).nonzero()[0].item()
        raise nonfinite_error(bad + offset, unit_shape, keys)
    feats -= mean[:, None, :].to(feats.dtype)
    std = torch.ones_like(mean)
    if standardize:
        std = feats.pow(2).mean(1, dtype=torch.float64).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        feats /= std[:, None, :].to(feats.dtype)
    g = gram(feats, exact=False) if with_gram and d <= _DENSE_PRECONDITIONER_MAX_DIM else None

    def to_raw(v, b):
        coef = v.double() / std[:, :, None]
        return coef, b.double() - (mean[:, None, :] @ coef)[:, 0]

    return Features(feats, g, None, None, to_raw, torch.full((n_units,), d))


# ============================================================================ L-BFGS


def fit_lbfgs(rows: torch.Tensor, make_features, p: int, n: int, itemsize: int, problem: Problem):
    """Fit units ``rows`` with L-BFGS in batches whose features stay in cache.

    ``make_features(batch)`` builds the :class:`Features` of a batch (a slice of ``rows``) with
    ``p`` features per unit. Returns ``[(batch, Fit)]`` covering ``rows``.
    """
    size = max(1, _SOLVER_BATCH_BYTES // max(1, n * p * itemsize))
    batches = [rows[start : start + size] for start in range(0, len(rows), size)]

    def fit(batch):
        feats = make_features(batch)
        v, b, n_iter, converged = lbfgs(feats, problem)
        coef, intercept = feats.to_raw(v, b)
        return batch, Fit(coef, intercept, n_iter, converged, feats.rank)

    # Batches are independent: they share the cores as the thread policy says (serially when this
    # chunk already runs in a worker of LinearProbes.fit).
    return map_tasks(fit, batches, problem.codes.device)


class _Logistic:
    """Loss, gradient and curvature model of a batch of penalised logistic regressions.

    Parameters ``V [a, k, p]`` and ``b [a, k]`` for the ``a`` active units ``units`` (indices into
    the batch); logits ``M [a, k, n]``; ``k = 1`` (sigmoid) or ``classes`` (softmax). The features
    ``feats [u, n, p]`` are never copied: dropping finished units only re-indexes (a copy of a
    batch's features costs as much as an iteration), and each unit is read as one ``[n, p]`` matrix.
    """

    def __init__(self, feats: Features, problem: Problem, preconditioner: bool = True):
        f = feats.feats
        self.feats = f
        u, self.n, self.p = f.shape
        self.units = torch.arange(u)
        self.binary = problem.n_classes == 2
        self.k = 1 if self.binary else problem.n_classes
        self.target = _targets(problem.codes, problem.n_classes, f.dtype)  # [1, k, n]
        self.l2 = problem.l2
        self.penalty = None if feats.penalty is None else feats.penalty.to(f.dtype)
        self.penalty_inv = None if feats.penalty_inv is None else feats.penalty_inv.to(f.dtype)
        # Curvature at the start (all probabilities 1/k): c * Gram + l2 * P, c = diag block of the
        # softmax Hessian. Its inverse preconditions L-BFGS (the exact Hessian at 0 when k = 1).
        self.curv = 0.25 if self.binary else (self.k - 1) / self.k**2
        self.inv_hess = self.inv_diag = None
        if not preconditioner:
            return
        pen = feats.penalty if feats.penalty is not None else torch.eye(self.p, dtype=torch.float64, device=f.device)
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

    @property
    def u(self) -> int:
        return len(self.units)

    def take(self, rows: torch.Tensor) -> "_Logistic":
        """The same model restricted to active units ``rows`` (drops finished units)."""
        new = object.__new__(_Logistic)
        new.__dict__.update(self.__dict__)
        for name in ("penalty", "penalty_inv", "inv_hess", "inv_diag"):
            value = getattr(self, name)
            if value is not None:
                setattr(new, name, value[rows])
        new.units = self.units[rows.cpu()]
        return new

    def margins(self, V, b):
        """``[a, k, n]`` logits."""
        return feature_products(self.feats, V, self.units) + b[:, :, None]

    def residual(self, M):
        """``(p - y) / n  [a, k, n]``."""
        return _probs_minus_target(M, self.target, self.binary) / self.n

    def loss(self, M):
        """Per-unit mean cross-entropy ``[a]`` (float64 sums)."""
        if self.binary:
            # softplus(M) = max(M, 0) + log(1 + exp(-|M|)); spelled out because softplus and
            # log1p are not vectorised on CPU (5x slower); log(1 + e) only loses e < 6e-8.
            ce = M.clamp_min(0) + torch.log(1 + torch.exp(-M.abs())) - self.target * M  # [a, 1, n]
        else:
            ce = torch.logsumexp(M, dim=1) - (self.target * M).sum(1)  # [a, n]
        return ce.sum(tuple(range(1, ce.ndim)), dtype=torch.float64) / self.n

    def penalised(self, V, VP):
        return 0.5 * self.l2 * (V * VP).sum((1, 2), dtype=torch.float64)

    def times_penalty(self, V):
        return V if self.penalty is None else torch.bmm(V, self.penalty)

    def grad(self, resid, VP):
        """Gradient ``([a, k, p], [a, k])`` from the residual and ``V P``."""
        return residual_products(self.feats, resid, self.units) + self.l2 * VP, resid.sum(2)

    def grad_norm(self, gV, gb):
        """Euclidean norm of the gradient w.r.t. the (standardised) weights and intercept."""
        dual = gV if self.penalty_inv is None else torch.bmm(gV, self.penalty_inv)
        return ((gV * dual).sum((1, 2)) + (gb * gb).sum(1)).clamp_min(0).sqrt()

    def precondition(self, gV, gb):
        """Apply the inverse start curvature to a gradient-shaped pair."""
        if self.inv_hess is not None:
            return torch.bmm(gV, self.inv_hess), gb / self.curv
        return gV * self.inv_diag[:, None, :], gb / self.curv


# The two products every solver iteration makes with the features. On CPU they run one unit at a
# time: a batched bmm of these skinny products is 5-8x slower there than the same BLAS calls made
# per unit (MKL, measured), and a loop needs no copy of a working set's features. Elsewhere, one bmm.


def feature_products(feats: torch.Tensor, V: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
    """``V[j] @ feats[units[j]]^T`` for ``feats [u, n, p]``, ``V [a, k, p]``: ``[a, k, n]``."""
    if feats.device.type != "cpu":
        f = feats if units is None or len(units) == feats.shape[0] else feats[units.to(feats.device)]
        return torch.bmm(V, f.transpose(1, 2))
    units = range(feats.shape[0]) if units is None else units.tolist()
    out = V.new_empty(len(units), V.shape[1], feats.shape[1])
    for j, unit in enumerate(units):
        torch.mm(V[j], feats[unit].T, out=out[j])
    return out


def residual_products(feats: torch.Tensor, R: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
    """``R[j] @ feats[units[j]]`` for ``feats [u, n, p]``, ``R [a, k, n]``: ``[a, k, p]``."""
    if feats.device.type != "cpu":
        f = feats if units is None or len(units) == feats.shape[0] else feats[units.to(feats.device)]
        return torch.bmm(R, f)
    units = range(feats.shape[0]) if units is None else units.tolist()
    out = R.new_empty(len(units), R.shape[1], feats.shape[2])
    for j, unit in enumerate(units):
        torch.mm(R[j], feats[unit], out=out[j])
    return out


def _targets(codes: torch.Tensor, n_classes: int, dtype) -> torch.Tensor:
    """``[1, k, n]`` regression targets: the label for binary, one-hot otherwise."""
    if n_classes == 2:
        return codes.to(dtype)[None, None, :]
    return (codes[None, :] == torch.arange(n_classes, device=codes.device)[:, None]).to(dtype)[None]


def _probs_minus_target(M, target, binary: bool):
    return (torch.sigmoid(M) if binary else torch.softmax(M, dim=1)) - target


def lbfgs(feats: Features, problem: Problem):
    """Batched L-BFGS with per-unit line searches; returns ``V [u, p, k]``, ``b``, iterations, converged.

    Each unit's parameters are one flat vector ``z = (V, b)``. The direction comes from the compact
    form of the L-BFGS inverse Hessian (Byrd, Nocedal & Schnabel 1994, thm 2.2) with the start
    curvature as ``H0``: a dozen batched products on ``[units, history, dim]`` tensors instead of
    the two-loop recursion's hundreds of small ops (on CPU the solver is bound by op overhead).
    The line search moves along precomputed direction margins (``M + t * dM``), so a trial costs
    one product (its gradient). A step is accepted when the directional derivative is still <= 0
    (the loss decreased: it is convex), else on the Armijo condition (float64 loss sums, computed
    only then), or -- once the expected decrease is below float32 resolution -- when the
    derivative has shrunk to 0.9 of its start. Units stop independently: converged (gradient norm
    <= tol) or stalled (no acceptable step) and leave the working set at once (the features are
    only re-indexed), so a batch costs its units' own iteration counts, not the slowest's.

    Binary float32 batches on CPU run the same iteration compiled, one unit at a time
    (:func:`~workbench.probes.kernels.lbfgs_binary`; ``problem.solver`` chooses).
    """
    lg = _Logistic(feats, problem)
    if _compiled_kernel_applies(lg, problem.solver):
        target = lg.target[0, 0]
        return kernels.lbfgs_binary(lg.feats, target, lg.inv_hess, lg.inv_diag, lg.penalty, lg.penalty_inv, lg.curv, lg.l2, problem.tol, problem.max_iter)
    u, k, p = lg.u, lg.k, lg.p
    kp = k * p
    dtype, device = lg.feats.dtype, lg.feats.device

    def split(z):
        return z[:, :kp].view(len(z), k, p), z[:, kp:]

    def flat(gV, gb):
        return torch.cat([gV.flatten(1), gb], 1)

    def gradient(M, VP):
        return flat(*lg.grad(lg.residual(M), VP))

    def grad_norm(g):
        return lg.grad_norm(*split(g))

    def h0(g):
        return flat(*lg.precondition(*split(g)))

    out_z = torch.zeros(u, kp + k, dtype=dtype, device=device)
    n_iter = torch.zeros(u, dtype=torch.long, device=device)
    out_converged = torch.zeros(u, dtype=torch.bool, device=device)
    where = torch.arange(u, device=device)  # working-set row -> unit of the batch

    z = torch.zeros(u, kp + k, dtype=dtype, device=device)
    M = lg.margins(*split(z))
    VP = lg.times_penalty(split(z)[0])
    g = gradient(M, VP)
    f = None  # loss at the current point, computed on demand
    S = Y = HY = None  # history [a, m, D]: steps, gradient changes, H0 @ gradient changes
    stalled = torch.zeros(u, dtype=torch.bool, device=device)
    converged = grad_norm(g) <= problem.tol
    for iteration in range(problem.max_iter + 1):
        finished = converged | stalled
        if bool(finished.any()):
            out_z[where[finished]] = z[finished]
            out_converged[where[finished]] = converged[finished]
            if bool(finished.all()):
                break
            keep = (~finished).nonzero().flatten()
            lg, where = lg.take(keep), where[keep]
            z, M, VP, g, stalled, converged = (t[keep] for t in (z, M, VP, g, stalled, converged))
            if S is not None:
                S, Y, HY = S[keep], Y[keep], HY[keep]
            f = None
        if iteration == problem.max_iter:
            break
        n_iter[where] += 1
        d = -_compact_lbfgs_direction(g, h0(g), S, Y, HY)
        slope0 = (g * d).sum(1)
        dV, db = split(d)
        dM = lg.margins(dV, db)
        dP = lg.times_penalty(dV)
        step = torch.ones(len(where), dtype=dtype, device=device)
        accepted = torch.zeros(len(where), dtype=torch.bool, device=device)
        new = None
        for _trial in range(30):
            t = step[:, None, None]
            Mt, VPt = torch.addcmul(M, t, dM), torch.addcmul(VP, t, dP)
            gt = gradient(Mt, VPt)
            slope = (gt * d).sum(1)
            ok = ~accepted & (slope <= 0)
            if bool((~accepted & ~ok).any()):  # overshoot: decide on the loss itself
                if f is None:
                    f = lg.loss(M) + lg.penalised(split(z)[0], VP)
                ft = lg.loss(Mt) + lg.penalised(split(torch.addcmul(z, step[:, None], d))[0], VPt)
                armijo = ft <= f + 1e-4 * step * slope0
                unresolvable = (step * slope0).abs() <= 1e-6 * f.abs()
                ok |= ~accepted & (armijo | (unresolvable & (slope <= 0.9 * slope0.abs())))
            new = _take(ok, (step, Mt, VPt, gt), new)
            accepted |= ok
            if bool(accepted.all()):
                break
            shrink = (slope0 / (slope0 - slope)).nan_to_num(0.5).clamp(0.1, 0.5)
            step = torch.where(accepted, step, step * shrink)
        stalled |= ~accepted
        if not bool(accepted.all()):  # stalled units stay where they are
            new = _take(accepted, new, (torch.zeros_like(step), M, VP, g))
        step, M, VP, g_new = new
        s = step[:, None] * d
        y = g_new - g
        z, g, f = z + s, g_new, None
        sy = (s * y).sum(1)
        curvature_ok = sy > 1e-10 * torch.sqrt((s * s).sum(1) * (y * y).sum(1))
        s, y = s * curvature_ok[:, None], y * curvature_ok[:, None]  # a zero pair is inert
        S, Y, HY = (
            v[:, None] if H is None else torch.cat([H[:, 1 - _LBFGS_HISTORY :], v[:, None]], 1)
            for H, v in ((S, s), (Y, y), (HY, h0(y)))
        )
        converged |= grad_norm(g) <= problem.tol
    unfinished = ~(converged | stalled)
    if bool(unfinished.any()):  # max_iter reached
        out_z[where[unfinished]] = z[unfinished]
    V, b = split(out_z)
    return V.transpose(1, 2), b, n_iter.cpu(), out_converged.cpu()


def _compiled_kernel_applies(lg: _Logistic, solver: str) -> bool:
    """Whether :mod:`~workbench.probes.kernels` runs this batch (``solver="auto"``: when
    it can -- a binary float32 problem on CPU with numba installed)."""
    if solver == "torch":
        return False
    fits = lg.binary and lg.feats.dtype == torch.float32 and lg.feats.device.type == "cpu"
    if solver == "compiled" and not (fits and kernels.available()):
        raise ValueError("solver='compiled' needs a binary float32 problem on CPU and numba installed")
    return fits and kernels.available()


def _compact_lbfgs_direction(g, h0g, S, Y, HY):
    """``H g`` for the L-BFGS inverse Hessian ``H`` built on ``H0`` from pairs ``S, Y [a, m, D]``
    (``HY = H0 Y``; ``h0g = H0 g``), in compact form::

        H g = H0 g + S^T q - HY^T p,   p = R^-1 S g,   q = R^-T ((D + Y HY^T) p - HY g)

    with ``R`` the upper triangle of ``S Y^T`` and ``D`` its diagonal. An all-zero pair (curvature
    test failed) decouples: its ``R`` diagonal is set to 1 and its ``p``, ``q`` entries are 0.
    """
    if S is None:
        return h0g
    R = torch.bmm(S, Y.transpose(1, 2)).triu()
    diag = R.diagonal(dim1=1, dim2=2)
    diag += diag == 0  # inert pairs
    a = torch.bmm(S, g[:, :, None])  # [a, m, 1]
    c = torch.bmm(HY, g[:, :, None])
    pv = torch.linalg.solve_triangular(R, a, upper=True)
    inner = torch.bmm(Y, HY.transpose(1, 2)) + torch.diag_embed(diag)
    q = torch.linalg.solve_triangular(R.transpose(1, 2), torch.bmm(inner, pv) - c, upper=False)
    return h0g + torch.bmm(q.transpose(1, 2), S)[:, 0] - torch.bmm(pv.transpose(1, 2), HY)[:, 0]


def _take(ok, values, previous):
    """Per unit, ``values`` where ``ok`` else ``previous`` (the first call takes ``values``)."""
    if previous is None:
        return values
    return tuple(torch.where(ok.reshape(ok.shape + (1,) * (v.ndim - 1)), v, old) for v, old in zip(values, previous))


# ============================================================================ Adam


def fit_adam(feats: Features, problem: Problem, lr: float, batch_size: int, seed: int) -> Fit:
    """Mini-batch Adam on the same objective (the expert-heads paper's training), all units at once.

    Rows are shuffled with one seeded permutation per epoch, shared by all units; ``max_iter``
    counts epochs.
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
            M = feature_products(fb, V) + b[:, :, None]  # [u, k, B]
            resid = _probs_minus_target(M, lg.target[:, :, rows], lg.binary) / len(rows)
            gV = residual_products(fb, resid) + problem.l2 * V
            gb = resid.sum(2)
            step += 1
            for param, grad, m, v in ((V, gV, moments[0], moments[1]), (b, gb, moments[2], moments[3])):
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
                param.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
    gV, gb = lg.grad(lg.residual(lg.margins(V, b)), V)
    converged = (lg.grad_norm(gV, gb) <= problem.tol).cpu()
    coef, intercept = feats.to_raw(V.transpose(1, 2), b)
    return Fit(coef, intercept, torch.full((u,), problem.max_iter), converged, feats.rank)
