"""The compiled CPU kernels agree with the torch code they stand in for."""

import numpy as np
import pytest
import torch

from workbench.probes import LinearProbes, kernels
from workbench.probes.solver import Problem, dense_features, lbfgs
from workbench.probes.span import Span, _mix_and_gather, find_spans, span_features

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


def planted(seed=0, n=1500, units=6, d=24, shift=0.8):
    """Float32 units with a planted binary signal of decreasing strength (the last ones: none)."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=gen) < 0.4).long()
    x = torch.randn(n, units, d, generator=gen) @ torch.randn(d, d, generator=gen) / d**0.5
    x += torch.randn(units, d, generator=gen)  # offsets
    x[:, :, 0] += shift * torch.linspace(2, 0, units) * (2 * y[:, None] - 1)
    return x, y


def solve_both(feats, problem):
    torch_fit = lbfgs(feats, Problem(**{**problem.__dict__, "solver": "torch"}))
    compiled_fit = lbfgs(feats, Problem(**{**problem.__dict__, "solver": "compiled"}))
    return torch_fit, compiled_fit


def assert_same_fit(torch_fit, compiled_fit, rtol=2e-4):
    (V0, b0, it0, ok0), (V1, b1, it1, ok1) = torch_fit, compiled_fit
    scale = V0.abs().max()
    torch.testing.assert_close(V1, V0, rtol=0, atol=rtol * scale)
    torch.testing.assert_close(b1, b0, rtol=0, atol=rtol * max(1.0, float(b0.abs().max())))
    assert (it1 - it0).abs().max() <= 1  # same algorithm: float32 round-off may shift a stop by one step
    assert torch.equal(ok1, ok0)


@pytest.mark.parametrize("standardize", [False, True])
def test_compiled_lbfgs_matches_the_torch_solver_on_dense_features(standardize):
    x, y = planted()
    feats = dense_features(x, standardize, 0, None, (x.shape[1],))
    torch_fit, compiled_fit = solve_both(feats, Problem(y, 2, 1e-3, 1e-5, 100))
    assert compiled_fit[3].all() and (compiled_fit[2] > 2).all()  # converged, after real work
    assert_same_fit(torch_fit, compiled_fit)


def test_compiled_lbfgs_matches_the_torch_solver_with_a_penalty_matrix_and_diagonal_start():
    # span features carry P != I; a missing Gram switches the start curvature to its diagonal
    x, y = planted(seed=1, d=32)
    low = x[:, :, :8] @ torch.randn(8, 32, generator=torch.Generator().manual_seed(2))  # rank 8 in 32 dims
    spans = find_spans(low, 1e-4, seed=0, offset=0, keys=None, unit_shape=(x.shape[1],))
    assert sum(len(s.units) for s in spans) == x.shape[1] and {s.rank for s in spans} == {8}
    for span in spans:
        feats = span_features(span, torch.arange(len(span.units)), standardize=True)
        assert feats.penalty is not None
        assert_same_fit(*solve_both(feats, Problem(y, 2, 1e-3, 1e-5, 100)))
        feats.gram = None
        assert_same_fit(*solve_both(feats, Problem(y, 2, 1e-3, 1e-5, 100)))


def test_compiled_lbfgs_stops_at_max_iter_and_handles_separable_data():
    # separable and barely penalised: long steps, the line search's loss-based branch, no convergence
    x, y = planted(seed=3, shift=6.0)
    feats = dense_features(x, True, 0, None, (x.shape[1],))
    torch_fit, compiled_fit = solve_both(feats, Problem(y, 2, 1e-7, 1e-9, 15))
    assert not compiled_fit[3][0] and compiled_fit[2][0] == 15
    assert_same_fit(torch_fit, compiled_fit, rtol=1e-2)


def test_compiled_sigmoid_is_accurate_over_the_whole_float32_range():
    m = torch.cat([torch.linspace(-120, 120, 4001), torch.tensor([0.0, -87.0, 87.0, 88.5, -88.5])])
    out = np.empty(len(m), np.float32)
    kernels._sigmoid(m.numpy(), out, np.empty(len(m), np.int32))
    exact = torch.sigmoid(m.double()).numpy()
    np.testing.assert_allclose(out, exact, rtol=3e-7, atol=1e-37)


def test_compiled_mix_and_gather_equals_the_torch_pass(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(301, 9, 40, generator=gen)  # odd row count: a ragged last block of 4
    x = X[:, 2:7]  # strided units, as a chunk of the user's X
    weights = torch.randn(301, generator=gen, dtype=torch.float64)
    spans = [
        Span(torch.tensor([0, 3]), torch.tensor([[5, 1, 30], [0, 39, 7]]), None, None, 3, None),
        Span(torch.tensor([4]), torch.tensor([[2, 3, 11, 12, 17]]), None, None, 5, None),
    ]
    mixed, gathered = _mix_and_gather(x, weights, spans)
    monkeypatch.setattr(kernels, "available", lambda: False)
    mixed_t, gathered_t = _mix_and_gather(x, weights, spans)
    for a, b in zip(gathered, gathered_t):
        assert torch.equal(a, b)
    for span, got in zip(spans, gathered):  # and what the pass should gather, directly
        for i, unit in enumerate(span.units.tolist()):
            assert torch.equal(got[i], x[:, unit, span.cols[i]])
    for a, b in zip(mixed, mixed_t):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_probes_fitted_with_and_without_the_kernels_agree(monkeypatch):
    x, y = planted(seed=5, n=2000, units=8, d=48)
    low = x[:, :, :12] @ torch.randn(12, 48, generator=torch.Generator().manual_seed(6))
    compiled = LinearProbes(seed=0).fit(low, y)
    monkeypatch.setattr(kernels, "available", lambda: False)
    reference = LinearProbes(seed=0).fit(low, y)
    assert (compiled.span_rank_ == 12).all() and compiled.converged_.all()
    np.testing.assert_allclose(compiled.coef_, reference.coef_, rtol=0, atol=2e-3 * np.abs(reference.coef_).max())
    np.testing.assert_array_equal(compiled.predict(low), reference.predict(low))


def test_kernels_still_compile_where_numba_cannot_cache():
    # e.g. a read-only install without a writable home: numba refuses cache=True at decoration
    namespace = {}
    exec(compile("def add_one(x):\n    return x + 1\n", "<no file>", "exec"), namespace)
    assert kernels._jit(namespace["add_one"])(2) == 3
