"""Test-wide settings: offline, deterministic, small thread count (CI has 2 cores)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`workbench demo` run once per test session (its outputs are checked by tests/golden and tests/browser):
    (output folder, summary dict)."""
    import json

    from workbench.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "summary.json").read_text())

