"""SEM figures: where each latent sits in (content score, bias score), and how the modulation M is spread
(docs/sem.md). Inputs are `SEM.query_table` rows (tidy: query, latent, z_in, s_c, s_b, M, z_out)."""
from __future__ import annotations

__all__ = ["plot_sem_scores", "plot_modulation_histogram"]


def plot_sem_scores(query_table, query: str, title: str = ""):
    """Scatter of the content score s_c (x) against the bias score s_b (y) of every latent for one query,
    coloured by M and sized by the query's latent activation z_in (latents at 0 drawn small)."""
    import plotly.graph_objects as go

    rows = query_table[query_table["query"] == query]
    if rows.empty:
        raise ValueError(f"the table has no rows for query {query!r}; it has {sorted(set(query_table['query']))[:5]}")
    size = 4 + 16 * rows["z_in"] / max(float(rows["z_in"].max()), 1e-12)
    fig = go.Figure(go.Scatter(
        x=rows["s_c"], y=rows["s_b"], mode="markers",
        marker={"color": rows["M"], "colorscale": "RdBu", "cmin": 0, "cmax": float(max(1.0, rows["M"].max())),
                "size": size, "colorbar": {"title": "M"}, "line": {"width": 0}},
        text=[f"latent {int(i)}: z={z:.3g}, M={m:.3g}" for i, z, m in zip(rows["latent"], rows["z_in"], rows["M"])],
        hoverinfo="text"))
    fig.update_layout(title=title or f"SEM scores per latent for {query!r}", xaxis_title="content score s_c",
                      yaxis_title="bias score s_b", template="plotly_white", width=640, height=520)
    return fig


def plot_modulation_histogram(tables: dict, title: str = "SEM modulation M over latents and queries"):
    """Overlaid histograms of M, one per variant: {variant: query_table}. M ≤ 1 pulls a latent toward the
    diverse median, M > 1 pushes it away (amplifies it)."""
    import plotly.graph_objects as go

    if not tables:
        raise ValueError("plot_modulation_histogram needs at least one {variant: query_table}")
    fig = go.Figure()
    for name, table in tables.items():
        fig.add_trace(go.Histogram(x=table["M"], name=name, opacity=0.6, nbinsx=40))
    fig.update_layout(barmode="overlay", title=title, xaxis_title="M", yaxis_title="latents × queries",
                      template="plotly_white", width=720, height=420)
    return fig
