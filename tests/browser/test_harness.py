"""The static-HTML check itself: a self-contained plotly page passes; a script error and a plotly div that
never drew are reported."""
import pytest

from tests.browser.harness import check_html

pytestmark = pytest.mark.browser


def _figure_html(tmp_path, name="ok.html"):
    import plotly.graph_objects as go

    path = tmp_path / name
    go.Figure(go.Bar(x=["a", "b"], y=[1, 2])).write_html(path, include_plotlyjs=True, full_html=True)
    return path


def test_a_self_contained_plotly_page_passes(browser, tmp_path):
    report = check_html(browser, _figure_html(tmp_path))
    assert report.ok, str(report)
    assert report.plotly_divs == 1


def test_errors_and_empty_figures_are_reported(browser, tmp_path):
    good = _figure_html(tmp_path).read_text()
    broken = good.replace("</body>", "<div id='never' class='plotly-graph-div'></div>"
                                     "<script>undefinedFunction();</script>"
                                     "<script>console.error('from the page');</script></body>")
    path = tmp_path / "broken.html"
    path.write_text(broken)
    report = check_html(browser, path)
    assert not report.ok
    assert report.plotly_divs == 2 and report.empty_plotly_divs == ["never"]
    assert any("undefinedFunction" in e for e in report.page_errors)
    assert "from the page" in report.console_errors
    with pytest.raises(FileNotFoundError, match="no HTML file at"):
        check_html(browser, tmp_path / "missing.html")
