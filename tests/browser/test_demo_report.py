"""The demo's HTML report in a real browser: every figure draws, nothing errors, no network needed."""
import pytest

from tests.browser.harness import check_html

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_demo_report_draws_every_figure(browser, demo_run):
    out, summary = demo_run
    report = check_html(browser, out / "report.html", settle_ms=1500)
    assert report.ok, str(report)
    assert report.plotly_divs >= 4  # comparison bars, gallery, expert heads, social neurons
