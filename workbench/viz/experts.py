"""Figures of the expert-heads method (docs/methods.md): per-head scores, neuron APs, metric bars, a gallery.

Every function returns a plotly Figure (plotly is imported inside each function) from plain tables and
tensors, so the figures can be drawn from a saved run as well as from a live `ExpertHeadsFinding`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

__all__ = ["plot_expert_heads", "plot_neuron_ap", "plot_metric_bars", "plot_head_sweep", "plot_retrieval_gallery"]


def _require(table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing}")


def plot_expert_heads(table, title: Optional[str] = None):
    """Two layer × head heatmaps side by side: held-out probe AP and bias attribution, each selection's heads
    marked with a symbol ("○" probe AP, "×" attribution). table: `ExpertHeadsFinding.table`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .probes import head_score_matrix

    _require(table, ["layer", "head", "ap", "attribution", "selected_ap", "selected_attribution"], "the head table")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("probe AP (held out)", "bias attribution"),
                        horizontal_spacing=0.12)
    for col, (value, scale, marker) in enumerate((("ap", "Viridis", "selected_ap"),
                                                  ("attribution", "RdBu_r", "selected_attribution")), start=1):
        m = head_score_matrix(table, value)
        heat = go.Heatmap(z=m.values, x=[str(h) for h in m.columns], y=[str(l) for l in m.index], colorscale=scale,
                          colorbar={"title": value, "x": 0.44 if col == 1 else 1.0},
                          hovertemplate=f"layer %{{y}}, head %{{x}}: {value} %{{z:.4f}}<extra></extra>")
        if value == "attribution":
            heat.update(zmid=0)
        fig.add_trace(heat, row=1, col=col)
        chosen = table[table[marker]]
        fig.add_trace(go.Scatter(x=[str(h) for h in chosen["head"]], y=[str(l) for l in chosen["layer"]],
                                 mode="markers", name=f"selected by {value}",
                                 marker={"symbol": "circle-open" if value == "ap" else "x", "size": 14,
                                         "color": "white", "line": {"width": 2}}), row=1, col=col)
    fig.update_yaxes(autorange="reversed", title_text="layer")
    fig.update_xaxes(title_text="head")
    fig.update_layout(title=title or "expert heads: probe AP and bias attribution per head")
    return fig


