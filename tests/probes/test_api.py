"""Batched probes against per-unit scikit-learn fits, the exact low-rank shortcut, and the tidy API."""

import importlib.util
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from workbench.probes import LinearProbes, probe

REPO = pathlib.Path(__file__).resolve().parents[2]


def full_rank(rng, n=300, units=4, d=12, classes=2):
    """Anisotropic features with a class signal in the first coordinates; labels in [0, classes)."""
    y = rng.integers(0, classes, n)
    X = rng.standard_normal((n, units, d)) * rng.uniform(0.3, 3.0, d) + rng.standard_normal(d)
    X[np.arange(n), :, y] += 0.8
    return X, y


def low_rank(rng, n=400, units=5, d=60, rank=6, classes=2):
    """Each unit's rows lie in a ``rank``-dimensional affine subspace of R^d (like a head's output)."""
    y = rng.integers(0, classes, n)
    z = rng.standard_normal((n, units, rank))
    z[np.arange(n), :, y % rank] += 1.0
    X = np.einsum("nur,urd->nud", z, rng.standard_normal((units, rank, d))) + 2.0 * rng.standard_normal((units, d))
    return X, y


def sklearn_decisions(X, y, standardize=False):
    """Reference: one LogisticRegression (C=1, tight tol) per unit, decision values on X."""
    out = []
    for u in range(X.shape[1]):
        xu = X[:, u].astype(np.float64)
        if standardize:
            xu = StandardScaler().fit_transform(xu)
        model = LogisticRegression(tol=1e-10, max_iter=10_000).fit(xu, y)
        out.append(model.decision_function(xu))
    return np.stack(out, axis=1)  # [n, units] or [n, units, classes]


def exact(**kwargs):
    return LinearProbes(dtype=torch.float64, tol=1e-9, max_iter=500, **kwargs)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("standardize", [False, True])
def test_matches_sklearn_full_rank(classes, standardize):
    X, y = full_rank(np.random.default_rng(classes), classes=classes)
    probes = exact(standardize=standardize).fit(X, y)
    expected = sklearn_decisions(X, y, standardize)
    got = probes.decision_function(X)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5 * (1 + np.abs(expected).max()))
    assert probes.converged_.all() and (probes.span_rank_ == X.shape[2]).all()


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("standardize", [False, True])
def test_low_rank_shortcut_is_exact(classes, standardize):
    X, y = low_rank(np.random.default_rng(10 + classes), classes=classes)
    probes = exact(standardize=standardize).fit(X, y)
    assert (probes.span_rank_ == 6).all()  # fitted in the 6-d span, not in R^60
    expected = sklearn_decisions(X, y, standardize)
    np.testing.assert_allclose(probes.decision_function(X), expected, atol=1e-5 * (1 + np.abs(expected).max()))


def test_span_is_checked_on_every_row():
    rng = np.random.default_rng(4)
    X, y = low_rank(rng)
    X[123, 2] += 5.0 * rng.standard_normal(X.shape[2])  # one row of unit 2 leaves the span
    probes = exact(standardize=False).fit(X, y)
    assert probes.span_rank_.tolist() == [6, 6, X.shape[2], 6, 6]
    expected = sklearn_decisions(X, y)
    np.testing.assert_allclose(probes.decision_function(X), expected, atol=1e-5 * (1 + np.abs(expected).max()))


def test_float32_default_matches_sklearn_accuracy():
    rng = np.random.default_rng(5)
    X, y = low_rank(rng, n=600, units=6)
    X = X.astype(np.float32)
    probes = LinearProbes(standardize=False).fit(X[:400], y[:400])
    expected = [
        LogisticRegression().fit(X[:400, u], y[:400]).score(X[400:, u], y[400:]) for u in range(X.shape[1])
    ]
    np.testing.assert_allclose(probes.score(X[400:], y[400:]), expected, atol=0.011)


def test_shapes_labels_and_probabilities():
    rng = np.random.default_rng(6)
    X, y = full_rank(rng, classes=3)
    labels = np.array([3, 7, 9])[y]  # arbitrary label values
    probes = LinearProbes().fit(X, labels)
    assert probes.classes_.tolist() == [3, 7, 9]
    assert probes.coef_.shape == (4, 12, 3) and probes.intercept_.shape == (4, 3)
    proba = probes.predict_proba(X)
    assert proba.shape == (300, 4, 3)
    np.testing.assert_allclose(proba.sum(-1), 1.0, atol=1e-6)
    pred = probes.predict(X)
    assert set(np.unique(pred)) <= {3, 7, 9}
    np.testing.assert_array_equal(pred, probes.classes_[proba.argmax(-1)])
    np.testing.assert_allclose(probes.score(X, labels), (pred == labels[:, None]).mean(0))

    binary = LinearProbes().fit(X, labels == 7)
    assert binary.decision_function(X).shape == (300, 4)
    p1 = binary.predict_proba(X)[..., 1]
    np.testing.assert_allclose(p1, 1 / (1 + np.exp(-binary.decision_function(X))), atol=1e-6)


