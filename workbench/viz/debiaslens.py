"""DebiasLens figures: the selected social neurons (top-activating inputs, mean activation by group) and the α
sweep (bias vs utility). plotly is imported inside each function (docs/debiaslens.md)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

__all__ = ["plot_social_neurons", "plot_alpha_sweep"]


def _strip(images: Sequence, gap: int = 2):
    """Images [3, h, w] (floats in [0, 1] or uint8) side by side → one uint8 array [h, Σw + gaps, 3]."""
    import numpy as np

    arrays = []
    for image in images:
        a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        arrays.append(a.transpose(1, 2, 0))
    h = max(a.shape[0] for a in arrays)
    parts = []
    for a in arrays:
        pad = np.full((h, a.shape[1] + gap, 3), 255, dtype=np.uint8)
        pad[: a.shape[0], : a.shape[1]] = a
        parts.append(pad)
    return np.concatenate(parts, axis=1)


def plot_social_neurons(neurons, examples: Mapping[int, Sequence], title: Optional[str] = None):
    """One row per selected latent of a `SocialNeurons` search: its top-activating inputs (left; `examples`:
    {latent: images [3, h, w] best first} for the image tower, or {latent: prompts} for the text tower) and its
    mean pooled activation on every group of every attribute (right; bars, hover: the share of inputs it fires on).

    A search that selected nothing gives a figure that says so."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    latents = neurons.latents()
    if not latents:
        fig = go.Figure()
        fig.add_annotation(text=f"no social neurons at τ = {neurons.tau:g} ({neurons.site})", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(title=title or "social neurons", height=200)
        return fig
    unknown = [j for j in examples if j not in latents]
    if unknown:
        raise ValueError(f"examples has latents {unknown} that the search did not select ({latents})")
    by_group = neurons.group_activations(latents)
    who = {j: [f"{a}/{g}" for a in neurons.attributes for g in neurons.table[(neurons.table["attribute"] == a)
           & (neurons.table["latent"] == j) & neurons.table["selected"]]["group"]] for j in latents}
    fig = make_subplots(rows=len(latents), cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.06,
                        vertical_spacing=min(0.08, 0.5 / len(latents)),
                        subplot_titles=[t for j in latents for t in (f"latent {j} (selected for {', '.join(who[j])})",
                                                                      f"latent {j}: mean activation by group")])
    for r, j in enumerate(latents, start=1):
        items = list(examples.get(j, []))
        if items and not isinstance(items[0], str):
            fig.add_trace(go.Image(z=_strip(items), hoverinfo="skip"), row=r, col=1)
        else:
            axis = 2 * (r - 1) + 1
            axis = "" if axis == 1 else str(axis)
            fig.add_annotation(text="<br>".join(items) or "(no inputs)", x=0, y=1, xref=f"x{axis} domain",
                               yref=f"y{axis} domain", xanchor="left", yanchor="top", showarrow=False,
                               align="left", font={"size": 10})
        rows = by_group[by_group["latent"] == j]
        fig.add_trace(go.Bar(x=[f"{a}: {g}" for a, g in zip(rows["attribute"], rows["group"])],
                             y=rows["mean_activation"], customdata=rows["frequency"], showlegend=False,
                             hovertemplate="%{x}<br>mean %{y:.3f}<br>fires on %{customdata:.1%}<extra></extra>"),
                      row=r, col=2)
        fig.update_xaxes(visible=False, row=r, col=1)
        fig.update_yaxes(visible=False, row=r, col=1)
    fig.update_layout(title=title or f"social neurons at {neurons.site} (τ = {neurons.tau:g})",
                      height=220 * len(latents) + 120, width=1100)
    return fig


def plot_alpha_sweep(sweep, bias: str = "maxskew_occupations", utility: Optional[str] = "zero_shot_accuracy",
                     title: Optional[str] = None):
    """The α sweep: bias (left) and utility (right) against α, one line per tower ("i", "t", "it").

    sweep: DataFrame with columns tower, alpha, `bias`, `utility` (and `{utility}_lo` / `_hi` for error bars),
    one row per (tower, α), as the debiaslens command's alpha_sweep.csv. utility=None (a gallery without a
    class label has no zero-shot accuracy): the bias panel only."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    missing = [c for c in ("tower", "alpha", bias, *([utility] if utility else [])) if c not in sweep.columns]
    if missing:
        raise ValueError(f"the sweep table lacks the columns {missing}; it has {list(sweep.columns)}")
    panels = [f"bias: {bias}"] + ([f"utility: {utility}"] if utility else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels)
    labels = {"i": "image", "t": "text", "it": "image + text"}
    colours = {"i": "#1f77b4", "t": "#ff7f0e", "it": "#2ca02c"}
    for tower, rows in sweep.groupby("tower", sort=False):
        rows = rows.sort_values("alpha")
        name = labels.get(tower, str(tower))
        line = {"color": colours.get(tower)}
        fig.add_trace(go.Scatter(x=rows["alpha"], y=rows[bias], mode="lines+markers", name=name, line=line,
                                 legendgroup=name), row=1, col=1)
        if not utility:
            continue
        error = None
        if f"{utility}_lo" in rows and f"{utility}_hi" in rows:
            error = {"type": "data", "array": rows[f"{utility}_hi"] - rows[utility],
                     "arrayminus": rows[utility] - rows[f"{utility}_lo"]}
        fig.add_trace(go.Scatter(x=rows["alpha"], y=rows[utility], error_y=error, mode="lines+markers", name=name,
                                 line=line, legendgroup=name, showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="α (0 = the unedited model)")
    fig.update_layout(title=title or "DebiasLens α sweep: bias vs utility", height=450, width=500 * len(panels))
    return fig
