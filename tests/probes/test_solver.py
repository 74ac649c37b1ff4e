"""The solver's building blocks, checked against the textbook forms they replace."""

import numpy as np
import torch

from workbench.probes import LinearProbes
from workbench.probes.solver import _compact_lbfgs_direction, feature_products, residual_products


def two_loop(g, h0, pairs):
    """Nocedal & Wright alg. 7.4 for one unit: ``H g`` from pairs ``(s, y)`` (oldest first)."""
    q, alphas = g.clone(), []
    for s, y in reversed(pairs):
        a = (s @ q) / (s @ y)
        q -= a * y
        alphas.append(a)
    r = h0 @ q
    for (s, y), a in zip(pairs, reversed(alphas)):
        r += s * (a - (y @ r) / (s @ y))
    return r


def test_compact_lbfgs_direction_equals_the_two_loop_recursion():
    gen = torch.Generator().manual_seed(0)
    units, m, dim = 3, 5, 7
    a = torch.randn(units, dim, dim, generator=gen, dtype=torch.float64)
    h0 = a @ a.transpose(1, 2) + dim * torch.eye(dim, dtype=torch.float64)  # SPD start inverse Hessian
    hess = torch.linalg.inv(h0) + 0.3 * torch.eye(dim, dtype=torch.float64)  # a quadratic's Hessian
    S = torch.randn(units, m, dim, generator=gen, dtype=torch.float64)
    Y = S @ hess  # y = B s: positive curvature on every pair
    S[1, 2] = Y[1, 2] = 0  # an inert pair (failed curvature test) must be skipped
    g = torch.randn(units, dim, generator=gen, dtype=torch.float64)
    HY = Y @ h0
    got = _compact_lbfgs_direction(g, (h0 @ g[:, :, None])[..., 0], S, Y, HY)
    for u in range(units):
        pairs = [(S[u, i], Y[u, i]) for i in range(m) if S[u, i].abs().sum() > 0]
        torch.testing.assert_close(got[u], two_loop(g[u], h0[u], pairs), rtol=1e-10, atol=1e-10)


def test_per_unit_products_equal_batched_matmul_on_any_working_set():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(5, 300, 16, generator=gen)
    units = torch.tensor([4, 0, 2])
    for k in (1, 3):
        V = torch.randn(3, k, 16, generator=gen)
        R = torch.randn(3, k, 300, generator=gen)
        torch.testing.assert_close(feature_products(feats, V, units), V @ feats[units].transpose(1, 2))
        torch.testing.assert_close(residual_products(feats, R, units), R @ feats[units])
    V = torch.randn(5, 1, 16, generator=gen)
    torch.testing.assert_close(feature_products(feats, V), V @ feats.transpose(1, 2))


def test_fit_does_not_depend_on_thread_count():
    rng = np.random.default_rng(4)
    n, d, r = 600, 48, 12
    y = rng.integers(0, 2, n)
    units = []
    for _ in range(10):
        z = rng.standard_normal((n, r))
        z[:, 0] += y
        units.append(z @ rng.standard_normal((r, d)))
    X = torch.from_numpy(np.stack(units, 1)).float()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = LinearProbes(seed=0).fit(X, y)
        torch.set_num_threads(2)
        two = LinearProbes(seed=0).fit(X, y)
    finally:
        torch.set_num_threads(previous)
    assert (one.span_rank_ == r).all()
    np.testing.assert_array_equal(one.coef_, two.coef_)  # chunks are fitted independently of threads
