"""The exact low-rank shortcut of :class:`~workbench.probes.LinearProbes`.

Why it exists: a head's contribution ``x^(l,h)`` lies in a ``d_head``-dimensional affine subspace
of the ``d``-dimensional space it is read in (it is a combination of rows of ``W_O^h``; projecting
it to the joint space keeps the rank), and the L2-regularised logistic solution lies in the span of
the centred data. Fitting such a unit in ``rank`` coordinates instead of ``d`` gives the same probe
for a fraction of the work (the benchmark's heads: 64 of 512 dimensions).

Two steps, both exact up to ``span_tol``:

1. :func:`find_spans` -- each unit's span from a sample of rows: one LU with partial pivoting
   gives the rank, ``rank`` well-conditioned pivot columns of X and the map ``psi`` from them
   back to whole rows; then *one pass over X* that checks the span on every row (random row
   combinations, Freivalds' check) and gathers the pivot columns, unit-major;
2. :func:`span_features` -- the solver's :class:`~workbench.probes.solver.Features` in
   those ``rank`` coordinates, with the penalty that makes the objective identical.

Units whose data are not (to ``span_tol``) in a low-dimensional span are left to the dense path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kernels
from .kernels import swaps_to_permutation
from .inputs import nonfinite_error
from .solver import Features, gram

__all__ = ["Span", "find_spans", "span_features"]

_SPAN_SAMPLE_ROWS = 128  # rows used to find a unit's span; ranks up to ~120 are detected
_SPAN_PROBES = 4  # random row combinations that check the span (each on a share of the rows)


@dataclass
class Span:
    """Units sharing a span dimension ``rank``: for each, ``x - anchor = (x - anchor)[cols] @ psi_t^T``
    on every row (checked), and X's columns ``cols`` gathered."""

    units: torch.Tensor  # [g] unit indices within the chunk (CPU)
    cols: torch.Tensor  # [g, rank] long
    psi_t: torch.Tensor  # [g, d, rank] float64
    anchor: torch.Tensor  # [g, d] float64
    rank: int
    columns: torch.Tensor | None  # [g, n, rank] X's pivot columns, unit-major (None until gathered)


def find_spans(x: torch.Tensor, tol: float, seed: int, offset: int, keys, unit_shape) -> list[Span]:
    """Detect each unit's low-dimensional affine span from sampled rows and verify it on all rows.

    ``x [n, u, d]``; ``offset``, ``keys`` and ``unit_shape`` locate its units in the user's X for
    errors. A partially pivoted LU of the sampled rows finds the rank and ``rank`` well-conditioned
    feature columns; least squares over the sample gives the map ``psi`` from them to the whole row
    (:func:`_spans_of_sample`). Every row is then checked at once through a few random
    centred row combinations ``h^T x`` (Freivalds' check), in the same pass over X that gathers the
    pivot columns: the part outside the span must be below ``tol`` of their norm. Units without a
    short span are left out.
    """
    n, n_units, d = x.shape
    m = min(n, d, _SPAN_SAMPLE_ROWS)
    if m < 16:
        return []
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=gen)[:m].to(x.device)
    weights = torch.randn(n, generator=gen, dtype=torch.float64)

    candidates = _spans_of_sample(x[rows], tol)
    if not candidates:
        return []

    mixed, gathered = _mix_and_gather(x, weights, candidates)
    spans = []
    for span, mix, columns in zip(candidates, mixed, gathered):
        if not bool(torch.isfinite(mix).all()):
            bad = span.units[(~torch.isfinite(mix)).flatten(1).any(1).cpu()][0].item()
            raise nonfinite_error(bad + offset, unit_shape, keys)
        inside = torch.gather(mix, 2, span.cols[:, None, :].expand(-1, _SPAN_PROBES, -1)) @ span.psi_t.transpose(1, 2)
        ok = ((mix - inside).norm(dim=(1, 2)) <= tol * mix.norm(dim=(1, 2))).cpu()
        if bool(ok.all()):
            spans.append(Span(span.units, span.cols, span.psi_t, span.anchor, span.rank, columns))
        elif bool(ok.any()):
            keep = ok.nonzero().flatten()
            at = keep.to(x.device)
            spans.append(Span(span.units[keep], span.cols[at], span.psi_t[at], span.anchor[at], span.rank, columns[at]))
    return spans


