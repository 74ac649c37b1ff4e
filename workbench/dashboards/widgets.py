"""The ipywidgets of the dashboards: thin views of a `DashboardState` (every action calls the state; every
refresh of the state redraws the views). Widgets carry stable CSS classes ("wb-head-L5H1", "wb-export",
"wb-metric-gender_ndkl", ...) so a browser test can find them (docs/dashboards.md)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

__all__ = ["build_head_widgets", "build_neuron_widgets", "metrics_html", "gallery_html"]

_PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6")


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def metrics_html(state) -> str:
    """A table: metric | baseline | current | change, and how the update was computed and how long it took."""
    rows = []
    for m in state.protocol.metric_names:
        b, c = state.baseline[m], state.metrics[m]
        d = c - b
        colour = "#888" if abs(d) < 5e-5 else ("#2a7" if (d < 0) == ("ndkl" in m or "skew" in m) else "#c33")
        rows.append(f"<tr><td>{html.escape(m)}</td><td>{_fmt(b)}</td>"
                    f"<td><span class='wb-metric-{m}'>{_fmt(c)}</span></td>"
                    f"<td style='color:{colour}'>{d:+.4f}</td></tr>")
    note = f"{state.path} update in {1000 * state.last_update_s:.0f} ms"
    return ("<table class='wb-metrics-table' style='border-collapse:collapse;font-family:monospace'>"
            "<tr><th align='left'>metric</th><th>baseline</th><th>current</th><th>change</th></tr>"
            + "".join(rows) + f"</table><div class='wb-update-note' style='color:#666'>{html.escape(note)}</div>")


def _png(array) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.transpose(1, 2, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def gallery_html(state, k: int, cache: dict, group=None) -> str:
    """Two rows (baseline, current) of the top-k images of the chosen query, each with its group-mix bar."""
    group = group or state.protocol.attribute
    names = list(state.gallery.label_names[group])
    codes = state.gallery.labels[group]
    colours = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}
    query = state.protocol.prompts[state.query]
    out = [f"<div class='wb-gallery-query'><b>{html.escape(query)}</b> — top {k}, {html.escape(group)} mix</div>"]
    for which in ("baseline", "current"):
        top = state.top(k, which)
        cells = []
        for i in top:
            name = names[int(codes[i])]
            if i not in cache:
                image = state.gallery.image(i)
                cache[i] = None if image is None else _png(image)
            img = (f"<img src='data:image/png;base64,{cache[i]}' width='64' height='64' "
                   f"style='image-rendering:pixelated;display:block'>" if cache[i] else
                   f"<div style='width:64px;height:64px;background:#eee;font-size:10px'>#{i}</div>")
            cells.append(f"<div style='margin:1px;text-align:center;font-size:10px;border-bottom:3px solid "
                         f"{colours[name]}'>{img}{html.escape(name)}</div>")
        counts = {n: 0 for n in names}
        for i in top:
            counts[names[int(codes[i])]] += 1
        bar = "".join(f"<div title='{html.escape(n)}: {c}' style='width:{100 * c / max(len(top), 1):.1f}%;"
                      f"background:{colours[n]};color:white;font-size:10px;overflow:hidden'>{html.escape(n)} {c}</div>"
                      for n, c in counts.items() if c)
        out.append(f"<div style='display:flex;align-items:center'><div style='width:70px'>{which}</div>"
                   f"{''.join(cells)}</div><div style='display:flex;width:{70 * k}px;margin:2px 0 8px 70px;"
                   f"height:14px' class='wb-mix-{which}'>{bar}</div>")
    return "".join(out)


def _colour(value: float, lo: float, hi: float, scale: str, mid=None) -> str:
    from plotly.colors import sample_colorscale

    if mid is not None:
        span = max(abs(lo - mid), abs(hi - mid), 1e-12)
        t = 0.5 + 0.5 * (value - mid) / span
    else:
        t = 0.5 if hi <= lo else (value - lo) / (hi - lo)
    return sample_colorscale(scale, [min(max(t, 0.0), 1.0)])[0]


def _spec_row(dash, state, refresh_status):
    import ipywidgets as w

    path = w.Text(value=str(dash.spec_path), description="spec", layout=w.Layout(width="420px"))
    path.add_class("wb-spec-path")
    export = w.Button(description="Export spec", icon="download")
    export.add_class("wb-export")
    load = w.Button(description="Load spec", icon="upload")
    load.add_class("wb-load")

    def on_export(_):
        try:
            written = state.save_spec(Path(path.value).expanduser())
            state.message = f"wrote {written}"
        except (ValueError, OSError) as err:
            state.message = f"cannot export: {err}"
        refresh_status()

    def on_load(_):
        try:
            dash._loading = True
            state.load_spec(Path(path.value).expanduser())
        except (ValueError, OSError) as err:
            state.message = f"cannot load: {err}"
        finally:
            dash._loading = False
        dash._sync_controls()
        refresh_status()

    export.on_click(on_export)
    load.on_click(on_load)
    return w.HBox([path, export, load])


def _common(dash, state):
    """Metrics, query selector, gallery and status views wired to the state; returns the widgets."""
    import ipywidgets as w

    metrics = w.HTML()
    metrics.add_class("wb-metrics")
    query = w.Dropdown(options=[(p, i) for i, p in enumerate(state.protocol.prompts)], value=state.query,
                       description="query")
    query.add_class("wb-query")
    gallery = w.HTML()
    gallery.add_class("wb-gallery")
    status = w.HTML()
    status.add_class("wb-status")
    cache: dict = {}

    def refresh_status():
        status.value = f"<span style='color:#555'>{html.escape(state.message)}</span>"

    def redraw(_state=None):
        metrics.value = metrics_html(state)
        gallery.value = gallery_html(state, dash.gallery_k, cache)
        refresh_status()

    query.observe(lambda change: state.set_query(change["new"]), names="value")
    state.observe(redraw)
    redraw()
    return metrics, query, gallery, status, refresh_status


def build_head_widgets(dash):
    """The HeadDashboard's widget tree: colour selector, layer × head toggle grid, op and α, live metrics,
    query and gallery, spec export / load."""
    import ipywidgets as w

    state = dash.state
    table = state.table
    toggles = {}
    for l in range(state.n_layers):
        for h in range(state.n_heads):
            t = w.ToggleButton(value=(l, h) in state.selected, description=f"L{l}H{h}",
                               layout=w.Layout(width="62px", height="28px"))
            t.add_class(f"wb-head-L{l}H{h}")
            toggles[(l, h)] = t
    colour = w.Dropdown(options=["ap", "attribution"], value=dash.colour_by, description="colour by")
    colour.add_class("wb-colour")

    def paint(_=None):
        if table is None:
            return
        value = colour.value
        rows = {(int(r.layer), int(r.head)): r for r in table.itertuples()}
        values = [float(getattr(r, value)) for r in rows.values()]
        lo, hi = min(values), max(values)
        for key, t in toggles.items():
            r = rows.get(key)
            if r is None:
                continue
            v = float(getattr(r, value))
            t.style.button_color = _colour(v, lo, hi, "Viridis" if value == "ap" else "RdBu_r",
                                           None if value == "ap" else 0.0)
            t.tooltip = (f"L{key[0]}H{key[1]}: probe AP {float(r.ap):.3f}, attribution {float(r.attribution):+.4f}")

    colour.observe(paint, names="value")
    paint()
    op = w.Dropdown(options=state.ops, value=state.op, description="op")
    op.add_class("wb-op")
    alpha = w.FloatSlider(value=state.alpha, min=-1.0, max=2.0, step=0.05, description="α (scale)",
                          continuous_update=False)
    alpha.add_class("wb-alpha")
    metrics, query, gallery, status, refresh_status = _common(dash, state)
    dash._loading = False

    def on_toggle(key):
        def handler(change):
            if dash._loading:
                return
            try:
                state.toggle(*key, on=change["new"])
            except ValueError as err:
                state.message = str(err)
                dash._loading = True
                toggles[key].value = key in state.selected
                dash._loading = False
                refresh_status()
            toggles[key].icon = "check" if key in state.selected else ""
        return handler

    for key, t in toggles.items():
        t.observe(on_toggle(key), names="value")

    def on_op(change):
        if dash._loading:
            return
        try:
            state.set_op(change["new"])
        except ValueError as err:
            state.message = str(err)
            dash._sync_controls()
            refresh_status()

    op.observe(on_op, names="value")
    alpha.observe(lambda change: None if dash._loading else state.set_alpha(change["new"]), names="value")

    def sync():
        dash._loading = True
        try:
            for key, t in toggles.items():
                t.value = key in state.selected
                t.icon = "check" if key in state.selected else ""
            op.options = state.ops
            op.value = state.op
            alpha.value = state.alpha
        finally:
            dash._loading = False

    dash._sync_controls = sync
    grid = w.GridBox(list(toggles.values()), layout=w.Layout(
        grid_template_columns=f"repeat({state.n_heads}, 64px)", grid_gap="2px"))
    clear = w.Button(description="all off")
    clear.add_class("wb-clear")

    def on_clear(_):
        state.clear()
        sync()

    clear.on_click(on_clear)
    spec_row = _spec_row(dash, state, refresh_status)
    left = w.VBox([w.HTML("<b>heads</b> (rows: layers, columns: heads)"), colour, grid, w.HBox([op, clear]), alpha])
    right = w.VBox([w.HTML("<b>metrics</b>"), metrics, query, gallery])
    return w.VBox([w.HBox([left, right]), spec_row, status])


def build_neuron_widgets(dash):
    """The NeuronDashboard's widget tree: latent browser (search by index or group AP, top images, activation by
    group), toggles of the chosen latents, γ and α, live metrics, query and gallery, spec export / load."""
    import ipywidgets as w

    state = dash.state
    search = w.Text(value="", placeholder="latent index, or blank for the top by AP", description="latent")
    search.add_class("wb-latent-search")
    ranked = w.Dropdown(options=dash.latent_options(), description="by AP")
    ranked.add_class("wb-latent-list")
    info = w.HTML()
    info.add_class("wb-latent-info")
    toggle = w.ToggleButton(description="silence this latent", icon="")
    toggle.add_class("wb-latent-toggle")
    chosen = w.HTML()
    chosen.add_class("wb-latents-on")
    gamma = w.FloatText(value=state.gamma, description="γ (set to)")
    gamma.add_class("wb-gamma")
    alpha = w.FloatSlider(value=state.alpha, min=0.0, max=1.0, step=0.05, description="α (blend)",
                          continuous_update=False)
    alpha.add_class("wb-alpha")
    metrics, query, gallery, status, refresh_status = _common(dash, state)
    dash._loading = False
    current = {"latent": ranked.value}

    def show(latent):
        current["latent"] = latent
        info.value = dash.latent_html(latent)
        dash._loading = True
        toggle.value = latent in state.latents
        dash._loading = False

    def on_search(change):
        text = change["new"].strip()
        if not text:
            return
        try:
            latent = int(text)
            state._check_latent(latent)
        except ValueError as err:
            state.message = f"{err}" if "latent" in str(err) else f"type a latent index, got {text!r}"
            refresh_status()
            return
        show(latent)

    search.observe(on_search, names="value")
    ranked.observe(lambda change: show(change["new"]), names="value")

    def on_toggle(change):
        if dash._loading:
            return
        state.toggle(current["latent"], on=change["new"])

    toggle.observe(on_toggle, names="value")

    def setter(fn):
        def handler(change):
            if dash._loading:
                return
            try:
                fn(change["new"])
            except ValueError as err:
                state.message = str(err)
                dash._sync_controls()
                refresh_status()
        return handler

    gamma.observe(setter(state.set_gamma), names="value")
    alpha.observe(setter(state.set_alpha), names="value")

    def list_on(_state=None):
        chosen.value = "latents on: " + (", ".join(map(str, sorted(state.latents))) or "none")

    state.observe(list_on)
    list_on()

    def sync():
        dash._loading = True
        try:
            toggle.value = current["latent"] in state.latents
            gamma.value = state.gamma
            alpha.value = state.alpha
        finally:
            dash._loading = False
        list_on()

    dash._sync_controls = sync
    show(ranked.value)
    spec_row = _spec_row(dash, state, refresh_status)
    left = w.VBox([w.HTML(f"<b>SAE latents</b> at {html.escape(state.site)}"), search, ranked, info, toggle, chosen,
                   gamma, alpha])
    right = w.VBox([w.HTML("<b>metrics</b>"), metrics, query, gallery])
    return w.VBox([w.HBox([left, right]), spec_row, status])