def test_input_forms_agree():
    rng = np.random.default_rng(7)
    X, y = full_rank(rng, units=6)
    ref = LinearProbes().fit(X, y)
    four_d = LinearProbes().fit(X.reshape(300, 2, 3, 12), y)  # [n, layer, head, d]
    assert four_d.unit_shape_ == (2, 3)
    np.testing.assert_allclose(four_d.coef_, ref.coef_, rtol=1e-6, atol=1e-9)
    as_dict = LinearProbes().fit({f"head{u}": torch.from_numpy(X[:, u]) for u in range(6)}, torch.from_numpy(y))
    assert as_dict.unit_keys_[0] == "head0"
    np.testing.assert_allclose(as_dict.coef_, ref.coef_, rtol=1e-6, atol=1e-9)
    scalar = LinearProbes().fit(X[:, :, 0], y)  # [n, units]: one scalar per unit
    assert scalar.coef_.shape == (6, 1, 1)


def test_unit_chunks_and_seed_reproducibility():
    rng = np.random.default_rng(8)
    X, y = low_rank(rng)
    a = LinearProbes(seed=3).fit(X, y)
    b = LinearProbes(seed=3).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    chunked = LinearProbes(seed=3, unit_chunk=2).fit(X, y)
    np.testing.assert_allclose(chunked.decision_function(X), a.decision_function(X), atol=1e-3)


def test_adam_reaches_the_same_objective_and_is_seeded():
    rng = np.random.default_rng(9)
    X, y = full_rank(rng, n=400, d=8)
    reference = exact(standardize=True, l2=1e-2).fit(X, y).decision_function(X)
    full_batch = LinearProbes(optimizer="adam", lr=1e-2, max_iter=1000, batch_size=400, l2=1e-2).fit(X, y)
    np.testing.assert_allclose(full_batch.decision_function(X), reference, atol=1e-3)
    adam = LinearProbes(optimizer="adam", lr=3e-3, max_iter=300, batch_size=100, l2=1e-2, seed=1).fit(X, y)
    again = LinearProbes(optimizer="adam", lr=3e-3, max_iter=300, batch_size=100, l2=1e-2, seed=1).fit(X, y)
    np.testing.assert_array_equal(adam.coef_, again.coef_)
    np.testing.assert_allclose(adam.decision_function(X), reference, atol=0.03)  # mini-batch noise


def test_nonconvergence_warns():
    rng = np.random.default_rng(11)
    X, y = full_rank(rng)
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        probes = LinearProbes(max_iter=1, tol=1e-12).fit(X, y)
    assert not probes.converged_.any()


@pytest.mark.parametrize(
    "X, y, error, match",
    [
        (np.zeros((5, 2, 3)), np.array([0, 1, 0, 1]), ValueError, "one label per sample"),
        (np.zeros((4, 2, 3)), np.array([0.0, 1.0, 0.0, 1.0]), TypeError, "integers"),
        (np.zeros((4, 2, 3)), np.array([1, 1, 1, 1]), ValueError, "single class"),
        (np.zeros(4), np.array([0, 1, 0, 1]), ValueError, r"\[n, units, d\]"),
        ({"a": np.zeros((4, 3)), "b": np.zeros((4, 2))}, np.array([0, 1, 0, 1]), ValueError, "same shape"),
    ],
)
def test_bad_input_raises_clear_errors(X, y, error, match):
    with pytest.raises(error, match=match):
        LinearProbes().fit(X, y)


Y10 = np.arange(10) % 2


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.zeros((0, 4, 3)), np.zeros(0, int), r"X has no samples \(shape \(0, 4, 3\), axis 0 is empty\)"),
        (torch.zeros(0, 5), [], r"X has no samples \(shape \(0, 5\)"),
        ({"a": np.zeros((0, 3)), "b": np.zeros((0, 3))}, [], r"X\['a'\] has no samples \(shape \(0, 3\)"),
        (np.zeros((10, 0, 3)), Y10, r"X has no units \(shape \(10, 0, 3\): a unit axis is empty\)"),
        (np.zeros((10, 2, 0, 3)), Y10, r"X has no units \(shape \(10, 2, 0, 3\)"),
        (np.zeros((10, 0)), Y10, r"X has no units \(shape \(10, 0\)"),
        (np.zeros((10, 4, 0)), Y10, r"X has units with no features \(shape \(10, 4, 0\): the last axis is empty\)"),
        ({"a": np.zeros((10, 0))}, Y10, r"X\['a'\] has units with no features"),
        ({}, Y10, "X is an empty dict"),
    ],
)
@pytest.mark.parametrize("entry", ["fit", "probe"])
def test_empty_activations_say_which_axis_is_empty(X, y, match, entry):
    with pytest.raises(ValueError, match=match):
        if entry == "fit":
            LinearProbes().fit(X, y)
        else:
            probe(X, y)