def _spans_of_sample(sample: torch.Tensor, tol: float) -> list[Span]:
    """Candidate spans of the units of ``sample [m, u, d]`` (rows of X), grouped by rank; not yet
    checked.

    One LU with partial pivoting per unit of the centred sample, transposed (``[d, m]``: features
    are rows, so pivoting picks X's columns): the feature pivoted on at step ``j`` is a candidate
    column when the pivot ``|U_jj|`` is above round-off. The LU takes sample rows in order, so its
    pivots alone mislead: a nearly dependent row leaves a tiny pivot for a true direction (which
    later rows then lack), and after it a spurious one well above round-off. So a candidate joins
    the columns ``J`` only when its values over the whole sample are not (to ``tol``, relative) a
    combination of the earlier candidates': a Cholesky of the normal equations in step order
    measures exactly that (its diagonal is each column's residual norm), and units that lose a
    column are redone once without it. ``psi`` is then the least-squares map from ``x[J]`` to
    ``x`` over all sampled rows (float64, through that same Cholesky), which averages out the
    rounding of X where a map through ``rank`` rows would amplify it. The LU is only a detector --
    every row of X is checked afterwards -- so a wrong rank costs at most the shortcut for that
    unit, never exactness.
    """
    m, _, d = sample.shape
    centred = sample.double().transpose(0, 1).contiguous()  # [u, m, d]
    anchor = centred.mean(1)
    centred -= anchor[:, None, :]
    # X's own precision is enough for the LU: it only proposes columns. Float32 rounding leaves
    # pivots near 1e-7 of a row after the true rank, so anything above tol / 100 is a candidate.
    lu, swaps, _ = torch.linalg.lu_factor_ex(centred.to(sample.dtype).transpose(1, 2))  # column-major
    row_rms = centred.pow(2).sum((1, 2)).div(m).sqrt()
    new_direction = lu.diagonal(dim1=1, dim2=2).abs().double() > 1e-2 * tol * row_rms[:, None]  # [u, m]
    perm = torch.from_numpy(swaps_to_permutation(swaps.cpu().numpy() - 1, d)).to(sample.device)
    candidates = []
    pending = torch.ones(len(new_direction), dtype=torch.bool, device=new_direction.device)
    for final in (False, True):
        rank = new_direction.sum(1)
        pending &= (rank >= 1) & (rank < m)
        redo = torch.zeros_like(pending)
        for r in torch.unique(rank[pending]).tolist():
            units = (pending & (rank == r)).nonzero().flatten()
            steps = new_direction[units].nonzero()[:, 1].reshape(len(units), r)  # [g, r]
            cols = torch.gather(perm[units], 1, steps)  # X's columns, in step order
            rows = centred[units]  # [g, m, d]
            picked = torch.gather(rows, 2, cols[:, None, :].expand(-1, m, -1))  # [g, m, r]
            normal = picked.transpose(1, 2) @ picked
            chol, info = torch.linalg.cholesky_ex(normal)
            ok = info == 0  # else not even numerically independent: no shortcut
            if not final:
                weak = (chol.diagonal(dim1=1, dim2=2) / normal.diagonal(dim1=1, dim2=2).sqrt() <= tol) & ok[:, None]
                if bool(weak.any()):
                    at = weak.nonzero()
                    new_direction[units[at[:, 0]], steps[at[:, 0], at[:, 1]]] = False
                    redo[units[weak.any(1)]] = True
                    ok &= ~weak.any(1)
            # A sample that stayed (nearly) full rank may not have seen the whole span: no shortcut.
            if r > m - 8 or 2 * r > d or not bool(ok.any()):
                continue
            keep = ok.nonzero().flatten()
            # psi = (P^T P)^-1 P^T rows; an explicit inverse applied to P^T first: 3x faster than a
            # batched solve here, and r^2 m instead of r^2 d multiply-adds
            psi = (torch.cholesky_inverse(chol[keep]) @ picked[keep].transpose(1, 2)) @ rows[keep]  # [g, r, d]
            candidates.append(Span(units[keep].cpu(), cols[keep], psi.transpose(1, 2), anchor[units[keep]], r, None))
        pending = redo
        if not bool(pending.any()):
            break
    return _merge_by_rank(candidates)


def _merge_by_rank(spans: list[Span]) -> list[Span]:
    """One :class:`Span` per rank, from the rounds' candidates (fewer, larger batches downstream)."""
    merged = []
    for r in sorted({s.rank for s in spans}):
        group = [s for s in spans if s.rank == r]
        if len(group) == 1:
            merged += group
            continue
        parts = [torch.cat([getattr(s, name) for s in group]) for name in ("units", "cols", "psi_t", "anchor")]
        merged.append(Span(*parts, r, None))
    return merged


