"""N-TIDE's metrics: `fairness_report` (per-group rates counted directly) against the same rates through fairlearn's
MetricFrame, one frame per target class (what `group_rates` did before, and still does for combinations of group
columns). 2,000 test images, 8 classes, 2 groups, 64-d features: N-TIDE's bootstrap calls it once per row and
resample. Interleaved, medians. Goal: ≥ 20× faster.

    python -m benchmarks --only fairness_report
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case, interleaved, median  # noqa: E402

N, CLASSES = 2000, 8


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    import numpy as np

    from workbench.metrics import fairness_report
    from workbench.metrics.classification import _group_rates_fairlearn, _labels_and_predictions

    rng = np.random.default_rng(0)
    y, logits = rng.integers(0, CLASSES, N), rng.normal(size=(N, CLASSES))
    groups, features = rng.integers(0, 2, N), rng.normal(size=(N, 64))
    yt, yp, _ = _labels_and_predictions(y, logits, None)
    repeats = 3 if quick else 10
    times = interleaved({"counted": lambda: fairness_report(y, logits, groups, features=features),
                         "fairlearn": lambda: _group_rates_fairlearn(yt, yp, groups, list(range(CLASSES)))},
                        repeats)
    fast, slow = median(times["counted"]), median(times["fairlearn"])
    return [case(f"fairness_report vs fairlearn MetricFrame rates ({N} samples, {CLASSES} classes)",
                 figure=1e3 * fast, baseline=1e3 * slow, unit="ms",
                 baseline_name="group rates through one fairlearn MetricFrame per class",
                 ratio=slow / fast, ratio_means="baseline / figure (speed-up)", goal="≥ 20×", met=slow / fast >= 20,
                 device="cpu", dtype="float64", repeats=repeats)]


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
