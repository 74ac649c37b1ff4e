"""Figures for activation-patching results (`workbench.primitives.patch`)."""
from __future__ import annotations

VALUES = ("effect", "normalized")


def plot_effects(result, value: str = "effect", title: str | None = None):
    """A plotly Figure of a patching result.

    PatchResult → heatmap, rows = layers, columns = heads, z = `result.effects` (or `.normalized`)
    [n_layers, n_heads], diverging colours centred at 0. SitePatchResult → bar chart, one bar per site.
    NaN (normalized values where clean ≈ corrupted) shows as an empty cell.
    """
    import plotly.graph_objects as go

    if value not in VALUES:
        raise ValueError(f"value must be one of {VALUES}, got {value!r}")
    z = (result.effects if value == "effect" else result.normalized).detach().cpu().numpy()
    label = "effect" if value == "effect" else "normalized effect"
    default_title = (f"Activation patching ({result.direction.replace('_', ' ')}, position={result.position}): "
                     f"clean={result.clean:.3g}, corrupted={result.corrupted:.3g}")
    if hasattr(result, "sites"):
        fig = go.Figure(go.Bar(x=list(result.sites), y=z, hovertemplate="%{x}<br>" + label + "=%{y:.4g}<extra></extra>"))
        fig.update_layout(xaxis_title="site", yaxis_title=label)
    elif hasattr(result, "layers") and hasattr(result, "heads"):
        fig = go.Figure(go.Heatmap(
            z=z, x=[f"H{h}" for h in result.heads], y=[f"L{l}" for l in result.layers],
            colorscale="RdBu", zmid=0, colorbar={"title": label},
            hovertemplate="%{y}.%{x}<br>" + label + "=%{z:.4g}<extra></extra>",
        ))
        # Layer 0 at the top, as in TransformerLens/circuitsvis patching plots.
        fig.update_layout(xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed")
    else:
        raise TypeError(f"plot_effects expects a PatchResult or SitePatchResult, got {type(result).__name__}")
    fig.update_layout(title=title or default_title)
    return fig
