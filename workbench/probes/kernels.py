"""Compiled CPU kernels (numba) for the probes' two hot loops: the span pass over X, and binary
L-BFGS one unit at a time.

Why they exist: on CPU the torch code is bound by per-op overhead, not arithmetic -- a solver
iteration is ~100 small tensor ops, each holding the GIL for a few microseconds, around two
~30 us passes over a unit's features. Here a unit's whole solve is one compiled loop that
releases the GIL: two passes over its ``[n, p]`` features per iteration (``F d`` for the step's
margins, ``F^T r`` for the gradient), everything else on ``p``-vectors. Threads fitting separate
chunks then scale with the cores.

- :func:`lbfgs_binary` is the *same algorithm* as the torch solver
  (:func:`~workbench.probes.solver.lbfgs`) -- same start point, preconditioner (the
  model :class:`~workbench.probes.solver._Logistic` builds), L-BFGS history,
  line-search rules and stopping test -- written per unit; the two agree to float32 round-off
  (tested). Only the direction comes from the two-loop recursion instead of the compact form
  (equal in exact arithmetic; per unit the recursion is the cheaper). Binary float32 problems only
  (the common case; the torch solver covers the rest).
- :func:`mix_and_gather` is the span check's pass over X (same results as the torch loop in
  :func:`~workbench.probes.span._mix_and_gather`, tested), reading each row once.

Compiling them takes ~10 s on the first fit after installing; numba caches the result on disk.
Without numba the torch code runs everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:  # the torch solver covers every case without it
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

__all__ = ["available", "lbfgs_binary", "mix_and_gather", "swaps_to_permutation"]

_HISTORY = 10  # same as the torch solver's _LBFGS_HISTORY
_TRIALS = 30  # line-search trials per iteration (same as the torch solver)
_SUM_BLOCK = 256  # rows summed in float32 before a float64 running sum


def _jit(fn):
    """Compile with numba (GIL released; cached on disk, since compiling all kernels takes ~10 s),
    or leave as Python when numba is missing (then nothing calls the solver kernel)."""
    if numba is None:
        return fn
    try:
        return numba.njit(nogil=True, fastmath=True, cache=True)(fn)
    except RuntimeError:  # no writable cache location: compile on every first use instead
        return numba.njit(nogil=True, fastmath=True)(fn)


def available() -> bool:
    """Whether the compiled kernel can run (numba importable)."""
    return numba is not None


def lbfgs_binary(feats, target, inv_hess, inv_diag, penalty, penalty_inv, curv, l2, tol, max_iter):
    """Fit every unit of ``feats [u, n, p]`` (float32, CPU) by binary L-BFGS.

    ``target [n]`` 0/1 labels; start curvature ``inv_hess [u, p, p]`` *or* ``inv_diag [u, p]``;
    ``penalty``/``penalty_inv [u, p, p]`` or ``None`` (identity). Returns ``V [u, p, 1]``,
    ``b [u, 1]``, ``n_iter [u]``, ``converged [u]`` like the torch solver.
    """
    u, n, p = feats.shape
    f32 = np.float32
    empty = np.zeros((u, 0, 0), f32)

    def arr(t, fallback):
        return fallback if t is None else np.ascontiguousarray(t.detach().cpu().numpy().astype(f32, copy=False))

    z = np.zeros((u, p + 1), f32)
    n_iter = np.zeros(u, np.int64)
    converged = np.zeros(u, np.bool_)
    _solve_all(
        np.ascontiguousarray(feats.numpy()),
        arr(target, None),
        arr(inv_hess, empty),
        arr(inv_diag, np.zeros((u, 0), f32)),
        arr(penalty, empty),
        arr(penalty_inv, empty),
        f32(curv), f32(l2), f32(tol), int(max_iter),
        z, n_iter, converged,
    )
    z = torch.from_numpy(z)
    return z[:, :p, None], z[:, p:], torch.from_numpy(n_iter), torch.from_numpy(converged)


def mix_and_gather(x: torch.Tensor, h: torch.Tensor, probe: torch.Tensor, n_probes: int, units: list[torch.Tensor], cols: list[torch.Tensor]):
    """One pass over ``x [n, U, d]`` (float32, CPU; any strides with a contiguous last axis):
    ``mixed[q] = sum_{i: probe[i] = q} h[i] x[i]`` (``[n_probes, U, d]``, summed in float64: a
    float32 running sum's rounding grows with the number of rows) and, per group ``s``,
    the columns ``cols[s] [g_s, r_s]`` of units ``units[s]`` gathered unit-major (``[g_s, n, r_s]``).

    Each row of X is read from memory once and gathered from cache right after.
    """
    n, n_units, d = x.shape
    if x.stride(2) != 1:
        raise ValueError("mix_and_gather needs X's last axis contiguous")
    # X as a flat array with explicit strides: numba then sees unit-stride inner loops.
    base = x.storage_offset()
    flat = torch.as_strided(x, (x.untyped_storage().nbytes() // x.element_size(),), (1,), 0)
    sizes = [c.shape[0] * n * c.shape[1] for c in cols]
    out = np.empty(sum(sizes), np.float32)
    offsets = np.cumsum([0] + sizes)
    unit_index, col_index, col_offset, out_offset = [], [], [0], []
    for grp, c, at in zip(units, cols, offsets):
        g, r = c.shape
        unit_index.append(grp.numpy())
        col_index.append(c.cpu().numpy().reshape(-1))
        col_offset += list(col_offset[-1] + r * np.arange(1, g + 1))
        out_offset.append(at + n * r * np.arange(g))
    mixed = np.zeros((n_probes, n_units * d), np.float64)
    slot = np.full(n_units, -1, np.int64)  # unit -> its row in the gather tables (-1: not gathered)
    slot[np.concatenate(unit_index).astype(np.int64)] = np.arange(sum(len(i) for i in unit_index))
    _mix_gather_rows(
        flat.numpy(), base, x.stride(0), x.stride(1), n, n_units, d,
        h.numpy().astype(np.float32), probe.numpy().astype(np.int64), mixed,
        slot, np.concatenate(col_index).astype(np.uint64),
        np.asarray(col_offset, np.int64), np.concatenate(out_offset).astype(np.int64), out,
    )
    out = torch.from_numpy(out)
    gathered = [out[a:b].view(c.shape[0], n, c.shape[1]) for a, b, c in zip(offsets[:-1], offsets[1:], cols)]
    return torch.from_numpy(mixed).view(n_probes, n_units, d), gathered


@_jit
def swaps_to_permutation(swaps: np.ndarray, d: int) -> np.ndarray:
    """Row order ``[g, d]`` after LAPACK's swaps ``[g, r]`` (row i swapped with row swaps[i], 0-based)."""
    g, r = swaps.shape
    perm = np.empty((g, d), np.int64)
    for u in range(g):
        for i in range(d):
            perm[u, i] = i
        for i in range(r):
            j = swaps[u, i]
            perm[u, i], perm[u, j] = perm[u, j], perm[u, i]
    return perm


# ============================================================================ kernel bodies
# Plain Python over numpy arrays, compiled by numba; float32 vectors, float64 scalars and sums.


@_jit
def _sigmoid(m, out, ebits):
    """``out = 1 / (1 + exp(-m))`` with a polynomial exp (Cephes expf, ~1 ulp) that vectorises:
    numba's exp is a scalar libm call, 8x slower on 8,000 margins."""
    n = m.shape[0]
    for i in range(n):
        x = min(max(-m[i], np.float32(-87.0)), np.float32(87.0))
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        q = np.float32(1.9875691500e-4)
        q = q * r + np.float32(1.3981999507e-3)
        q = q * r + np.float32(8.3334519073e-3)
        q = q * r + np.float32(4.1665795894e-2)
        q = q * r + np.float32(1.6666665459e-1)
        q = q * r + np.float32(5.0000001201e-1)
        out[i] = q * r * r + r + np.float32(1.0)
        ebits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)  # 2^k as float32 bits
    scale = ebits.view(np.float32)
    for i in range(n):
        out[i] = np.float32(1.0) / (np.float32(1.0) + out[i] * scale[i])