def plot_neuron_ap(neurons, heads: Sequence[tuple[int, int]], others: Sequence[tuple[int, int]] = (),
                   threshold: float = 0.42, title: Optional[str] = None):
    """Histograms of per-neuron AP (the paper's Fig. 1): one panel per head, expert `heads` in the top row,
    `others` (non-experts, for contrast) below, a dashed line at `threshold`. neurons: `ExpertHeadsFinding.neurons`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _require(neurons, ["layer", "head", "neuron", "ap"], "the neuron table")
    heads, others = list(heads), list(others)
    if not heads:
        raise ValueError("plot_neuron_ap needs at least one head")
    cols = max(len(heads), len(others), 1)
    rows = 2 if others else 1
    titles = [f"L{l}H{h} (expert)" for l, h in heads] + [""] * (cols - len(heads))
    titles += [f"L{l}H{h}" for l, h in others] + [""] * (cols - len(others)) if others else []
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, shared_xaxes=True)
    for r, group in enumerate((heads, others), start=1):
        for c, (l, h) in enumerate(group, start=1):
            ap = neurons[(neurons["layer"] == l) & (neurons["head"] == h)]["ap"]
            share = float((ap > threshold).mean()) if len(ap) else 0.0
            fig.add_trace(go.Histogram(x=ap, nbinsx=30, name=f"L{l}H{h}", showlegend=False,
                                       hovertemplate=f"L{l}H{h}: AP %{{x}}, %{{y}} neurons; "
                                                     f"{100 * share:.0f}% above {threshold:g}<extra></extra>"),
                          row=r, col=c)
            fig.add_vline(x=threshold, line_dash="dash", line_color="red", row=r, col=c)
    fig.update_xaxes(title_text="neuron AP", row=rows)
    fig.update_layout(title=title or f"per-neuron AP within heads (dashed: {threshold:g})", bargap=0.05)
    return fig


def plot_metric_bars(table, metrics: Sequence[str], variants: Optional[Sequence[str]] = None,
                     baseline: str = "baseline", title: Optional[str] = None):
    """Before/after bars with 95 % intervals: one panel per metric, one bar per variant (baseline first, grey).

    table: tidy rows with variant, metric, value, lo, hi (the evaluation runner's table)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _require(table, ["variant", "metric", "value", "lo", "hi"], "the metric table")
    metrics = [m for m in metrics if m in set(table["metric"])]
    if not metrics:
        raise ValueError(f"none of the metrics is in the table; it has {sorted(set(table['metric']))}")
    order = list(dict.fromkeys([baseline, *(variants or table["variant"])]))
    order = [v for v in order if v in set(table["variant"])]
    fig = make_subplots(rows=len(metrics), cols=1, subplot_titles=metrics, shared_xaxes=True,
                        vertical_spacing=min(0.08, 0.5 / max(len(metrics), 1)))
    for r, metric in enumerate(metrics, start=1):
        rows = table[table["metric"] == metric].set_index("variant").reindex(order)
        fig.add_trace(go.Bar(x=order, y=rows["value"], showlegend=False,
                             marker_color=["#888" if v == baseline else "#3366cc" for v in order],
                             error_y={"type": "data", "symmetric": False,
                                      "array": (rows["hi"] - rows["value"]).tolist(),
                                      "arrayminus": (rows["value"] - rows["lo"]).tolist()},
                             hovertemplate="%{x}: %{y:.4f}<extra>" + metric + "</extra>"), row=r, col=1)
        if baseline in rows.index:
            fig.add_hline(y=float(rows.loc[baseline, "value"]), line_dash="dot", line_color="#888", row=r, col=1)
    fig.update_layout(title=title or "metrics before / after (95 % intervals)", height=260 * len(metrics) + 120)
    return fig


def plot_head_sweep(table, metric: str, baseline: str = "baseline", chance: Optional[float] = None,
                    title: Optional[str] = None):
    """`metric` against the number of heads neutralised, one line per ranking ("ap", "attribution"), with 95 %
    intervals: the `{ranking}_top{k}_neutral` variants of `expert_variants(..., sweep=...)`, k = 0 being the
    baseline; a dotted line at `chance` (e.g. `EvaluationResult.chance[metric]`, a random ranking's NDKL).

    table: tidy rows with variant, metric, value, lo, hi (the evaluation runner's table)."""
    import re

    import plotly.graph_objects as go

    _require(table, ["variant", "metric", "value", "lo", "hi"], "the metric table")
    rows = table[table["metric"] == metric].set_index("variant")
    if baseline not in rows.index:
        raise ValueError(f"the table has no {metric!r} row for the baseline {baseline!r}")
    fig = go.Figure()
    for ranking, colour in (("attribution", "#dc3912"), ("ap", "#3366cc")):
        points = sorted((int(m.group(1)), v) for v in rows.index
                        if (m := re.fullmatch(rf"{ranking}_top(\d+)_neutral", v)))
        if not points:
            continue
        ks, names = [0] + [k for k, _ in points], [baseline] + [v for _, v in points]
        r = rows.loc[names]
        fig.add_trace(go.Scatter(x=ks, y=r["value"], mode="lines+markers", name=f"top-k by {ranking}",
                                 line_color=colour, text=names,
                                 error_y={"type": "data", "symmetric": False, "array": (r["hi"] - r["value"]).tolist(),
                                          "arrayminus": (r["value"] - r["lo"]).tolist()},
                                 hovertemplate="%{text}: %{y:.4f}<extra></extra>"))
    if not fig.data:
        raise ValueError("the table has no {ap|attribution}_top{k}_neutral variants; run expert_variants(..., sweep=...)")
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color="#888",
                      annotation_text="random ranking", annotation_position="bottom right")
    fig.update_layout(title=title or f"{metric} vs heads neutralised (95 % intervals)",
                      xaxis_title="heads replaced by the neutral prototype (0 = baseline)", yaxis_title=metric,
                      height=420)
    return fig


def plot_retrieval_gallery(thumbnails: Mapping[str, Sequence], captions: Mapping[str, Sequence[str]],
                           query: str, title: Optional[str] = None):
    """The top-ranked images of one query, one row per variant (e.g. baseline / after).

    thumbnails: {variant: list of images [3, h, w] floats in [0, 1] or uint8}, best first; captions: {variant:
    one label string per image}."""
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(thumbnails)
    if not names:
        raise ValueError("plot_retrieval_gallery needs at least one variant")
    k = max(len(thumbnails[v]) for v in names)
    if k == 0:
        raise ValueError("no images to show")
    fig = make_subplots(rows=len(names), cols=k, row_titles=names, horizontal_spacing=0.005,
                        vertical_spacing=0.06)
    for r, name in enumerate(names, start=1):
        for c, (image, caption) in enumerate(zip(thumbnails[name], captions[name]), start=1):
            array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
            if array.dtype != np.uint8:
                array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
            fig.add_trace(go.Image(z=array.transpose(1, 2, 0), hovertemplate=f"#{c}: {caption}<extra></extra>"),
                          row=r, col=c)
            axis = (r - 1) * k + c
            axis = "" if axis == 1 else str(axis)  # plotly names the first axes "x" / "y"
            fig.add_annotation(text=caption, x=0.5, y=-0.12, xref=f"x{axis} domain", yref=f"y{axis} domain",
                               showarrow=False, font={"size": 9})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title or f"top {k} for {query!r}", height=170 * len(names) + 100,
                      width=max(600, 95 * k))
    return fig
