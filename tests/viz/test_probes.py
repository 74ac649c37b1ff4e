import pandas as pd
import pytest

from workbench.viz import head_score_matrix, plot_head_scores


def test_head_score_heatmap_has_the_table_values():
    table = pd.DataFrame({"layer": [1, 0, 1, 0], "head": [0, 1, 1, 0], "ap": [0.3, 0.9, 0.4, 0.5]})
    m = head_score_matrix(table)
    assert m.values.tolist() == [[0.5, 0.9], [0.3, 0.4]]
    fig = plot_head_scores(table, title="gender")
    assert fig.data[0].z.tolist() == [[0.5, 0.9], [0.3, 0.4]] and fig.layout.title.text == "gender"


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"missing \['head'\]"):
        head_score_matrix(pd.DataFrame({"layer": [0], "ap": [0.5]}))
