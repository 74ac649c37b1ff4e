"""Per-head score heatmaps (probe AP/accuracy/AUROC per layer × head)."""
from __future__ import annotations


def head_score_matrix(table, value: str = "ap"):
    """Tidy table with `layer`, `head` and `value` columns → (matrix [n_layers, n_heads] as a DataFrame)."""
    missing = {"layer", "head", value} - set(table.columns)
    if missing:
        raise ValueError(f"the table needs columns layer, head and {value!r}; missing {sorted(missing)}")
    return table.pivot(index="layer", columns="head", values=value).sort_index().sort_index(axis=1)


def plot_head_scores(table, value: str = "ap", title: str | None = None):
    """Heatmap of a per-head score (layers down, heads across) from a probe result table; returns a plotly Figure."""
    import plotly.graph_objects as go

    m = head_score_matrix(table, value)
    fig = go.Figure(go.Heatmap(z=m.values, x=[str(h) for h in m.columns], y=[str(l) for l in m.index],
                               colorscale="Viridis", colorbar={"title": value},
                               hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"{value} per head", xaxis_title="head", yaxis_title="layer",
                      yaxis_autorange="reversed")
    return fig
