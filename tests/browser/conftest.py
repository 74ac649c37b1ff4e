"""Browser-test fixtures: `browser` (headless Debian Chromium via Playwright, one per session), `page` (a fresh
page; a screenshot goes to runs/browser-failures/ when the test fails), and `lab` (start JupyterLab on a copy
of a notebook). Tests marked `browser` are skipped, with the reason, only when Playwright or Chromium is absent."""
from pathlib import Path

import pytest

from tests.browser.harness import JupyterLab, browser_unavailable, launch

SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "browser-failures"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def browser():
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    pg = context.new_page()
    yield pg
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"{request.node.name}.png"
        pg.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failed page: {shot}")
    context.close()


@pytest.fixture
def lab(tmp_path):
    """lab(notebook_path) → a started `JupyterLab` on a copy of it in tmp_path (stopped after the test)."""
    started = []

    def start(notebook):
        server = JupyterLab(Path(notebook), tmp_path / "lab").__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
