"""The widgets, driven from Python as a researcher's clicks would: a head toggle changes the state and the
displayed NDKL, "Export spec" writes the file, "Load spec" restores the toggles, errors land in the status line."""
import html
import re

import pytest

from workbench.dashboards import HeadDashboard, NeuronDashboard
from workbench.primitives import InterventionSpec


def find(widget, cls):
    """The widget carrying CSS class `cls` in the tree under `widget`."""
    stack = [widget]
    while stack:
        w = stack.pop()
        if cls in getattr(w, "_dom_classes", ()):
            return w
        stack.extend(getattr(w, "children", ()))
    raise LookupError(f"no widget with class {cls!r}")


def status(widget):
    return html.unescape(find(widget, "wb-status").value)


def shown(widget, metric):
    """The value the metrics panel displays for `metric`."""
    html = find(widget, "wb-metrics").value
    return float(re.search(rf"class='wb-metric-{metric}'>([-0-9.]+)<", html).group(1))


@pytest.fixture
def heads(model, data, gallery, finding, tmp_path):
    return HeadDashboard(model, data, finding=finding, gallery=gallery, spec_path=tmp_path / "spec.json",
                         progress=False)


def test_toggle_export_and_load(heads, tmp_path):
    w = heads.widget
    before = shown(w, "gender_ndkl")
    assert before == pytest.approx(heads.state.baseline["gender_ndkl"], abs=5e-5)
    find(w, "wb-head-L5H1").value = True
    assert heads.state.heads == [(5, 1)]
    after = shown(w, "gender_ndkl")
    assert after == pytest.approx(heads.state.metrics["gender_ndkl"], abs=5e-5) and after != before
    assert "cached update in" in find(w, "wb-metrics").value
    find(w, "wb-op").value = "neutral"
    assert heads.state.op == "neutral"
    exported = shown(w, "gender_ndkl")
    assert exported == pytest.approx(heads.state.metrics["gender_ndkl"], abs=5e-5) and exported != after
    find(w, "wb-export").click()
    spec = InterventionSpec.load(tmp_path / "spec.json")
    assert [(e.layer, e.head, e.op) for e in spec.edits] == [(5, 1, "replace")]
    assert "wrote" in status(w)
    # switch everything off, then load the spec back: the toggle and the op come back
    find(w, "wb-clear").click()
    assert not find(w, "wb-head-L5H1").value and heads.state.heads == []
    find(w, "wb-op").value = "zero"
    find(w, "wb-load").click()
    assert find(w, "wb-head-L5H1").value and find(w, "wb-op").value == "neutral"
    assert shown(w, "gender_ndkl") == exported


def test_gallery_and_query(heads):
    w = heads.widget
    gallery = find(w, "wb-gallery")
    assert gallery.value.count("data:image/png;base64,") == 2 * heads.gallery_k  # baseline and current rows
    assert "a photo of a doctor" in gallery.value or "a photo of a" in gallery.value
    query = find(w, "wb-query")
    query.value = 3
    assert heads.state.query == 3 and heads.state.protocol.prompts[3] in find(w, "wb-gallery").value
    mix = heads.state.group_mix(heads.gallery_k)
    for name in set(mix["baseline"]):
        assert f"{name} {mix['baseline'].count(name)}</div>" in find(w, "wb-gallery").value


def test_errors_show_in_the_status_line(heads, tmp_path):
    w = heads.widget
    find(w, "wb-spec-path").value = str(tmp_path / "nothing.json")
    find(w, "wb-export").click()
    assert "cannot export: nothing to export" in status(w)
    find(w, "wb-load").click()
    assert "cannot load: no spec file at" in status(w)
    find(w, "wb-head-L5H2").value = True
    find(w, "wb-spec-path").value = str(tmp_path / "spec.txt")
    find(w, "wb-export").click()
    assert "spec files end in .json" in status(w)


def test_colour_by_attribution_repaints(heads):
    w = heads.widget
    toggle = find(w, "wb-head-L5H1")
    by_ap = toggle.style.button_color
    find(w, "wb-colour").value = "attribution"
    assert toggle.style.button_color != by_ap or find(w, "wb-head-L0H0").style.button_color != by_ap
    assert "probe AP" in toggle.tooltip and "attribution" in toggle.tooltip


def test_neuron_widgets(model, data, gallery, tmp_path):
    dash = NeuronDashboard(model, "synthsocial/image-embed", data, gallery=gallery, spec_path=tmp_path / "n.json",
                           progress=False)
    w = dash.widget
    best = int(dash.state.latent_ap()["latent"][0])
    assert find(w, "wb-latent-list").value == best
    assert f"latent {best}</b>" in find(w, "wb-latent-info").value
    before = shown(w, "gender_ndkl")
    find(w, "wb-latent-toggle").value = True
    assert list(dash.state.latents) == [best] and shown(w, "gender_ndkl") != before
    find(w, "wb-latent-search").value = "17"
    assert "latent 17</b>" in find(w, "wb-latent-info").value and not find(w, "wb-latent-toggle").value
    find(w, "wb-latent-search").value = "x"
    assert "type a latent index, got 'x'" in status(w)
    find(w, "wb-latent-search").value = "9999"
    assert "latent must be an int in 0..511" in status(w)
    find(w, "wb-gamma").value = float("nan")
    assert "gamma (the value the latents are set to) must be a finite number, got nan" in status(w)
    assert find(w, "wb-gamma").value == 0.0 and dash.state.gamma == 0.0  # the control shows the state again
    find(w, "wb-alpha").value = 1.0
    find(w, "wb-export").click()
    spec = InterventionSpec.load(tmp_path / "n.json")
    assert spec.alpha == 1.0 and spec.edits[0].index == (best,)
    find(w, "wb-alpha").value = 0.3
    find(w, "wb-load").click()
    assert find(w, "wb-alpha").value == 1.0 and dash.state.alpha == 1.0
    assert f"latents on: {best}" in find(w, "wb-latents-on").value
