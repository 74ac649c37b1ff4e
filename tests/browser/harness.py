"""A reusable harness for tests in a real browser: Debian's Chromium driven by Playwright (never
`playwright install`: these machines are offline; README, "Browser tests").

- `browser_unavailable()`: why browser tests cannot run here (None when they can).
- `JupyterLab(notebook, folder)`: a JupyterLab server on a *copy* of a notebook (JupyterLab autosaves outputs
  into the file it opens) with its own token, port, settings and runtime folders; `.url(path)`; stops on exit.
- `run_all_cells(page, lab, timeout_s)`: open the notebook, wait for the kernel, run every cell, wait until all
  have run; returns the error outputs (ename: evalue) of the cells.
- `check_html(browser, path)`: open a static HTML file and report console errors, page errors and plotly
  divs that drew nothing (the check a report's test needs).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
INSTALL_HINT = ("install what is missing with: apt-get install -y --no-install-recommends chromium && "
                "python3 -m pip install -e '.[test]' (playwright; never `playwright install`)")


def chromium_path() -> Optional[str]:
    """The Chromium binary to drive: $WB_CHROMIUM, else Debian's (the real binary skips a noisy wrapper)."""
    env = os.environ.get("WB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in CHROMIUM_CANDIDATES if Path(p).is_file()), None)


def browser_unavailable() -> Optional[str]:
    """The reason browser tests cannot run on this machine, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed; " + INSTALL_HINT
    if os.environ.get("WB_CHROMIUM") and chromium_path() is None:
        return f"$WB_CHROMIUM={os.environ['WB_CHROMIUM']!r} is not a file; point it at a Chromium binary or unset it"
    if chromium_path() is None:
        return f"no Chromium binary (looked for {', '.join(CHROMIUM_CANDIDATES)}); " + INSTALL_HINT
    return None


def launch(playwright):
    """Headless Chromium from `chromium_path()` (Playwright passes --no-sandbox itself, needed as root)."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A JupyterLab server on a copy of `notebook` in `folder` (created); use as a context manager.

        with JupyterLab(Path("notebooks/05_dashboards.ipynb"), tmp_path / "lab") as lab:
            page.goto(lab.url(f"lab/tree/{lab.notebook.name}", reset=True))
    """

    def __init__(self, notebook: Path, folder: Path, start_timeout_s: float = 90):
        self.source, self.folder = Path(notebook), Path(folder)
        self.start_timeout_s = start_timeout_s
        self.token, self.port = secrets.token_hex(16), free_port()
        self.process: Optional[subprocess.Popen] = None
        self.log = self.folder / "jupyterlab.log"

    @property
    def notebook(self) -> Path:
        return self.folder / self.source.name

    def url(self, path: str = "", reset: bool = False) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}" + ("&reset" if reset else "")

    def __enter__(self) -> "JupyterLab":
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.source, self.notebook)
        settings = self.folder / "settings"
        notes = settings / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True, exist_ok=True)  # no news / update toast over the page
        (notes / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                             "checkForUpdates": False}))
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(self.folder / "runtime"),
                   JUPYTER_CONFIG_DIR=str(self.folder / "config"))
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={self.port}", "--port-retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.folder}", "--LabApp.expose_app_in_browser=True",
               f"--LabApp.workspaces_dir={self.folder / 'ws'}", f"--LabApp.user_settings_dir={settings}"]
        self._log_file = open(self.log, "wb")
        self.process = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode} before it was ready; "
                                   f"its log: {self.log}\n{self.log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer within {self.start_timeout_s:.0f} s; its log: {self.log}")

    def stop(self) -> None:
        """Kill the server's process group (the server and its kernels) by its id."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()

    def __exit__(self, *exc) -> None:
        self.stop()


_ALL_RUN = """() => {
  const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!nb || !nb.content || !nb.content.model || !nb.sessionContext.session) return false;
  const kernel = nb.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  const cells = nb.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type === 'code' && c.sharedModel.getSource().trim() && c.executionCount == null) return false;
  }
  return true;
}"""

_ERRORS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells, out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    for (const o of c.outputs.toJSON()) if (o.output_type === 'error') out.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
  }
  return out;
}"""


def run_all_cells(page, lab: JupyterLab, timeout_s: float = 600) -> list[str]:
    """Open the lab's notebook in `page`, wait for an idle kernel, run all cells and wait until every code cell has
    run; returns the error outputs ("cell i: Name: message"), empty when the notebook ran cleanly."""
    page.goto(lab.url(f"lab/tree/{lab.notebook.name}", reset=True))
    page.wait_for_function("""() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel &&
                  w.sessionContext.session.kernel.status === 'idle'); }""", timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_ALL_RUN, timeout=timeout_s * 1000, polling=500)
    return page.evaluate(_ERRORS)


@dataclass
class HtmlReport:
    """What `check_html` saw: console errors, uncaught page errors, and the plotly divs (empty: drew nothing)."""

    console_errors: list = field(default_factory=list)
    page_errors: list = field(default_factory=list)
    plotly_divs: int = 0
    empty_plotly_divs: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.console_errors or self.page_errors or self.empty_plotly_divs)

    def __str__(self) -> str:
        return (f"{self.plotly_divs} plotly divs, empty: {self.empty_plotly_divs}; console errors: "
                f"{self.console_errors}; page errors: {self.page_errors}")


_PLOTLY_DIVS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map((d, i) => ({
  id: d.id || `#${i}`,
  drawn: !!d.querySelector('.main-svg') && Array.isArray(d.data) && d.data.length > 0,
}))"""


def check_html(browser, path: Path, settle_ms: int = 500, timeout_s: float = 60) -> HtmlReport:
    """Open the static HTML file `path` in a fresh page of `browser` and report console errors, page errors and
    plotly divs that drew nothing (no SVG, or no traces). Nothing is fetched from the network beyond the file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no HTML file at {str(path)!r}")
    report = HtmlReport()
    page = browser.new_page()
    try:
        page.on("console", lambda m: report.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: report.page_errors.append(str(e)))
        page.goto(path.as_uri(), wait_until="load", timeout=timeout_s * 1000)
        page.wait_for_timeout(settle_ms)  # plotly draws after load
        divs = page.evaluate(_PLOTLY_DIVS)
    finally:
        page.close()
    report.plotly_divs = len(divs)
    report.empty_plotly_divs = [d["id"] for d in divs if not d["drawn"]]
    return report