@_jit
def _rows_times(F, v, out):
    """``out = F @ v`` for ``F [n, p]``."""
    n, p = F.shape
    for i in range(n):
        acc = np.float32(0.0)
        for j in range(p):
            acc += F[i, j] * v[j]
        out[i] = acc


@_jit
def _gradient(F, y, Mt, VPt, l2, inv_n, sig, ebits, g):
    """``g = (F^T r + l2 V P, sum r)`` with ``r = (sigmoid(Mt) - y) / n``."""
    n, p = F.shape
    _sigmoid(Mt, sig, ebits)
    gb = 0.0
    for i in range(n):
        sig[i] = (sig[i] - y[i]) * inv_n
        gb += sig[i]
    # float32 sums over blocks of rows, float64 across blocks: a running float32 sum over all n
    # rows would lose digits as n grows (the gradient is compared with tol near the optimum)
    total = np.zeros(p)
    acc = np.empty(p, np.float32)
    for a in range(0, n, _SUM_BLOCK):
        b = min(a + _SUM_BLOCK, n)
        acc[:] = 0.0
        b4 = b - (b - a) % 4
        for i in range(a, b4, 4):  # four rows per update of acc: 1.6x faster than one
            r0, r1, r2, r3 = sig[i], sig[i + 1], sig[i + 2], sig[i + 3]
            f0, f1, f2, f3 = F[i], F[i + 1], F[i + 2], F[i + 3]
            for j in range(p):
                acc[j] += r0 * f0[j] + r1 * f1[j] + r2 * f2[j] + r3 * f3[j]
        for i in range(b4, b):
            for j in range(p):
                acc[j] += sig[i] * F[i, j]
        for j in range(p):
            total[j] += acc[j]
    for j in range(p):
        g[j] = total[j] + l2 * VPt[j]
    g[p] = gb


