"""Figures of an N-TIDE run: 2-D maps of features coloured by the protected group, and training curves.

    fig = plot_feature_maps({"student": f_base, "ntide": f_ntide, "teacher": f_teacher}, groups, ["male", "female"])
    fig = plot_feature_maps(..., method="tsne", max_points=500)      # t-SNE on a seeded subsample
    fig = plot_training_curves({"student": history, "ntide": history2})

PCA is fitted per model (its own top two directions); t-SNE uses scikit-learn with PCA initialisation, as the
N-TIDE paper's Figure 2. plotly and scikit-learn are imported inside the functions.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["feature_map", "plot_feature_maps", "plot_training_curves"]

_COLOURS = ("#3366cc", "#dc3912", "#109618", "#ff9900", "#990099", "#0099c6", "#dd4477", "#66aa00")


def feature_map(features, method: str = "pca", seed: int = 0) -> np.ndarray:
    """[n, d] features → [n, 2] coordinates: PCA (centred, top two right singular vectors) or t-SNE."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"features must be [n, d] with n ≥ 3, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    if method == "pca":
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out = centred @ vt[:2].T
        return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def plot_feature_maps(features: Mapping[str, object], groups, group_names: Sequence[str] = (), *,
                      method: str = "pca", max_points: Optional[int] = None, seed: int = 0,
                      title: Optional[str] = None):
    """One panel per model: its features [n, d] mapped to 2-D, each point coloured by its group code ([n] ints).

    max_points: a seeded subsample of that many items, the same for every panel (t-SNE is quadratic in n)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not features:
        raise ValueError("no features to plot")
    g = np.asarray(groups).astype(int)
    n = len(g)
    for name, f in features.items():
        if len(f) != n:
            raise ValueError(f"features of {name!r} have {len(f)} rows but groups has {n} entries")
    keep = np.arange(n)
    if max_points is not None and n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    names = list(features)
    cols = min(len(names), 4)
    rows = (len(names) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names)
    for i, name in enumerate(names):
        xy = feature_map(np.asarray(features[name])[keep], method, seed)
        for code in sorted(set(g[keep].tolist())):
            mask = g[keep] == code
            label = group_names[code] if code < len(group_names) else str(code)
            fig.add_trace(go.Scattergl(x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=label, legendgroup=label,
                                       showlegend=i == 0, marker={"size": 4, "opacity": 0.6,
                                                                  "color": _COLOURS[code % len(_COLOURS)]},
                                       hovertemplate=f"{label}<extra>{name}</extra>"),
                          row=i // cols + 1, col=i % cols + 1)
    what = "PCA" if method == "pca" else "t-SNE"
    fig.update_layout(title=title or f"features ({what}) coloured by the protected group, {len(keep)} test images",
                      height=380 * rows + 80, width=360 * cols + 120)
    return fig


def plot_training_curves(histories: Mapping[str, Sequence[Mapping]], title: Optional[str] = None):
    """Training loss and accuracy per epoch, one line per trained model (history: [{epoch, loss, accuracy}])."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        raise ValueError("no training history to plot")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "training accuracy"))
    for i, (name, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        colour = _COLOURS[i % len(_COLOURS)]
        for col, key in ((1, "loss"), (2, "accuracy")):
            fig.add_trace(go.Scatter(x=epochs, y=[h[key] for h in history], mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1, line={"color": colour}), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=title or "training curves (mean over each epoch's batches)", height=420)
    return fig
