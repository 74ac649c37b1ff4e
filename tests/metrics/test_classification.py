"""Tests for workbench.metrics.classification: accuracies and N-TIDE fairness metrics."""

import math

import numpy as np
import pytest
import torch

from workbench.metrics.classification import (
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_report,
    group_rates,
    representation_bias_distance,
    worst_group_accuracy,
    zero_shot_accuracy,
)

# ---------------------------------------------------------------------------- zero-shot accuracy


def test_zero_shot_accuracy_top1_and_top2_by_hand():
    logits = np.array([
        [0.9, 0.1, 0.0],  # label 0: top-1 hit
        [0.2, 0.3, 0.5],  # label 1: second -> top-2 hit only
        [0.5, 0.5, 0.1],  # label 1: tied with class 0, tie goes to class 0 -> top-2 hit only
        [0.1, 0.2, 0.7],  # label 0: last -> miss
    ])
    labels = np.array([0, 1, 1, 0])
    assert zero_shot_accuracy(logits, labels) == pytest.approx(1 / 4)
    assert zero_shot_accuracy(torch.tensor(logits), torch.tensor(labels), k=2) == pytest.approx(3 / 4)
    assert zero_shot_accuracy(logits, labels, k=3) == 1.0


def test_zero_shot_accuracy_errors():
    with pytest.raises(ValueError, match="labels contains class 3 but logits has only 3 columns"):
        zero_shot_accuracy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels has 3 entries but 2 were expected"):
        zero_shot_accuracy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="k=4 is larger than the pool of 3 classes"):
        zero_shot_accuracy(np.zeros((2, 3)), np.array([0, 1]), k=4)


# ---------------------------------------------------------------------------- worst-group accuracy


def test_worst_group_accuracy_over_target_place_pairs_by_hand():
    # Waterbirds-like: y (0 landbird, 1 waterbird) x place (0 land, 1 water)
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    place = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    pred = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 0])
    # groups: (0,0): 3/3; (0,1): 1/2; (1,1): 3/3; (1,0): 1/2
    wga, table = worst_group_accuracy(pred, y, {"y": y, "place": place})
    assert wga == pytest.approx(0.5)
    assert list(table.columns) == ["y", "place", "accuracy", "count"]
    got = {(r.y, r.place): (r.accuracy, r.count) for r in table.itertuples()}
    assert got == {(0, 0): (1.0, 3), (0, 1): (0.5, 2), (1, 0): (0.5, 2), (1, 1): (1.0, 3)}
    assert table["accuracy"].is_monotonic_increasing  # worst first


def test_worst_group_accuracy_from_logits_and_one_group_column():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])  # predicts 0, 1, 0, 1
    labels = np.array([0, 0, 0, 1])
    groups = np.array(["a", "a", "b", "b"])  # a: 1/2, b: 2/2
    wga, table = worst_group_accuracy(logits, labels, groups)
    assert wga == pytest.approx(0.5)
    assert table["group"].tolist() == ["a", "b"]
    assert table["count"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="groups has 3 entries but there are 4 samples"):
        worst_group_accuracy(logits, labels, groups[:3])


# ---------------------------------------------------------------------------- N-TIDE metrics

# Three classes, two groups (a: first six samples, b: last six).
Y_TRUE = np.array([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 2, 2, 0, 1, 1, 1, 2, 0])
GROUPS = np.array(["a"] * 6 + ["b"] * 6)
# Worked by hand, one-vs-rest (TPR, FPR, PR = P(pred = c | group)):
#   class 0: a (1,   0,   2/6)   b (1/2, 1/4, 2/6)
#   class 1: a (1/2, 0,   1/6)   b (1,   1/4, 3/6)
#   class 2: a (1,   1/4, 3/6)   b (1/2, 0,   1/6)
HAND_TPR = {(0, "a"): 1, (0, "b"): .5, (1, "a"): .5, (1, "b"): 1, (2, "a"): 1, (2, "b"): .5}
HAND_FPR = {(0, "a"): 0, (0, "b"): .25, (1, "a"): 0, (1, "b"): .25, (2, "a"): .25, (2, "b"): 0}
HAND_PR = {(0, "a"): 2 / 6, (0, "b"): 2 / 6, (1, "a"): 1 / 6, (1, "b"): 3 / 6, (2, "a"): 3 / 6, (2, "b"): 1 / 6}


