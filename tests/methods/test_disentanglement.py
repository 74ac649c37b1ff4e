"""Disentanglement score (sequential probing): the probes-module implementation against a scikit-learn transcription
of the authors' protocol on a small fixture, the score rule, the prompts, and errors."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from workbench.data import prompt_sets
from workbench.methods.disentanglement import _score, disentanglement_prompts, disentanglement_score


def fixture(seed=0, n_main=4, n_bias=2, per_cell=12, d=12, leak=1.0):
    """Features with a main-task signal and a bias signal; main class m holds (1 + leak)× more rows of bias class
    m mod n_bias, so the main task predicts the bias above chance (leak = 0: not at all)."""
    rng = np.random.default_rng(seed)
    cells = [(m, b) for m in range(n_main) for b in range(n_bias)]
    sizes = [round(per_cell * (1 + leak)) if m % n_bias == b else per_cell for m, b in cells]
    main = np.concatenate([np.full(k, m) for (m, _), k in zip(cells, sizes)])
    bias = np.concatenate([np.full(k, b) for (_, b), k in zip(cells, sizes)])
    X = rng.normal(size=(len(main), d))
    X[np.arange(len(main)), main] += 2.5
    X[:, n_main] += 2.0 * bias
    return X.astype(np.float32), main, bias


def authors(X, y_main, y_second, n_splits=5, seed=42):
    """disentanglement_study/disentanglement_experiment.py, fold loop transcribed."""
    kfold = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    main_scores, second_scores, seq_scores = [], [], []
    for train_index, test_index in kfold.split(X, y_main):
        X_train, X_test = X[train_index], X[test_index]
        p_main = Pipeline([("scaler", StandardScaler()),
                           ("model", LogisticRegression(max_iter=1000, random_state=seed))])
        p_main.fit(X_train, y_main[train_index])
        p_second = Pipeline([("scaler", StandardScaler()),
                             ("model", LogisticRegression(max_iter=1000, random_state=seed))])
        p_second.fit(X_train, y_second[train_index])
        main_scores.append(accuracy_score(y_main[test_index], p_main.predict(X_test)))
        second_scores.append(accuracy_score(y_second[test_index], p_second.predict(X_test)))
        scaler, model = p_main.named_steps["scaler"], p_main.named_steps["model"]
        logits_train = model.decision_function(scaler.transform(X_train))
        logits_test = model.decision_function(scaler.transform(X_test))
        p_seq = Pipeline([("scaler", StandardScaler()),
                          ("model", LogisticRegression(max_iter=1000, random_state=seed))])
        p_seq.fit(logits_train, y_second[train_index])
        seq_scores.append(accuracy_score(y_second[test_index], p_seq.predict(logits_test)))
    return np.array(main_scores), np.array(second_scores), np.array(seq_scores)


@pytest.mark.parametrize("n_bias, leak", [(2, 1.0), (3, 1.5)])
def test_matches_the_scikit_learn_protocol(n_bias, leak):
    X, main, bias = fixture(n_bias=n_bias, leak=leak)
    got = disentanglement_score(X, main, bias)
    acc_main, acc_b, acc_seq = authors(X, main, bias)
    # the same objective solved to tolerance: predictions agree except at most one near-tie per fold
    n_test = len(X) // 5
    for ours, theirs in ((got.folds["acc_main"], acc_main), (got.folds["acc_b"], acc_b),
                         (got.folds["acc_b_given_main"], acc_seq)):
        assert np.abs(ours.to_numpy() - theirs).max() <= 1 / n_test + 1e-12
    assert got.acc_b[0] == pytest.approx(acc_b.mean(), abs=1 / n_test)
    chance = 1 / n_bias
    E, D, sigma = _score((acc_b.mean(), acc_b.std()), (acc_seq.mean(), acc_seq.std()), chance)
    assert 0 < D < 1  # the fixture leaks some bias through the main logits, not all of it
    assert got.D == pytest.approx(D, abs=0.1) and got.chance == chance
    assert got.acc_b[0] > chance + 0.2 and got.acc_main[0] > 0.5  # both probes learn their task


def test_more_leakage_lowers_the_score():
    low = disentanglement_score(*fixture(leak=0.5, seed=1))
    high = disentanglement_score(*fixture(leak=3.0, seed=1))
    assert high.acc_b_given_main[0] > low.acc_b_given_main[0]
    assert 0 < high.D < low.D < 1


def test_score_rule_and_error_propagation():
    E, D, sigma = _score((0.9, 0.02), (0.7, 0.05), 0.5)
    assert E == pytest.approx(0.5) and D == pytest.approx(0.5)
    assert sigma == pytest.approx(0.5 * np.sqrt((0.05 / 0.2) ** 2 + (0.02 / 0.4) ** 2))
    assert _score((0.9, 0.0), (0.45, 0.0), 0.5) == (0.0, 0.0, 0.0)  # the authors' rule: no leakage → 0
    assert _score((0.5, 0.0), (0.7, 0.0), 0.5) == (0.0, 0.0, 0.0)


def test_prompts_cross_profession_and_class():
    texts, main, bias, names, classes = disentanglement_prompts(prompt_sets("synthsocial"), "gender")
    assert classes == ["male", "female"] and names[0] == "doctor" and len(names) == 8
    assert len(texts) == len(set(texts)) == len(main) == len(bias)
    assert "a friendly female nurse" in texts and texts[main.tolist().index(1)].endswith("nurse")
    counts = np.bincount(main * 2 + bias)
    assert (counts == counts[0]).all() and counts[0] == 11  # the query and its 10 paraphrase templates
    for t, b in zip(texts, bias):
        assert ("female" in t.split()) == (b == 1) and ("male" in t.split()) == (b == 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(features=np.zeros((4, 2, 2))), r"features must be a matrix \[n, d\]"),
    (dict(main=np.zeros(3)), r"main labels have shape \(3,\), expected \(20,\)"),
    (dict(bias=np.zeros(20)), "bias labels have a single class"),
    (dict(n_splits=1), "n_splits must be an integer ≥ 2"),
    (dict(n_splits=11), "the rarest main class has 10 rows, fewer than n_splits=11"),
])
def test_errors(kwargs, message):
    args = dict(features=np.random.default_rng(0).normal(size=(20, 3)), main=np.arange(20) % 2,
                bias=np.arange(20) // 10)
    n_splits = kwargs.pop("n_splits", 5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        disentanglement_score(args["features"], args["main"], args["bias"], n_splits=n_splits)
