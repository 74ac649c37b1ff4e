"""Generic comparison figures: the bars show the counts / values of the tables, bad input is refused."""
import numpy as np
import pandas as pd
import pytest

from workbench.viz import group_mix_table, plot_method_comparison, plot_retrieval_mix


def test_group_mix_table_counts_every_group():
    table = group_mix_table({"baseline": ["male", "male", "female", "male"], "after": ["female", "male"]},
                            ["male", "female"])
    assert table.to_dict("list") == {"variant": ["baseline", "baseline", "after", "after"],
                                     "group": ["male", "female", "male", "female"], "count": [3, 1, 1, 1],
                                     "share": [0.75, 0.25, 0.5, 0.5]}
    with pytest.raises(ValueError, match=r"variant 'x' has groups \['other'\] that are not in names"):
        group_mix_table({"x": ["other"]}, ["male", "female"])


def test_retrieval_mix_bars_and_images():
    groups = {"baseline": ["male", "male", "female"], "after": ["female", "male", "female"]}
    images = {v: [np.full((3, 4, 4), i / 3, dtype=np.float32) for i in range(3)] for v in groups}
    fig = plot_retrieval_mix(groups, ["male", "female"], "a photo of a nurse", thumbnails=images)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [(t.name, list(t.x), list(t.y)) for t in bars] == [
        ("male", [2], ["baseline"]), ("female", [1], ["baseline"]), ("male", [1], ["after"]),
        ("female", [2], ["after"])]
    pictures = [t for t in fig.data if t.type == "image"]
    assert len(pictures) == 6 and int(np.asarray(pictures[2].z)[0, 0, 0]) == 170  # 2/3 → 170 of 255
    assert fig.layout.barmode == "stack" and "a photo of a nurse" in fig.layout.title.text
    bare = plot_retrieval_mix(groups, ["male", "female"], "q")  # no images: only the bars
    assert {t.type for t in bare.data} == {"bar"}
    with pytest.raises(ValueError, match="at least one variant"):
        plot_retrieval_mix({}, ["male"], "q")


def test_method_comparison_bars_and_intervals():
    table = pd.DataFrame([
        ("experts", "baseline", "gender_ndkl", 0.06, 0.05, 0.07),
        ("experts", "ap_top3_neutral", "gender_ndkl", 0.05, 0.04, 0.065),
        ("sem", "semb", "gender_ndkl", 0.03, 0.02, 0.04),
        ("experts", "ap_top3_neutral", "map", 0.9, 0.88, 0.92),
        ("sem", "semb", "map", 0.8, 0.78, 0.83),
    ], columns=["method", "variant", "metric", "value", "lo", "hi"])
    fig = plot_method_comparison(table, ["gender_ndkl", "map", "absent"])
    bars = [(t.name, list(t.x), [round(v, 6) for v in t.y]) for t in fig.data]
    assert bars == [("experts", ["experts: ap_top3_neutral"], [0.05]), ("sem", ["sem: semb"], [0.03]),
                    ("experts", ["experts: ap_top3_neutral"], [0.9]), ("sem", ["sem: semb"], [0.8])]
    np.testing.assert_allclose(fig.data[0].error_y.array, [0.015])
    np.testing.assert_allclose(fig.data[0].error_y.arrayminus, [0.01])
    assert any("baseline 0.0600 [0.0500, 0.0700]" in (a.text or "") for a in fig.layout.annotations)
    with pytest.raises(ValueError, match=r"needs columns method, variant, metric, value, lo, hi; missing \['method'\]"):
        plot_method_comparison(table.drop(columns="method"), ["map"])
    with pytest.raises(ValueError, match="none of the metrics is in the table"):
        plot_method_comparison(table, ["recall_at_1"])