def test_group_rates_by_hand():
    rates = group_rates(Y_TRUE, Y_PRED, GROUPS)
    assert list(rates.columns) == ["class", "group", "count", "positives", "negatives", "tpr", "fpr",
                                   "selection_rate"]
    for r in rates.itertuples():
        assert (r.count, r.positives, r.negatives) == (6, 2, 4)
        assert r.tpr == pytest.approx(HAND_TPR[r._1, r.group])
        assert r.fpr == pytest.approx(HAND_FPR[r._1, r.group])
        assert r.selection_rate == pytest.approx(HAND_PR[r._1, r.group])


@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_group_rates_from_counts_equals_the_fairlearn_route(labels):
    """One column of groups is counted directly (fast); the result equals fairlearn's MetricFrame route, including
    a class with no positives in a group (TPR NaN) and a group where every sample is of one class (FPR NaN)."""
    import pandas as pd

    from workbench.metrics.classification import _group_rates_fairlearn

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    g = rng.integers(0, 3, 300)
    y[g == 2] = np.where(y[g == 2] == 3, 0, y[g == 2])  # group 2 has no positives of class 3
    y[:5], g[:5] = 1, 7  # group 7: five samples, all of class 1 (no negatives for class 1)
    if labels == "strings":
        g = np.array([f"g{v}" for v in g], dtype=object)
    fast = group_rates(y, pred, g)
    slow = _group_rates_fairlearn(y, pred, g, [0, 1, 2, 3])
    assert fast["tpr"].isna().sum() >= 1 and fast["fpr"].isna().sum() >= 1
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    assert list(fast["group"]) == list(slow["group"])


def test_eop_eo_dp_by_hand():
    # EOp: every class has a TPR gap of 1/2
    assert equal_opportunity_difference(Y_TRUE, Y_PRED, GROUPS) == pytest.approx(0.5)
    # EO: every class: 1/2 (|1/2| + |1/4|) = 3/8
    assert equalized_odds_difference(Y_TRUE, Y_PRED, GROUPS) == pytest.approx(0.375)
    # DP: gaps 0, 2/6, 2/6
    assert demographic_parity_difference(Y_TRUE, Y_PRED, GROUPS) == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)
    # restricting to class 1 only
    assert demographic_parity_difference(Y_TRUE, Y_PRED, GROUPS, classes=[1]) == pytest.approx(1 / 3)


def test_eo_takes_the_worst_pair_of_three_groups():
    # binary task scored on class 1 only; groups a, b, c of four samples with y = 1, 1, 0, 0
    y = np.tile([1, 1, 0, 0], 3)
    pred = np.array([1, 1, 0, 0,    # a: TPR 1,   FPR 0
                     1, 0, 1, 0,    # b: TPR 1/2, FPR 1/2
                     1, 0, 0, 0])   # c: TPR 1/2, FPR 0
    g = np.repeat(["a", "b", "c"], 4)
    # pairs: ab 1/2(1/2 + 1/2) = 1/2; ac 1/2(1/2 + 0) = 1/4; bc 1/2(0 + 1/2) = 1/4
    assert equalized_odds_difference(y, pred, g, classes=[1]) == pytest.approx(0.5)
    assert equal_opportunity_difference(y, pred, g, classes=[1]) == pytest.approx(0.5)
    # PR: a 1/2, b 1/2, c 1/4
    assert demographic_parity_difference(y, pred, g, classes=[1]) == pytest.approx(0.25)


def test_binary_dp_and_eop_agree_with_fairlearn():
    from fairlearn.metrics import demographic_parity_difference as fl_dp
    from fairlearn.metrics import equal_opportunity_difference as fl_eop

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, y, 1 - y)
    g = rng.integers(0, 3, 200)
    assert demographic_parity_difference(y, pred, g, classes=[1]) == pytest.approx(
        fl_dp(y, pred, sensitive_features=g))
    assert equal_opportunity_difference(y, pred, g, classes=[1]) == pytest.approx(
        fl_eop(y, pred, sensitive_features=g))


