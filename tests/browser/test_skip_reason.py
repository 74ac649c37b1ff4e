"""Without a browser, the browser tests say exactly what is missing and how to install it."""
import builtins

from tests.browser import harness


def test_missing_chromium_is_named(monkeypatch):
    monkeypatch.setenv("WB_CHROMIUM", "/nowhere/chromium")
    assert harness.browser_unavailable() in (
        "$WB_CHROMIUM='/nowhere/chromium' is not a file; point it at a Chromium binary or unset it",
        "playwright is not installed; " + harness.INSTALL_HINT)
    monkeypatch.delenv("WB_CHROMIUM")
    monkeypatch.setattr(harness, "CHROMIUM_CANDIDATES", ("/nowhere/a", "/nowhere/b"))
    reason = harness.browser_unavailable()
    assert reason.startswith(("no Chromium binary (looked for /nowhere/a, /nowhere/b); install what is missing with: "
                              "apt-get install -y --no-install-recommends chromium", "playwright is not installed"))


def test_missing_playwright_is_named(monkeypatch):
    real_import = builtins.__import__

    def no_playwright(name, *args, **kwargs):
        if name.startswith("playwright"):
            raise ImportError("No module named 'playwright'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_playwright)
    assert harness.browser_unavailable() == "playwright is not installed; " + harness.INSTALL_HINT
    assert "never `playwright install`" in harness.INSTALL_HINT
