"""Vectorised AUROC / AP / PR curves against hand-computed values and scikit-learn, column by column."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from workbench.metrics.scores import PRCurve, auroc, average_precision, pr_curve


def tied_scores(rng, n, units):
    """Scores with heavy ties (small integer grid) next to continuous columns."""
    scores = rng.integers(0, 4, size=(n, units)).astype(np.float32)
    scores[:, ::3] = rng.standard_normal((n, len(range(0, units, 3))))
    return scores


def test_hand_computed_example():
    # scikit-learn's documented example: AUROC 0.75, AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333...
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    assert auroc(scores, y).item() == pytest.approx(0.75, abs=1e-12)
    assert average_precision(scores, y).item() == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)


def test_ties_count_half_and_form_one_threshold():
    # pairs (pos, neg): tie 1/2, win 1, loss 0, tie 1/2 -> AUROC 2/4; one threshold per tie group:
    # at s >= 1: P = 1/2, R = 1/2; at s >= 0: P = 1/2, R = 1 -> AP = 1/2
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0])
    y = torch.tensor([1, 0, 1, 0])
    assert auroc(scores, y).item() == pytest.approx(0.5, abs=1e-12)
    assert average_precision(scores, y).item() == pytest.approx(0.5, abs=1e-12)
    curve = pr_curve(scores, y)
    assert isinstance(curve, PRCurve)
    assert curve.thresholds.tolist() == [0.0, 1.0]
    assert curve.precision.tolist() == [0.5, 0.5, 1.0]
    assert curve.recall.tolist() == [1.0, 0.5, 0.0]


def test_binary_columns_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = tied_scores(rng, 300, 9)
    y = rng.integers(0, 2, 300)
    got_auc = auroc(scores, y).numpy()
    got_ap = average_precision(torch.from_numpy(scores), torch.from_numpy(y)).numpy()
    for j in range(scores.shape[1]):
        assert got_auc[j] == pytest.approx(roc_auc_score(y, scores[:, j]), abs=1e-6)
        assert got_ap[j] == pytest.approx(average_precision_score(y, scores[:, j]), abs=1e-6)


def test_pr_curves_match_sklearn_with_ties():
    rng = np.random.default_rng(1)
    scores = tied_scores(rng, 120, 6)
    y = rng.random(120) < 0.3
    curves = pr_curve(scores, y)
    assert len(curves) == 6
    for j, curve in enumerate(curves):
        precision, recall, thresholds = precision_recall_curve(y, scores[:, j])
        np.testing.assert_allclose(curve.precision.numpy(), precision, atol=1e-6)
        np.testing.assert_allclose(curve.recall.numpy(), recall, atol=1e-6)
        np.testing.assert_allclose(curve.thresholds.numpy(), thresholds, atol=0)


def test_multiclass_macro_one_vs_rest_matches_sklearn():
    rng = np.random.default_rng(2)
    n, units, classes = 200, 4, 3
    logits = rng.standard_normal((n, units, classes))
    proba = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = rng.integers(0, classes, n)
    got_auc = auroc(proba, y).numpy()
    got_ap = average_precision(proba, y).numpy()
    per_class = auroc(proba, y, average=None).numpy()
    assert per_class.shape == (units, classes)
    for u in range(units):
        assert got_auc[u] == pytest.approx(roc_auc_score(y, proba[:, u], multi_class="ovr"), abs=1e-6)
        assert got_ap[u] == pytest.approx(average_precision_score(y, proba[:, u]), abs=1e-6)
        for c in range(classes):
            assert per_class[u, c] == pytest.approx(roc_auc_score(y == c, proba[:, u, c]), abs=1e-6)
    nested = pr_curve(proba, y)
    precision, recall, _ = precision_recall_curve(y == 2, proba[:, 1, 2])
    np.testing.assert_allclose(nested[1][2].precision.numpy(), precision, atol=1e-6)
    np.testing.assert_allclose(nested[1][2].recall.numpy(), recall, atol=1e-6)


def test_units_axes_and_bool_labels_keep_shape():
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.standard_normal((50, 2, 3)))  # [n, layer, head] read as binary units
    y = torch.from_numpy(rng.random(50) < 0.5)
    # a 3-d array is [n, units, classes]: binary scores with unit axes must be flattened by the caller
    flat = auroc(scores.reshape(50, 6), y)
    assert flat.shape == (6,) and flat.dtype == torch.float64
    assert flat[4].item() == pytest.approx(roc_auc_score(y.numpy(), scores[:, 1, 1].numpy()), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=2, max_size=40).filter(
        lambda rows: len({label for _, label in rows}) == 2
    )
)
def test_property_equals_sklearn_on_random_tied_inputs(data):
    scores = np.array([s for s, _ in data], dtype=np.float64)
    y = np.array([label for _, label in data])
    assert auroc(scores, y).item() == pytest.approx(roc_auc_score(y, scores), abs=1e-9)
    assert average_precision(scores, y).item() == pytest.approx(average_precision_score(y, scores), abs=1e-9)


@pytest.mark.parametrize(
    "scores, y, error, match",
    [
        (np.zeros((4, 2)), np.array([0, 1, 0]), ValueError, "3 labels but scores have 4 rows"),
        (np.zeros((4, 2)), np.array([0.0, 1.0, 0.0, 1.0]), TypeError, "integer"),
        (np.zeros((4, 2)), np.array([1, 1, 1, 1]), ValueError, "only class 1"),
        (np.array([[0.1], [np.nan], [0.2], [0.3]]), np.array([0, 1, 0, 1]), ValueError, "NaN"),
        (np.zeros((4, 2)), np.array([0, 1, 2, 1]), ValueError, "binary 0/1"),
        (np.zeros((4, 2, 3)), np.array([0, 1, 3, 1]), ValueError, r"\[0, 3\)"),
        (np.zeros((4, 2, 3)), np.array([0, 1, 0, 1]), ValueError, "classes with no samples: \\[2\\]"),
        (np.zeros((4, 2)), np.array(["a", "b", "a", "b"]), TypeError, "numeric"),
    ],
)
def test_bad_input_raises_clear_errors(scores, y, error, match):
    with pytest.raises(error, match=match):
        auroc(scores, y)


def test_bad_average_raises():
    with pytest.raises(ValueError, match="average must be"):
        average_precision(np.random.default_rng(0).random((6, 1, 2)), np.array([0, 1] * 3), average="micro")