@pytest.mark.parametrize("make", [full_rank, low_rank])
def test_nan_is_reported_with_its_unit(make):
    X, y = make(np.random.default_rng(12))
    X[17, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite.*unit 3"):
        LinearProbes().fit(X, y)


def test_predict_errors():
    X, y = full_rank(np.random.default_rng(13))
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearProbes().predict(X)
    probes = LinearProbes().fit(X, y)
    with pytest.raises(ValueError, match="3 units of dimension 12 but the probes were fitted on 4"):
        probes.predict(X[:, :3])
    with pytest.raises(ValueError, match="optimizer"):
        LinearProbes(optimizer="sgd").fit(X, y)


# ----------------------------------------------------------------------------- probe()


def test_probe_table_matches_metrics_on_the_held_out_split():
    rng = np.random.default_rng(14)
    X, y = low_rank(rng, n=500, units=6)
    res = probe(X.reshape(500, 2, 3, 60), y, unit_index=["layer", "head"], test_size=0.2, seed=0)
    table = res.table
    assert list(table.columns[:2]) == ["layer", "head"]
    assert table[["layer", "head"]].values.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert (table.n_train == 400).all() and (table.n_test == 100).all()
    assert len(np.intersect1d(res.train_index, res.test_index)) == 0
    # stratified: the class share is the same in both parts (to one sample)
    assert abs(y[res.test_index].mean() - y[res.train_index].mean()) < 0.01
    scores = res.probes.decision_function(X[res.test_index])
    for u in range(6):
        row = table.iloc[u]
        assert row.auroc == pytest.approx(roc_auc_score(y[res.test_index], scores[:, u]), abs=1e-9)
        assert row.ap == pytest.approx(average_precision_score(y[res.test_index], scores[:, u]), abs=1e-9)
        assert row.accuracy == pytest.approx(((scores[:, u] > 0) == y[res.test_index]).mean())
    top = res.top(3, by="auroc")
    assert top.auroc.tolist() == sorted(table.auroc, reverse=True)[:3]
    assert "ProbeResult(6 units, binary" in repr(res)


def test_probe_multiclass_pr_curves_and_index_types():
    rng = np.random.default_rng(15)
    X, y = full_rank(rng, n=300, units=2, classes=3)
    index = pd.MultiIndex.from_tuples([(11, 0), (11, 5)], names=["layer", "head"])
    res = probe(X, y, unit_index=index, pr_curves=True, seed=1)
    assert res.table.layer.tolist() == [11, 11] and res.table["head"].tolist() == [0, 5]
    proba = res.probes.predict_proba(X[res.test_index])
    expected_auc = roc_auc_score(y[res.test_index], proba[:, 1], multi_class="ovr")
    assert res.table.auroc[1] == pytest.approx(expected_auc, abs=1e-9)
    curves = res.pr_curves
    assert set(curves.columns) == {"layer", "head", "class", "threshold", "precision", "recall"}
    one = curves[(curves["head"] == 5) & (curves["class"] == 2)]
    assert one.recall.iloc[-1] == 0 and one.precision.iloc[-1] == 1
    frame = pd.DataFrame({"site": ["a", "b"]})
    assert probe(X, y, unit_index=frame).table.site.tolist() == ["a", "b"]


def test_probe_dict_with_tuple_keys_and_bad_index():
    rng = np.random.default_rng(16)
    X, y = full_rank(rng, units=2)
    acts = {(9, 1): X[:, 0], (9, 4): X[:, 1]}
    res = probe(acts, y, unit_index=["layer", "head"])
    assert res.table[["layer", "head"]].values.tolist() == [[9, 1], [9, 4]]
    with pytest.raises(ValueError, match="unit_index has 3 rows but there are 2 units"):
        probe(X, y, unit_index=pd.Index([1, 2, 3], name="head"))
    with pytest.raises(ValueError, match="at least 2"):
        probe(X[:3], np.array([0, 1, 1]))


# ----------------------------------------------------------------------------- benchmark script


def test_benchmark_quick_smoke():
    spec = importlib.util.spec_from_file_location("bench_probe", REPO / "benchmarks" / "bench_probe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bench.main(["--quick"])
    assert result["max_abs_delta_acc"] <= 0.01
    assert result["objective_gap_max"] <= 1e-6  # at least as converged as scikit-learn
    assert result["span_rank"] == [64]