@_jit
def _times(A, v, out):
    """``out = v @ A`` for square ``A`` (``A`` symmetric here), or a copy when ``A`` is empty."""
    p = v.shape[0]
    if A.shape[0] == 0:
        for j in range(p):
            out[j] = v[j]
        return
    for j in range(p):
        out[j] = 0.0
    for i in range(p):
        vi = v[i]
        for j in range(p):
            out[j] += vi * A[i, j]


@_jit
def _dot(a, b):
    acc = 0.0
    for i in range(a.shape[0]):
        acc += np.float64(a[i]) * np.float64(b[i])
    return acc


@_jit
def _grad_norm(g, Pi, tmp):
    """Norm of the gradient w.r.t. the (standardised) weights: ``sqrt(gV P^-1 gV + gb^2)``."""
    p = g.shape[0] - 1
    _times(Pi, g[:p], tmp)
    return math.sqrt(max(_dot(g[:p], tmp) + np.float64(g[p]) * g[p], 0.0))


@_jit
def _h0(H, hd, curv, v, out):
    """Start inverse curvature times ``v = (V, b)``."""
    p = v.shape[0] - 1
    if H.shape[0] > 0:
        _times(H, v[:p], out[:p])
    else:
        for j in range(p):
            out[j] = v[j] * hd[j]
    out[p] = v[p] / curv


@_jit
def _direction(g, H, hd, curv, S, Y, rho, valid, count, head, alpha, q, d):
    """``d = -H g``: the two-loop recursion (Nocedal & Wright alg. 7.4) over the stored pairs,
    newest first; pairs that failed the curvature test (``valid`` False) are skipped."""
    for j in range(g.shape[0]):
        q[j] = g[j]
    for t in range(count):
        i = (head - 1 - t) % S.shape[0]
        if valid[i]:
            alpha[i] = rho[i] * _dot(S[i], q)
            for j in range(q.shape[0]):
                q[j] -= alpha[i] * Y[i, j]
    _h0(H, hd, curv, q, d)
    for t in range(count - 1, -1, -1):
        i = (head - 1 - t) % S.shape[0]
        if valid[i]:
            beta = rho[i] * _dot(Y[i], d)
            for j in range(d.shape[0]):
                d[j] += (alpha[i] - beta) * S[i, j]
    for j in range(d.shape[0]):
        d[j] = -d[j]


@_jit
def _loss(M, y, z, VP, l2):
    """Mean cross-entropy plus ``l2/2 V.VP`` (float64)."""
    n = M.shape[0]
    acc = 0.0
    for i in range(n):
        m = np.float64(M[i])
        acc += max(m, 0.0) + math.log1p(math.exp(-abs(m))) - y[i] * m
    return acc / n + 0.5 * l2 * _dot(z[: VP.shape[0]], VP)


@_jit
def _mix_gather_rows(xf, base, row_stride, unit_stride, n, n_units, d, h, probe, mixed, slot, cols, col_offset, out_offset, out):
    """The body of :func:`mix_and_gather`: mix every unit's rows into their probe, then gather
    the pivot columns of those rows while they are in cache."""
    w = row_stride
    i = 0
    while i < n:
        acc = mixed[probe[i]]
        # four rows at a time when they feed the same probe: four memory streams in flight
        rows = 4 if i + 3 < n and probe[i] == probe[i + 1] == probe[i + 2] == probe[i + 3] else 1
        for u in range(n_units):
            at = base + i * row_stride + u * unit_stride
            dst = acc[u * d : (u + 1) * d]
            if rows == 4:
                h0, h1, h2, h3 = h[i], h[i + 1], h[i + 2], h[i + 3]
                s0, s1 = xf[at : at + d], xf[at + w : at + w + d]  # views: unit-stride loops
                s2, s3 = xf[at + 2 * w : at + 2 * w + d], xf[at + 3 * w : at + 3 * w + d]
                for c in range(d):
                    dst[c] += h0 * s0[c] + h1 * s1[c] + h2 * s2[c] + h3 * s3[c]
            else:
                h0, s0 = h[i], xf[at : at + d]
                for c in range(d):
                    dst[c] += h0 * s0[c]
            j = slot[u]
            if j >= 0:  # gather this unit's columns of these rows while they are in L1
                c0, c1 = col_offset[j], col_offset[j + 1]
                picks = cols[c0:c1]
                for k in range(i, i + rows):
                    src = xf[at + (k - i) * w : at + (k - i) * w + d]
                    dst = out[out_offset[j] + k * (c1 - c0) : out_offset[j] + (k + 1) * (c1 - c0)]
                    for c in range(c1 - c0):
                        dst[c] = src[picks[c]]
        i += rows


