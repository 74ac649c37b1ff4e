"""Method-agnostic figures: the demographic mix of what a query retrieves, before / after an edit, and metric
comparisons across variants of several methods with their intervals.

Each function takes plain tables / lists (what `evaluate_variants` and the dashboards produce) and returns a
plotly Figure; plotly is imported inside the functions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

__all__ = ["group_mix_table", "plot_retrieval_mix", "plot_method_comparison"]


def group_mix_table(groups: Mapping[str, Sequence[str]], names: Sequence[str]):
    """{variant: the group name of each retrieved image} → tidy table: variant, group, count, share (every group
    of `names` on every variant, zeros included, in `names` order)."""
    import pandas as pd

    rows = []
    for variant, got in groups.items():
        unknown = sorted(set(got) - set(names))
        if unknown:
            raise ValueError(f"variant {variant!r} has groups {unknown} that are not in names {list(names)}")
        for name in names:
            count = sum(1 for g in got if g == name)
            rows.append({"variant": variant, "group": name, "count": count,
                         "share": count / len(got) if got else 0.0})
    return pd.DataFrame(rows, columns=["variant", "group", "count", "share"])


def plot_retrieval_mix(groups: Mapping[str, Sequence[str]], names: Sequence[str], query: str,
                       thumbnails: Optional[Mapping[str, Sequence]] = None, title: Optional[str] = None):
    """The top-k of one query for each variant (rows, e.g. baseline / after): the images (when `thumbnails` are
    given: {variant: arrays [3, h, w], uint8 or floats in [0, 1]}) and, beside each row, a stacked bar of the
    group mix of those k images.

    groups: {variant: the group name of each retrieved image, best first}; names: every group name (bar order)."""
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    variants = list(groups)
    if not variants:
        raise ValueError("plot_retrieval_mix needs at least one variant")
    table = group_mix_table(groups, names)
    k = max(len(v) for v in groups.values())
    cols = k if thumbnails else 0
    specs = [[{"type": "xy"}] * (cols + 1) for _ in variants]
    widths = [1.0] * cols + [max(3.0, 0.35 * k)]
    fig = make_subplots(rows=len(variants), cols=cols + 1, column_widths=widths, specs=specs,
                        row_titles=variants, horizontal_spacing=0.004, vertical_spacing=0.08)
    palette = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6")
    for r, variant in enumerate(variants, start=1):
        if thumbnails:
            for c, (image, group) in enumerate(zip(thumbnails[variant], groups[variant]), start=1):
                array = np.asarray(image)
                if array.dtype != np.uint8:
                    array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
                fig.add_trace(go.Image(z=array.transpose(1, 2, 0), hovertemplate=f"#{c}: {group}<extra></extra>"),
                              row=r, col=c)
                fig.update_xaxes(visible=False, row=r, col=c)
                fig.update_yaxes(visible=False, row=r, col=c)
        rows = table[table["variant"] == variant]
        for i, (name, count) in enumerate(zip(rows["group"], rows["count"])):
            fig.add_trace(go.Bar(x=[count], y=[variant], orientation="h", name=str(name),
                                 marker_color=palette[i % len(palette)], showlegend=r == 1, legendgroup=str(name),
                                 hovertemplate=f"{name}: %{{x}} of {len(groups[variant])}<extra>{variant}</extra>"),
                          row=r, col=cols + 1)
        fig.update_xaxes(range=[0, k], title_text="images", row=r, col=cols + 1)
        fig.update_yaxes(visible=False, row=r, col=cols + 1)
    fig.update_layout(barmode="stack", title=title or f"top {k} for {query!r}: images and group mix",
                      height=170 * len(variants) + 120, width=max(600, 90 * cols + 300))
    return fig


def plot_method_comparison(table, metrics: Sequence[str], baseline: str = "baseline", title: Optional[str] = None):
    """One panel per metric, one bar per (method, variant) with its 95 % interval, coloured by method; the
    baseline's value as a dotted line.

    table: tidy rows with method, variant, metric, value, lo, hi (e.g. several `EvaluationResult.table`s, each
    with a method column added; the baseline row may carry any method name)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    missing = [c for c in ("method", "variant", "metric", "value", "lo", "hi") if c not in table.columns]
    if missing:
        raise ValueError("the comparison table needs columns method, variant, metric, value, lo, hi; "
                         f"missing {missing}")
    present = set(table["metric"])
    metrics = [m for m in metrics if m in present]
    if not metrics:
        raise ValueError(f"none of the metrics is in the table; it has {sorted(present)}")
    palette = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00")
    methods = [m for m in dict.fromkeys(table["method"])]
    colour = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    fig = make_subplots(rows=len(metrics), cols=1, subplot_titles=metrics, shared_xaxes=True,
                        vertical_spacing=min(0.08, 0.5 / len(metrics)))
    for r, metric in enumerate(metrics, start=1):
        rows = table[table["metric"] == metric]
        base = rows[rows["variant"] == baseline]
        rows = rows[rows["variant"] != baseline]
        for method in methods:
            mine = rows[rows["method"] == method]
            if mine.empty:
                continue
            fig.add_trace(go.Bar(x=[f"{method}: {v}" for v in mine["variant"]], y=mine["value"], name=method,
                                 marker_color=colour[method], showlegend=r == 1, legendgroup=method,
                                 error_y={"type": "data", "symmetric": False,
                                          "array": (mine["hi"] - mine["value"]).tolist(),
                                          "arrayminus": (mine["value"] - mine["lo"]).tolist()},
                                 hovertemplate="%{x}: %{y:.4f}<extra>" + metric + "</extra>"), row=r, col=1)
        if len(base):
            value, lo, hi = (float(base[c].iloc[0]) for c in ("value", "lo", "hi"))
            fig.add_hline(y=value, line_dash="dot", line_color="#666", row=r, col=1,
                          annotation_text=f"baseline {value:.4f} [{lo:.4f}, {hi:.4f}]", annotation_font_size=9)
    fig.update_layout(title=title or "methods compared (95 % intervals; dotted: baseline)",
                      height=260 * len(metrics) + 140, barmode="group")
    return fig
