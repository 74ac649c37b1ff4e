"""End to end in a real browser: notebooks/05_dashboards.ipynb in JupyterLab in headless Chromium — run every
cell, click a head toggle, see the displayed NDKL change, click "Export spec" and find the spec file."""
import json
import re
from pathlib import Path

import pytest

from tests.browser.harness import run_all_cells

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "05_dashboards.ipynb"


def test_click_a_head_and_export(page, lab):
    from playwright.sync_api import expect

    server = lab(NOTEBOOK)
    errors = run_all_cells(page, server, timeout_s=900)
    assert errors == []
    # the head dashboard is the output that holds the head toggles (the latent dashboard has its own metrics)
    dash = page.locator(".jp-OutputArea-output", has=page.locator(".wb-head-L5H1"))
    expect(dash).to_have_count(1)
    toggle = dash.locator(".wb-head-L5H1")
    toggle.scroll_into_view_if_needed()  # JupyterLab does not render cells far off screen
    ndkl = dash.locator(".wb-metric-gender_ndkl")
    before = ndkl.text_content()
    float(before)  # a number is displayed
    was_on = "mod-active" in (toggle.get_attribute("class") or "")
    toggle.click()
    expect(ndkl).not_to_have_text(before, timeout=60_000)
    active = re.compile(r"\bmod-active\b")  # ipywidgets marks a pressed toggle button so
    (expect(toggle).to_have_class if not was_on else expect(toggle).not_to_have_class)(active, timeout=10_000)
    spec_path = Path(dash.locator(".wb-spec-path input").input_value())
    assert not spec_path.exists()
    dash.locator(".wb-export").click()
    expect(dash.locator(".wb-status")).to_contain_text("wrote", timeout=30_000)
    doc = json.loads(spec_path.read_text())
    assert doc["schema"] == "workbench.intervention/v2" and doc["provenance"]["method"] == "dashboard"
    heads = {(e["layer"], e["head"]) for e in doc["edits"]}
    assert ((5, 1) in heads) == (not was_on)
