"""One self-contained HTML file for a report: headings, prose, tables, plotly figures and image strips, with
plotly.js bundled inline once (these machines are offline: no CDN) and images as embedded PNGs.

    report = HtmlReport("workbench demo")
    report.heading("Comparison")
    report.table(frame, caption="value [95 % interval]")
    report.figure(plot_metric_bars(table, ["gender_ndkl"]))
    report.images(thumbnails, captions, title="top 10 for 'a photo of a nurse'")
    report.save("runs/demo/report.html")

Every figure is a `<div class="plotly-graph-div">` drawn by the bundled plotly.js when the page loads.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

__all__ = ["HtmlReport"]

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table.wb { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
table.wb th, table.wb td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.wb th { background: #f5f5f5; }
table.wb td:first-child, table.wb th:first-child { text-align: left; }
.caption { color: #555; font-size: 0.9em; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; margin: .5em 0 1.5em; }
.strip figure { margin: 0; text-align: center; font-size: 0.75em; color: #444; }
.strip img { image-rendering: pixelated; width: 80px; height: 80px; display: block; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 0.85em; }
"""


def _png(image) -> str:
    """A [3, H, W] float tensor in [0, 1] (or uint8), or a PIL image → base64 PNG."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import torch

        x = image.detach().cpu()
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8) if x.dtype != torch.uint8 else x
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"an image must be [3, H, W] (or [1, H, W]), got shape {tuple(x.shape)}")
        image = Image.fromarray(x.permute(1, 2, 0).squeeze(-1).numpy())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class HtmlReport:
    """Collects sections and writes one self-contained HTML file (`save`)."""

    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = []
        self._n_figures = 0

    def __repr__(self) -> str:
        return f"HtmlReport({self.title!r}, {len(self._parts)} parts, {self._n_figures} figures)"

    def heading(self, text: str, level: int = 2) -> "HtmlReport":
        if level not in (1, 2, 3, 4):
            raise ValueError(f"heading level must be 1-4, got {level!r}")
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, css: str = "") -> "HtmlReport":
        """Plain text (escaped); `code` spans in backticks are shown as code."""
        pieces = html.escape(text).split("`")
        body = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
        self._parts.append(f'<p class="{css}">{body}</p>' if css else f"<p>{body}</p>")
        return self

    def code(self, text: str) -> "HtmlReport":
        self._parts.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def table(self, frame, caption: Optional[str] = None, index: bool = True,
              float_format: str = "{:.4f}") -> "HtmlReport":
        """A DataFrame as a table (floats formatted with `float_format`, everything escaped)."""
        shown = frame.copy()
        for col in shown.columns:
            if shown[col].dtype.kind == "f":
                shown[col] = [float_format.format(v) if v == v else "" for v in shown[col]]
        if caption:
            self.paragraph(caption, css="caption")
        self._parts.append(shown.to_html(index=index, escape=True, classes="wb", border=0))
        return self

    def figure(self, figure, caption: Optional[str] = None, height: Optional[int] = None) -> "HtmlReport":
        """A plotly figure, drawn by the bundled plotly.js."""
        self._n_figures += 1
        div = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"wb-figure-{self._n_figures}",
                             default_height=height or "450px", config={"responsive": True})
        self._parts.append(div)
        if caption:
            self.paragraph(caption, css="caption")
        return self

    def images(self, images: Sequence, captions: Sequence[str] = (), title: Optional[str] = None) -> "HtmlReport":
        """A strip of images ([3, H, W] tensors in [0, 1] or PIL images), each with its caption."""
        captions = list(captions) or [""] * len(images)
        if len(captions) != len(images):
            raise ValueError(f"{len(images)} images but {len(captions)} captions; give one caption per image")
        if title:
            self.paragraph(title, css="caption")
        cells = "".join(f'<figure><img alt="{html.escape(c)}" src="data:image/png;base64,{_png(im)}">'
                        f"<figcaption>{html.escape(c)}</figcaption></figure>" for im, c in zip(images, captions))
        self._parts.append(f'<div class="strip">{cells}</div>')
        return self

    def html(self) -> str:
        """The whole document."""
        from plotly.offline import get_plotlyjs

        script = f"<script>{get_plotlyjs()}</script>" if self._n_figures else ""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{_STYLE}</style>{script}</head><body><h1>{html.escape(self.title)}</h1>\n"
                + "\n".join(self._parts) + "\n</body></html>\n")

    def save(self, path) -> Path:
        """Write the report atomically; returns its path."""
        from workbench.files import write_text_atomic

        path = Path(path)
        write_text_atomic(path, self.html())
        return path
