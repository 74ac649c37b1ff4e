"""The low-rank span shortcut: spans found, checked on every row, columns gathered in one pass."""

import numpy as np
import pytest
import torch

from workbench.probes import LinearProbes
from workbench.probes.kernels import swaps_to_permutation
from workbench.probes.span import find_spans


def mixed_ranks(seed=0, n=400, d=40, ranks=(3, 6, 3, 6, 6)):
    """Units whose rows lie in affine subspaces of the given ranks: ``x = z @ M_u + m_u``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    units = []
    for r in ranks:
        z = rng.standard_normal((n, r))
        z[:, 0] += 1.5 * y
        units.append(z @ rng.standard_normal((r, d)) + 3.0 * rng.standard_normal(d))
    return torch.from_numpy(np.stack(units, axis=1)), y  # [n, units, d] float64


def test_swaps_to_permutation_matches_lu_unpack():
    a = torch.randn(5, 12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lu, swaps = torch.linalg.lu_factor(a)
    P, _, _ = torch.lu_unpack(lu, swaps)  # a = P @ L @ U; row i of L U is row perm[i] of a
    perm = swaps_to_permutation(swaps.numpy() - 1, 12)
    expected = P.argmax(1).numpy()  # P[perm[i], i] = 1
    np.testing.assert_array_equal(perm, expected)


def test_spans_are_grouped_by_rank_and_columns_are_gathered_from_x():
    x, _ = mixed_ranks()
    spans = find_spans(x, 1e-6, seed=0, offset=0, keys=None, unit_shape=(5,))
    assert [(s.rank, s.units.tolist()) for s in spans] == [(3, [0, 2]), (6, [1, 3, 4])]
    for span in spans:
        for i, unit in enumerate(span.units.tolist()):
            cols = span.cols[i]
            assert len(set(cols.tolist())) == len(cols)  # distinct
            np.testing.assert_array_equal(span.columns[i].numpy(), x[:, unit, cols].numpy())
            # every row is recovered from its pivot columns: x - anchor = (x - anchor)[cols] @ psi_t^T
            centred = x[:, unit] - span.anchor[i]
            np.testing.assert_allclose(centred[:, cols] @ span.psi_t[i].T, centred, atol=1e-9)


def test_spans_do_not_depend_on_thread_count_or_layout():
    x, _ = mixed_ranks(seed=1)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = find_spans(x, 1e-6, seed=0, offset=0, keys=None, unit_shape=(5,))
        torch.set_num_threads(2)
        two = find_spans(x, 1e-6, seed=0, offset=0, keys=None, unit_shape=(5,))
    finally:
        torch.set_num_threads(previous)
    # not row-major: a unit-first tensor viewed samples-first (the pass copies each block)
    strided = find_spans(x.transpose(0, 1).contiguous().transpose(0, 1), 1e-6, 0, 0, None, (5,))
    for other in (two, strided):
        assert len(other) == len(one)
        for a, b in zip(one, other):
            assert a.rank == b.rank and torch.equal(a.units, b.units) and torch.equal(a.cols, b.cols)
            assert torch.equal(a.columns, b.columns)
            torch.testing.assert_close(a.psi_t, b.psi_t, rtol=0, atol=1e-12)  # batched LAPACK: rounding only


def test_mixed_ranks_fit_like_sklearn():
    from sklearn.linear_model import LogisticRegression

    x, y = mixed_ranks(seed=2)
    probes = LinearProbes(dtype=torch.float64, tol=1e-9, max_iter=500, standardize=False).fit(x, y)
    assert probes.span_rank_.tolist() == [3, 6, 3, 6, 6]
    for u in range(x.shape[1]):
        ref = LogisticRegression(tol=1e-10, max_iter=10_000).fit(x[:, u].numpy(), y).decision_function(x[:, u].numpy())
        np.testing.assert_allclose(probes.decision_function(x)[:, u], ref, atol=1e-5 * (1 + np.abs(ref).max()))


def test_nan_outside_the_sample_is_caught_by_the_pass():
    x, _ = mixed_ranks(seed=3)
    gen = torch.Generator().manual_seed(0)
    sampled = set(torch.randperm(x.shape[0], generator=gen)[:40].tolist())  # find_spans' sample (m = d = 40)
    row = next(i for i in range(x.shape[0]) if i not in sampled)
    x[row, 4, 7] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite.*unit 4"):
        find_spans(x, 1e-6, seed=0, offset=0, keys=None, unit_shape=(5,))


def test_nearly_dependent_sample_rows_do_not_inflate_the_rank():
    # A sample row nearly in the span of the earlier ones leaves a tiny true pivot in the LU and
    # then a spurious one far above round-off; the normal-equation check must drop the latter.
    rng = np.random.default_rng(5)
    n, d, r = 2000, 256, 32
    z = rng.standard_normal((n, r)) * np.arange(1, r + 1) ** -0.5  # a decaying spectrum
    x = torch.from_numpy((z @ rng.standard_normal((r, d)) + rng.standard_normal(d))[:, None, :]).float()
    gen = torch.Generator().manual_seed(0)
    sample = torch.randperm(n, generator=gen)[:128]  # find_spans' sample for seed 0
    centre = x[sample[: r - 1]].mean(0)
    x[sample[r - 1]] = centre + 1e-3 * (x[sample[r - 1]] - centre)  # in the span, nearly dependent
    spans = find_spans(x, 1e-4, seed=0, offset=0, keys=None, unit_shape=(1,))
    assert [s.rank for s in spans] == [r]