@_jit
def _solve_all(F, y, H, hd, P, Pi, curv, l2, tol, max_iter, z_out, n_iter, converged):
    u, n, p = F.shape
    D = p + 1
    inv_n = np.float32(1.0 / n)
    M, dM, Mt = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    sig, ebits = np.empty(n, np.float32), np.empty(n, np.int32)
    S, Y = np.zeros((_HISTORY, D), np.float32), np.zeros((_HISTORY, D), np.float32)
    rho, alpha, valid = np.zeros(_HISTORY), np.zeros(_HISTORY), np.zeros(_HISTORY, np.bool_)
    vectors = np.zeros((5, D), np.float32)
    z, g, gt, d, q = vectors[0], vectors[1], vectors[2], vectors[3], vectors[4]
    small = np.zeros((4, p), np.float32)
    VP, dP, VPt, tmp = small[0], small[1], small[2], small[3]
    empty2 = np.zeros((0, 0), np.float32)
    empty1 = np.zeros(0, np.float32)
    for unit in range(u):
        Fu = F[unit]
        Hu = H[unit] if H.shape[1] > 0 else empty2
        hdu = hd[unit] if hd.shape[1] > 0 else empty1
        Pu = P[unit] if P.shape[1] > 0 else empty2
        Piu = Pi[unit] if Pi.shape[1] > 0 else empty2
        z[:] = 0.0
        M[:] = 0.0
        VP[:] = 0.0
        count = 0
        head = 0
        _gradient(Fu, y, M, VP, l2, inv_n, sig, ebits, g)
        done = _grad_norm(g, Piu, tmp) <= tol
        iters = 0
        while not done and iters < max_iter:
            iters += 1
            _direction(g, Hu, hdu, curv, S, Y, rho, valid, count, head, alpha, q, d)
            slope0 = _dot(g, d)
            _rows_times(Fu, d[:p], dM)
            for i in range(n):
                dM[i] += d[p]
            _times(Pu, d[:p], dP)
            step = 1.0
            f = np.nan
            accepted = False
            for _trial in range(_TRIALS):
                ts = np.float32(step)
                for i in range(n):
                    Mt[i] = M[i] + ts * dM[i]
                for j in range(p):
                    VPt[j] = VP[j] + ts * dP[j]
                _gradient(Fu, y, Mt, VPt, l2, inv_n, sig, ebits, gt)
                slope = _dot(gt, d)
                ok = slope <= 0.0
                if not ok:  # overshoot: decide on the loss itself
                    if math.isnan(f):
                        f = _loss(M, y, z, VP, l2)
                    for j in range(D):
                        q[j] = z[j] + ts * d[j]
                    ft = _loss(Mt, y, q, VPt, l2)
                    armijo = ft <= f + 1e-4 * step * slope0
                    unresolvable = abs(step * slope0) <= 1e-6 * abs(f)
                    ok = armijo or (unresolvable and slope <= 0.9 * abs(slope0))
                if ok:
                    accepted = True
                    break
                shrink = slope0 / (slope0 - slope)
                step *= 0.5 if math.isnan(shrink) else min(max(shrink, 0.1), 0.5)
            if not accepted:  # stalled: stays where it is
                break
            ts = np.float32(step)
            i = head
            sy, ss, yy = 0.0, 0.0, 0.0
            for j in range(D):
                s_j = ts * d[j]
                y_j = gt[j] - g[j]
                S[i, j], Y[i, j] = s_j, y_j
                z[j] += s_j
                g[j] = gt[j]
                sy += np.float64(s_j) * y_j
                ss += np.float64(s_j) * s_j
                yy += np.float64(y_j) * y_j
            valid[i] = sy > 1e-10 * math.sqrt(ss * yy)
            rho[i] = 1.0 / sy if valid[i] else 0.0
            head = (head + 1) % _HISTORY
            count = min(count + 1, _HISTORY)
            for k in range(n):
                M[k] = Mt[k]
            for j in range(p):
                VP[j] = VPt[j]
            done = _grad_norm(g, Piu, tmp) <= tol
        z_out[unit] = z
        n_iter[unit] = iters
        converged[unit] = done

