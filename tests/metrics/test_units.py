"""unit_scores: every coordinate's AUROC / AP against scikit-learn, its input forms and its errors."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from workbench.metrics import unit_scores


def test_unit_scores_equal_sklearn_per_coordinate():
    rng = np.random.default_rng(17)
    acts = rng.integers(0, 5, size=(200, 3, 4)).astype(np.float32)  # [n, head, neuron], many ties
    y = rng.integers(0, 2, 200)
    table = unit_scores(acts, y, unit_index=["head", "neuron"], max_chunk_bytes=64 * 200 * 5)  # 5-unit chunks
    assert list(table.columns) == ["head", "neuron", "auroc", "ap"]
    assert table[["head", "neuron"]].values.tolist() == [[h, j] for h in range(3) for j in range(4)]
    for _, row in table.iterrows():
        col = acts[:, int(row["head"]), int(row["neuron"])]
        assert row.auroc == pytest.approx(roc_auc_score(y, col), abs=1e-6)
        assert row.ap == pytest.approx(average_precision_score(y, col), abs=1e-6)


def test_unit_scores_multiclass_one_row_per_class():
    rng = np.random.default_rng(18)
    acts = rng.standard_normal((150, 5))
    y = np.array([2, 4, 8])[rng.integers(0, 3, 150)]
    table = unit_scores(acts, y)
    assert len(table) == 15 and sorted(table["class"].unique()) == [2, 4, 8]
    row = table[(table.unit == 3) & (table["class"] == 4)].iloc[0]
    assert row.ap == pytest.approx(average_precision_score(y == 4, acts[:, 3]), abs=1e-6)


def test_unit_scores_dict_keys_and_float64_tensor():
    rng = np.random.default_rng(19)
    y = rng.integers(0, 2, 120)
    a, b = rng.standard_normal(120), rng.standard_normal((120, 2))
    table = unit_scores({"a": a, "b": torch.from_numpy(b)}, y)
    assert table["unit"].tolist() == ["a", ("b", 0), ("b", 1)]
    np.testing.assert_allclose(
        table["auroc"], [roc_auc_score(y, a), roc_auc_score(y, b[:, 0]), roc_auc_score(y, b[:, 1])], atol=1e-12
    )
    # a float64 tensor is scored as given (no rounding to float32): values 1e-12 apart stay ordered
    fine = torch.tensor([1.0, 1.0 + 1e-12, 1.0 + 2e-12, 1.0 + 3e-12], dtype=torch.float64)[:, None]
    assert unit_scores(fine, np.array([0, 0, 1, 1]))["auroc"].tolist() == [1.0]


def test_unit_scores_index_types():
    rng = np.random.default_rng(20)
    acts, y = rng.standard_normal((60, 4)), rng.integers(0, 2, 60)
    index = pd.MultiIndex.from_tuples([(9, 0), (9, 1), (10, 0), (10, 1)], names=["layer", "head"])
    table = unit_scores(acts, y, unit_index=index)
    assert table[["layer", "head"]].values.tolist() == [[9, 0], [9, 1], [10, 0], [10, 1]]
    with pytest.raises(ValueError, match="unit_index has 3 rows but there are 4 units"):
        unit_scores(acts, y, unit_index=pd.Index([1, 2, 3], name="head"))


@pytest.mark.parametrize(
    "acts, labels, match",
    [
        (np.zeros((0, 3)), np.zeros(0, int), r"acts has no samples \(shape \(0, 3\), axis 0 is empty\)"),
        (np.zeros((5, 0, 4)), np.array([0, 1, 0, 1, 0]), r"acts has no units \(shape \(5, 0, 4\)"),
        ({}, np.array([0, 1]), "acts is an empty dict"),
        ({"a": np.zeros((4, 0))}, np.array([0, 1, 0, 1]), r"acts has no units \(shape \(4, 0\)"),
        (np.zeros((4, 3)), np.array([1, 1, 1, 1]), r"single class \(1\).*at least two classes"),
        (np.zeros(4), np.array([0, 1, 0, 1]), r"acts must be \[n, units, \.\.\.\]"),
        (np.zeros((4, 3)), np.array([0, 1, 0]), "one label per sample"),
    ],
)
def test_unit_scores_bad_input_says_what_was_wrong(acts, labels, match):
    with pytest.raises(ValueError, match=match):
        unit_scores(acts, labels)


def test_metrics_import_nothing_from_other_layers():
    # imports point one way: probes (and every layer) may use metrics, never the reverse
    code = "import sys, workbench.metrics; print(*sorted(m for m in sys.modules if m.startswith('workbench.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "workbench.metrics.units" in loaded
    assert [m for m in loaded if not m.startswith(("workbench.metrics", "workbench.files"))] == []
