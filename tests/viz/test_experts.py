"""Expert-heads figures: the values drawn are the table's values, selections are marked, bad input is refused."""
import numpy as np
import pandas as pd
import pytest
import torch

from workbench.viz import plot_expert_heads, plot_head_sweep, plot_metric_bars, plot_neuron_ap, plot_retrieval_gallery


def _heads():
    rows = [(l, h, 0.5 + 0.1 * h + 0.01 * l, 0.1 * (h - 1), h == 2, h == 0) for l in (4, 5) for h in range(3)]
    return pd.DataFrame(rows, columns=["layer", "head", "ap", "attribution", "selected_ap", "selected_attribution"])


def test_expert_heads_heatmaps_show_the_table():
    fig = plot_expert_heads(_heads())
    ap, ap_marks, attr, attr_marks = fig.data
    np.testing.assert_allclose(np.asarray(ap.z), [[0.54, 0.64, 0.74], [0.55, 0.65, 0.75]])
    np.testing.assert_allclose(np.asarray(attr.z), [[-0.1, 0.0, 0.1], [-0.1, 0.0, 0.1]], atol=1e-12)
    assert list(ap_marks.x) == ["2", "2"] and list(ap_marks.y) == ["4", "5"]
    assert list(attr_marks.x) == ["0", "0"] and attr.zmid == 0
    with pytest.raises(ValueError, match=r"the head table needs columns .*missing \['attribution'"):
        plot_expert_heads(_heads().drop(columns="attribution"))


def test_neuron_ap_histograms():
    neurons = pd.DataFrame({"layer": [5] * 6, "head": [0, 0, 0, 1, 1, 1], "neuron": [0, 1, 2] * 2,
                            "ap": [0.9, 0.8, 0.3, 0.5, 0.4, 0.45]})
    fig = plot_neuron_ap(neurons, [(5, 0)], [(5, 1)], threshold=0.42)
    assert [list(t.x) for t in fig.data] == [[0.9, 0.8, 0.3], [0.5, 0.4, 0.45]]
    assert "67% above 0.42" in fig.data[0].hovertemplate and "67% above 0.42" in fig.data[1].hovertemplate
    assert len(fig.layout.shapes) == 2  # one threshold line per panel
    with pytest.raises(ValueError, match="plot_neuron_ap needs at least one head"):
        plot_neuron_ap(neurons, [])


def test_metric_bars_with_intervals():
    table = pd.DataFrame({"variant": ["baseline", "a", "baseline", "a"], "metric": ["gender_ndkl"] * 2 + ["map"] * 2,
                          "value": [0.1, 0.05, 0.9, 0.88], "lo": [0.08, 0.03, 0.85, 0.8],
                          "hi": [0.13, 0.06, 0.95, 0.9]})
    fig = plot_metric_bars(table, ["gender_ndkl", "map", "absent"])
    ndkl, mAP = fig.data
    assert list(ndkl.x) == ["baseline", "a"] and list(ndkl.y) == [0.1, 0.05]
    np.testing.assert_allclose(ndkl.error_y.array, [0.03, 0.01])
    np.testing.assert_allclose(ndkl.error_y.arrayminus, [0.02, 0.02])
    np.testing.assert_allclose(mAP.y, [0.9, 0.88])
    with pytest.raises(ValueError, match=r"none of the metrics is in the table; it has \['gender_ndkl', 'map'\]"):
        plot_metric_bars(table, ["recall_at_1"])


def test_head_sweep_lines_start_at_the_baseline():
    names = ["baseline", "ap_top1_neutral", "ap_top4_neutral", "attribution_top2_neutral", "ap_top4_zero"]
    table = pd.DataFrame({"variant": names, "metric": ["gender_ndkl"] * 5, "value": [0.10, 0.09, 0.12, 0.06, 0.2],
                          "lo": [0.08, 0.07, 0.1, 0.05, 0.1], "hi": [0.12, 0.1, 0.13, 0.08, 0.3]})
    fig = plot_head_sweep(table, "gender_ndkl", chance=0.035)
    attribution, ap = fig.data
    assert list(attribution.x) == [0, 2] and list(attribution.y) == [0.10, 0.06]
    assert list(ap.x) == [0, 1, 4] and list(ap.y) == [0.10, 0.09, 0.12]  # "ap_top4_zero" is not a sweep point
    np.testing.assert_allclose(ap.error_y.arrayminus, [0.02, 0.02, 0.02])
    assert fig.layout.shapes[0].y0 == 0.035  # the chance line
    with pytest.raises(ValueError, match="no .*_top\\{k\\}_neutral variants"):
        plot_head_sweep(table[table["variant"].isin(["baseline", "ap_top4_zero"])], "gender_ndkl")
    with pytest.raises(ValueError, match="no 'map' row for the baseline"):
        plot_head_sweep(table, "map")


def test_retrieval_gallery():
    images = [torch.full((3, 4, 4), 0.5), torch.zeros(3, 4, 4, dtype=torch.uint8)]
    fig = plot_retrieval_gallery({"baseline": images, "after": images[:1]},
                                 {"baseline": ["male", "female"], "after": ["female"]}, "a photo of a nurse")
    assert len(fig.data) == 3
    assert np.asarray(fig.data[0].z).max() == 128 and np.asarray(fig.data[1].z).max() == 0
    assert [a.text for a in fig.layout.annotations if a.text in ("male", "female")] == ["male", "female", "female"]
    with pytest.raises(ValueError, match="needs at least one variant"):
        plot_retrieval_gallery({}, {}, "q")
