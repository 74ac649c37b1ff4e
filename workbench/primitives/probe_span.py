"""The exact low-rank shortcut of :class:`~workbench.primitives.probe.LinearProbes`.

Why it exists: a head's contribution ``x^(l,h)`` lies in a ``d_head``-dimensional affine subspace
of the ``d``-dimensional space it is read in (it is a combination of rows of ``W_O^h``; projecting
it to the joint space keeps the rank), and the L2-regularised logistic solution lies in the span of
the centred data. Fitting such a unit in ``rank`` coordinates instead of ``d`` gives the same probe
for a fraction of the work (the benchmark's heads: 64 of 512 dimensions).

Two steps, both exact up to ``span_tol``:

1. :func:`find_spans` -- each unit's span from a sample of rows (pivoted Cholesky), ``rank``
   well-conditioned pivot columns of X and the map ``psi`` from them back to whole rows (LU);
   then *one pass over X* that checks the span on every row (random row combinations,
   Freivalds' check) and gathers the pivot columns, unit-major;
2. :func:`span_features` -- the solver's :class:`~workbench.primitives.probe_solver.Features` in
   those ``rank`` coordinates, with the penalty that makes the objective identical.

Units whose data are not (to ``span_tol``) in a low-dimensional span are left to the dense path.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .probe_inputs import nonfinite_error
from .probe_solver import Features, gram, intra_op_threads

__all__ = ["Span", "find_spans", "span_features"]

_SPAN_SAMPLE_ROWS = 128  # rows used to find a unit's span; ranks up to ~120 are detected
_SPAN_PROBES = 4  # random row combinations that check the span on every row
_PASS_BLOCK_BYTES = 8 * 2**20  # rows of X per block of the check-and-gather pass: stays in cache


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
    errors. Pivoted Cholesky of the sampled rows' Gram picks rows until the rest lie within
    ``tol / 2`` (relative Frobenius norm) of their span: the rank. A partially pivoted LU of those
    rows then picks ``rank`` well-conditioned feature columns (every entry of L is at most 1) and the
    map ``psi`` from them to the whole row. Every row is then checked at once through a few random
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
    probes = torch.randn(n, _SPAN_PROBES, generator=gen, dtype=torch.float64)
    probes = (probes - probes.mean(0)).to(device=x.device, dtype=x.dtype)  # centred: removes the anchor

    candidates = _candidate_spans(x[rows], tol)
    if not candidates:
        return []

    mixed, gathered = _mix_and_gather(x, probes, [(c.units.to(x.device)[:, None] * d + c.cols) for c in candidates])
    mixed = mixed.reshape(_SPAN_PROBES, n_units, d).transpose(0, 1).double()  # [u, probes, d]
    if not bool(torch.isfinite(mixed).all()):
        bad = (~torch.isfinite(mixed)).flatten(1).any(1).nonzero()[0].item()
        raise nonfinite_error(bad + offset, unit_shape, keys)
    spans = []
    for span, columns in zip(candidates, gathered):
        mix = mixed[span.units.to(x.device)]
        inside = torch.gather(mix, 2, span.cols[:, None, :].expand(-1, _SPAN_PROBES, -1)) @ span.psi_t.transpose(1, 2)
        ok = ((mix - inside).norm(dim=(1, 2)) <= tol * mix.norm(dim=(1, 2))).cpu()
        if bool(ok.all()):
            spans.append(Span(span.units, span.cols, span.psi_t, span.anchor, span.rank, columns))
        elif bool(ok.any()):
            keep = ok.nonzero().flatten()
            at = keep.to(x.device)
            spans.append(Span(span.units[keep], span.cols[at], span.psi_t[at], span.anchor[at], span.rank, columns[at]))
    return spans


def _candidate_spans(sample: torch.Tensor, tol: float) -> list[Span]:
    """Spans of the units of ``sample [m, u, d]`` (rows of X), one :class:`Span` per rank; not yet checked.

    Many small factorisations: on CPU the threads take a share of the units each, with one
    intra-op thread (faster than splitting every small product, and OpenMP stalls badly when
    another process holds a core). A unit's span does not depend on the split (up to rounding).
    """
    n_units = sample.shape[1]
    workers = min(torch.get_num_threads(), n_units)
    if workers <= 1 or sample.device.type != "cpu":
        return _spans_of_sample(sample, tol)
    bounds = [n_units * w // workers for w in range(workers + 1)]
    with intra_op_threads(1), ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(lambda w: _spans_of_sample(sample[:, bounds[w] : bounds[w + 1]], tol), range(workers)))
    by_rank: dict[int, list[Span]] = {}
    for start, spans in zip(bounds, found):
        for span in spans:
            span.units += start  # indices into all units (still ascending within a rank)
            by_rank.setdefault(span.rank, []).append(span)
    return [
        Span(*(torch.cat([getattr(s, name) for s in group]) for name in ("units", "cols", "psi_t", "anchor")), rank, None)
        for rank, group in sorted(by_rank.items())
    ]


def _spans_of_sample(sample: torch.Tensor, tol: float) -> list[Span]:
    """:func:`_candidate_spans` for one share of the units."""
    m, _, d = sample.shape
    sample = sample.double().transpose(0, 1)  # [u, m, d]
    anchor = sample.mean(1)
    sample -= anchor[:, None, :]
    picked_rows, rank = _pivoted_cholesky(sample @ sample.transpose(1, 2), (tol / 2) ** 2, max_rank=m - 8)
    # A sample that stayed (nearly) full rank may not have seen the whole span: no shortcut.
    reducible = (rank <= m - 8) & (2 * rank <= d)
    candidates = []
    for r in torch.unique(rank[reducible]).tolist():
        units = (reducible & (rank == r)).nonzero().flatten()
        r = max(int(r), 1)
        basis = torch.gather(sample[units], 1, picked_rows[units, :r, None].expand(-1, -1, d))  # [g, r, d]
        cols, psi_t = _pivot_columns(basis)
        candidates.append(Span(units.cpu(), cols, psi_t, anchor[units], r, None))
    return candidates


def _mix_and_gather(x: torch.Tensor, probes: torch.Tensor, indexes: list[torch.Tensor]):
    """One pass over ``x [n, u, d]`` in row blocks: ``probes^T x`` ``[n, probes]`` and gathered columns.

    Returns ``mixed [probes, u * d]`` (x's dtype) and, per index ``[g, r]`` into a row's ``u * d``
    entries, the gathered columns unit-major ``[g, n, r]`` -- the layout the solver reads. A block
    is gathered while it is still in cache from the product, so X is read from memory once. With
    several threads, each takes a share of the blocks (one intra-op thread each: the blocks are
    cache-sized, and this also avoids OpenMP stalls on a busy machine).
    """
    n, n_units, d = x.shape
    gathered = [torch.empty(len(i), n, i.shape[1], dtype=x.dtype, device=x.device) for i in indexes]
    flat = [i.reshape(-1) for i in indexes]
    on_cpu = x.device.type == "cpu"
    block = max(1, _PASS_BLOCK_BYTES // max(1, n_units * d * x.element_size())) if on_cpu else n
    starts = list(range(0, n, block))

    def run(share: list[int]) -> torch.Tensor:
        mixed = torch.zeros(probes.shape[1], n_units * d, dtype=x.dtype, device=x.device)
        for start in share:
            stop = min(start + block, n)
            xb = x[start:stop].reshape(stop - start, n_units * d)  # a view when x is row-major
            mixed.addmm_(probes[start:stop].T, xb)
            for out, index in zip(gathered, flat):
                out[:, start:stop] = xb.index_select(1, index).view(stop - start, len(out), -1).transpose(0, 1)
        return mixed

    workers = min(torch.get_num_threads(), len(starts))
    if workers <= 1 or not on_cpu:
        return run(starts), gathered
    with intra_op_threads(1), ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(run, [starts[w::workers] for w in range(workers)])), gathered


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
    ``psi^T = P L L[:r]^{-1}``. Returns ``J [g, r]`` (ascending) and ``psi^T [g, d, r]``.
    """
    g, r, d = basis.shape
    lu, swaps, _ = torch.linalg.lu_factor_ex(basis.transpose(1, 2))  # [g, d, r]
    perm = torch.from_numpy(_swaps_to_permutation(swaps.cpu().numpy() - 1, d)).to(basis.device)
    lower = lu.tril(-1)
    lower[:, :r, :r] += torch.eye(r, dtype=lu.dtype, device=lu.device)
    mapped = torch.linalg.solve_triangular(lower[:, :r, :r], lower, upper=False, left=False, unitriangular=True)
    psi_t = torch.empty_like(mapped).scatter_(1, perm[:, :, None].expand(g, d, r), mapped)  # P @ mapped
    # Any order of the columns is as good; ascending makes gathering them from X near-sequential.
    cols, order = perm[:, :r].sort(1)
    return cols, torch.gather(psi_t, 2, order[:, None, :].expand(g, d, r))


def _swaps_to_permutation(swaps: np.ndarray, d: int) -> np.ndarray:
    """Row order ``[g, d]`` after LAPACK's swaps ``[g, r]`` (row i swapped with row swaps[i], 0-based)."""
    g, r = swaps.shape
    perm = np.tile(np.arange(d), (g, 1))
    units = np.arange(g)
    for i in range(r):  # a few numpy ops on [g] per pivot: far cheaper than torch's per-op overhead
        there = perm[units, swaps[:, i]]
        perm[units, swaps[:, i]] = perm[:, i]
        perm[:, i] = there
    return perm


def span_features(span: Span, rows: torch.Tensor, standardize: bool) -> Features:
    """Features of in-span units ``rows`` (of the group) from their gathered pivot columns.

    For in-span rows ``x - mean = (x - mean)[cols] @ psi``, so with ``D = diag(std)`` (or ``I``) the
    standardised weight ``w~ = D^-1 psi^T P v`` gives margin ``f @ v`` and ``||w~||^2 = v^T P v`` for
    ``P = (psi D^-2 psi^T)^-1`` -- the same objective, in ``r`` coordinates.
    """
    rows = rows.to(span.columns.device)
    feats = span.columns[rows]  # [u, n, r], a copy: centred in place
    cols = span.cols[rows]
    # Centring on any fixed vector is an exact reparametrisation (the intercept absorbs it), so the
    # float32 mean is enough; it only needs to be used consistently in the back-map.
    mean = feats.mean(1)  # [u, r]
    feats -= mean[:, None, :]
    mean = mean.double()
    g = gram(feats, exact=standardize)
    psi_t, anchor = span.psi_t[rows], span.anchor[rows]
    # Full-row mean and scale from the pivot columns (exact for in-span rows).
    mean_row = anchor + ((mean - torch.gather(anchor, 1, cols))[:, None, :] @ psi_t.transpose(1, 2))[:, 0]
    std = _row_std(g, psi_t) if standardize else torch.ones_like(anchor)
    scaled = psi_t / std[:, :, None]  # D^-1 psi^T  [u, d, r]
    penalty_inv = scaled.transpose(1, 2) @ scaled  # psi D^-2 psi^T
    penalty = torch.linalg.inv(penalty_inv)

    def to_raw(v, b):
        coef = (scaled / std[:, :, None]) @ (penalty @ v.double())  # D^-2 psi^T P v  [u, d, k]
        return coef, b.double() - (mean_row[:, None, :] @ coef)[:, 0]

    return Features(feats, g, penalty, penalty_inv, to_raw, torch.full((len(rows),), span.rank))


def _row_std(gram: torch.Tensor, psi_t: torch.Tensor) -> torch.Tensor:
    """Per-feature standard deviation ``[u, d]`` of in-span rows, sqrt(diag(psi^T Cov psi)); 0 -> 1."""
    std = ((psi_t @ gram) * psi_t).sum(-1).clamp_min(0).sqrt()
    return torch.where(std > 0, std, torch.ones_like(std))

