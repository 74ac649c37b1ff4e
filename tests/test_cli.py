"""The `workbench` console script: subcommands run end to end; bad input gives one clear line."""
import json

import pytest

from workbench.cli import main


def test_info_prints_summary_and_decomposition_check(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "HookedCLIP 'synthsocial'" in out and "max |Σ components − encode_image|" in out
    err = float(out.split("encode_image| = ")[1].split()[0])
    assert err <= 1e-5


def test_bad_model_name_is_one_clear_error(capsys):
    assert main(["info", "--model", "ViT-B-33"]) == 2
    err = capsys.readouterr().err
    assert "unknown model name 'ViT-B-33'" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["bit_exact"] is True
    assert len(summary["heads"]) == 3
    assert (tmp_path / "gender_heads.json").is_file() and (tmp_path / "head_probe_ap.html").is_file()
    assert set(summary["before"]) == set(summary["after"])