def _mix_and_gather(x: torch.Tensor, weights: torch.Tensor, spans: list[Span]):
    """One pass over the spans' units of ``x [n, u, d]``: random row combinations and pivot columns.

    Rows go in blocks (about 1 MiB, at least 16 rows, on CPU: still in cache for the gather after the product, so X is
    read from memory once); block ``i`` feeds probe ``i mod P``, ``h_q^T x`` with ``h_q`` the
    ``weights`` of its rows centred (so the anchor cancels). Each probe thus checks a share of
    the rows, and every element of X costs one multiply-add, not ``P``.

    Returns, per span, ``mixed [g, P, d]`` (float64) and the gathered columns unit-major
    ``[g, n, rank]`` -- the layout the solver reads. On CPU (float32) the compiled
    :func:`~workbench.probes.kernels.mix_and_gather` makes the pass.
    """
    n, n_units, d = x.shape
    on_cpu = x.device.type == "cpu"
    block = max(16, 2**20 // (n_units * d * x.element_size())) if on_cpu else -(-n // _SPAN_PROBES)
    starts = list(range(0, n, block))
    probe = torch.tensor([i % _SPAN_PROBES for i in range(len(starts))]).repeat_interleave(block)[:n]
    h = weights - torch.zeros(_SPAN_PROBES, dtype=weights.dtype).index_add_(0, probe, weights)[probe] / torch.bincount(
        probe, minlength=_SPAN_PROBES
    ).clamp_min(1)[probe]
    if on_cpu and x.dtype == torch.float32 and x.stride(2) == 1 and kernels.available():
        mixed, gathered = kernels.mix_and_gather(x, h.float(), probe, _SPAN_PROBES, [s.units for s in spans], [s.cols for s in spans])
        mixed = mixed.transpose(0, 1)  # [u, P, d]
        return [mixed[s.units] for s in spans], gathered
    h = h.to(device=x.device, dtype=x.dtype)
    mixed = torch.zeros(_SPAN_PROBES, n_units * d, dtype=x.dtype, device=x.device)
    gathered = [torch.empty(len(s.units), n, s.rank, dtype=x.dtype, device=x.device) for s in spans]
    gathers = []
    for s in spans:
        first = int(s.units[0])
        if bool((s.units == torch.arange(first, first + len(s.units))).all()):  # adjacent units: one gather
            gathers.append((slice(first, first + len(s.units)), s.cols.to(x.device), None))
        else:
            gathers.append((None, None, (s.units.to(x.device)[:, None] * d + s.cols).reshape(-1)))
    for i, start in enumerate(starts):
        stop = min(start + block, n)
        xb = x[start:stop]
        mixed[i % _SPAN_PROBES].addmv_(xb.reshape(stop - start, n_units * d).T, h[start:stop])
        for (units, cols, flat), out in zip(gathers, gathered):
            if flat is None:  # straight into the unit-major output: 2x faster than select + copy
                torch.gather(xb[:, units], 2, cols.expand(stop - start, -1, -1), out=out[:, start:stop].transpose(0, 1))
            else:
                rows = xb.reshape(stop - start, n_units * d).index_select(1, flat)
                out[:, start:stop] = rows.view(stop - start, len(out), -1).transpose(0, 1)
    mixed = mixed.view(_SPAN_PROBES, n_units, d).transpose(0, 1).double()  # [u, P, d]
    return [mixed[s.units.to(x.device)] for s in spans], gathered


def span_features(span: Span, rows: torch.Tensor, standardize: bool) -> Features:
    """Features of in-span units ``rows`` (of the group) from their gathered pivot columns.

    For in-span rows ``x - mean = (x - mean)[cols] @ psi``, so with ``D = diag(std)`` (or ``I``) the
    standardised weight ``w~ = D^-1 psi^T P v`` gives margin ``f @ v`` and ``||w~||^2 = v^T P v`` for
    ``P = (psi D^-2 psi^T)^-1`` -- the same objective, in ``r`` coordinates.
    """
    rows = rows.to(span.columns.device)
    if len(rows) and bool((rows == torch.arange(int(rows[0]), int(rows[0]) + len(rows), device=rows.device)).all()):
        feats = span.columns[int(rows[0]) : int(rows[0]) + len(rows)]  # a view of our own gather: centred in place
    else:
        feats = span.columns[rows]  # [u, n, r], a copy: centred in place
    cols = span.cols[rows]
    psi_t, anchor = span.psi_t[rows], span.anchor[rows]
    # Centring on any fixed vector is an exact reparametrisation (the intercept absorbs it), so the
    # float32 mean is enough; it only needs to be used consistently in the back-map. (The exact
    # mean matters for conditioning: centring on the sample mean cost 25% more iterations.)
    mean = feats.mean(1)  # [u, r]
    feats -= mean[:, None, :]
    g = gram(feats, exact=standardize)
    # Full-row mean and scale from the pivot columns (exact for in-span rows).
    mean_row = anchor + ((mean.double() - torch.gather(anchor, 1, cols))[:, None, :] @ psi_t.transpose(1, 2))[:, 0]
    std = _row_std(g, psi_t) if standardize else torch.ones_like(anchor)
    scaled = psi_t / std[:, :, None] if standardize else psi_t  # D^-1 psi^T  [u, d, r]
    penalty_inv = scaled.transpose(1, 2) @ scaled  # psi D^-2 psi^T
    penalty = torch.linalg.inv(penalty_inv)

    def to_raw(v, b):
        coef = psi_t @ (penalty @ v.double())  # D^-2 psi^T P v  [u, d, k]
        if standardize:
            coef /= std[:, :, None] ** 2
        return coef, b.double() - (mean_row[:, None, :] @ coef)[:, 0]

    return Features(feats, g, penalty, penalty_inv, to_raw, torch.full((len(rows),), span.rank))


def _row_std(gram: torch.Tensor, psi_t: torch.Tensor) -> torch.Tensor:
    """Per-feature standard deviation ``[u, d]`` of in-span rows, sqrt(diag(psi^T Cov psi)); 0 -> 1."""
    std = ((psi_t @ gram) * psi_t).sum(-1).clamp_min(0).sqrt()
    return torch.where(std > 0, std, torch.ones_like(std))