def test_undefined_rates_raise_skip_or_zero():
    # group b has no sample of class 2: its class-2 TPR is undefined
    y = np.array([0, 1, 2, 2, 0, 1, 0, 1])
    pred = np.array([0, 1, 2, 0, 0, 0, 0, 1])
    g = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    # TPR  class 0: a 1, b 1        class 1: a 1, b 1/2        class 2: a 1/2, b undefined
    with pytest.raises(ValueError, match="undefined tpr.*class 2 / group b.*undefined='skip'"):
        equal_opportunity_difference(y, pred, g)
    # skip: class 2 has a single defined group and drops out -> mean(0, 1/2)
    assert equal_opportunity_difference(y, pred, g, undefined="skip") == pytest.approx(0.25)
    # zero (N-TIDE reference code): class-2 gap = 1/2 - 0 -> mean(0, 1/2, 1/2)
    assert equal_opportunity_difference(y, pred, g, undefined="zero") == pytest.approx(1 / 3)


def test_fairness_metric_input_errors():
    with pytest.raises(ValueError, match="at least 2 sensitive groups"):
        equal_opportunity_difference(Y_TRUE, Y_PRED, np.zeros(12))
    with pytest.raises(ValueError, match="y_true contains class 3 but there are only 3 classes"):
        equal_opportunity_difference(np.r_[Y_TRUE[:-1], 3], np.eye(3)[Y_PRED], GROUPS)
    with pytest.raises(ValueError, match="y_true has 11 entries but 12 were expected"):
        equal_opportunity_difference(Y_TRUE[:-1], Y_PRED, GROUPS)
    with pytest.raises(ValueError, match="groups contains NaN"):
        demographic_parity_difference(Y_TRUE, Y_PRED, np.r_[np.zeros(11), np.nan])
    with pytest.raises(ValueError, match="undefined must be one of"):
        equal_opportunity_difference(Y_TRUE, Y_PRED, GROUPS, undefined="ignore")
    with pytest.raises(ValueError, match="classes contains 5"):
        group_rates(Y_TRUE, Y_PRED, GROUPS, classes=[5])


# ---------------------------------------------------------------------------- RBD


def test_representation_bias_distance_by_hand():
    feats = np.array([[2.0, 0.0], [0.0, 0.0],    # group a mean (1, 0)
                      [1.0, 2.0], [1.0, 0.0],    # group b mean (1, 1)
                      [0.0, 3.0], [0.0, -1.0]])  # group c mean (0, 1)
    g = np.array([0, 0, 1, 1, 2, 2])
    # two groups: 1 - cos((1,0), (1,1)) = 1 - 1/sqrt(2)
    assert representation_bias_distance(feats[:4], g[:4]) == pytest.approx(1 - 1 / math.sqrt(2))
    # three groups: worst pair a-c is orthogonal -> 1
    assert representation_bias_distance(torch.tensor(feats), g) == pytest.approx(1.0)
    assert representation_bias_distance(feats, g, distance="euclidean") == pytest.approx(math.sqrt(2))


def test_representation_bias_distance_is_zero_for_identical_group_means():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 8))
    feats = np.concatenate([x, x[::-1]])  # both groups hold the same rows -> same mean
    g = np.repeat([0, 1], 5)
    assert representation_bias_distance(feats, g) == pytest.approx(0.0, abs=1e-12)


def test_representation_bias_distance_errors():
    with pytest.raises(ValueError, match="zero vector"):
        representation_bias_distance(np.array([[1.0, 0], [-1.0, 0], [1.0, 1.0]]), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="at least 2 sensitive groups"):
        representation_bias_distance(np.ones((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="features contains 1 NaN"):
        representation_bias_distance(np.array([[1.0, np.nan], [1.0, 1.0]]), np.array([0, 1]))


# ---------------------------------------------------------------------------- report


def test_fairness_report_matches_individual_metrics():
    feats = np.random.default_rng(2).normal(size=(12, 4))
    report = fairness_report(Y_TRUE, np.eye(3)[Y_PRED], GROUPS, features=feats)
    assert report == pytest.approx({
        "accuracy": 9 / 12,  # a: 5 correct, b: 4 correct
        "eop_diff": equal_opportunity_difference(Y_TRUE, Y_PRED, GROUPS),
        "eo_diff": equalized_odds_difference(Y_TRUE, Y_PRED, GROUPS),
        "dp_diff": demographic_parity_difference(Y_TRUE, Y_PRED, GROUPS),
        "rbd": representation_bias_distance(feats, GROUPS),
    })
