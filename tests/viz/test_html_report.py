"""HtmlReport: one self-contained file — plotly.js inline exactly once, figures as divs, tables escaped and
formatted, images embedded as PNGs that decode back to the pixels given."""
import base64
import io
import re

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from workbench.viz.html_report import HtmlReport


def test_a_report_is_self_contained(tmp_path):
    r = HtmlReport("run <1>")
    r.heading("Table & figures").paragraph("see `a<b`").code("x = 1 < 2")
    r.table(pd.DataFrame({"metric": [0.123456, float("nan")], "name": ["<b>bold</b>", "x"]}), caption="c")
    r.figure(go.Figure(go.Bar(y=[1, 2]))).figure(go.Figure(go.Scatter(y=[3, 1])), caption="second")
    path = r.save(tmp_path / "report.html")
    html = path.read_text()
    assert html.count("<script>") >= 1 and "<script src=" not in html and not re.search(r"src=\"https?:", html)
    assert html.count("Plotly.newPlot") == 2 and 'id="wb-figure-1"' in html and 'id="wb-figure-2"' in html
    assert len(re.findall(r"plotly\.js v\d", html)) == 1  # the library once, not once per figure
    assert "<title>run &lt;1&gt;</title>" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<code>a&lt;b</code>" in html and "0.1235" in html and "nan" not in html.split("<body>")[1].lower()
    assert repr(r) == "HtmlReport('run <1>', 8 parts, 2 figures)"


def test_images_are_embedded_exactly():
    x = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    html = HtmlReport("t").images([x, x.float() / 255], ["a", "b"], title="strip").html()
    blobs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(blobs) == 2
    for blob in blobs:
        back = torch.from_numpy(__import__("numpy").array(Image.open(io.BytesIO(base64.b64decode(blob)))))
        assert torch.equal(back.permute(2, 0, 1), x)
    assert "<script>" not in html  # no figure, no plotly.js


def test_bad_input_is_refused():
    r = HtmlReport("t")
    with pytest.raises(ValueError, match=r"2 images but 1 captions"):
        r.images([torch.rand(3, 4, 4)] * 2, ["one"])
    with pytest.raises(ValueError, match=r"must be \[3, H, W\]"):
        r.images([torch.rand(4, 4)], ["flat"])
    with pytest.raises(ValueError, match="heading level"):
        r.heading("x", level=7)
