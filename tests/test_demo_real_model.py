"""`workbench demo` on a real-model path: an open_clip ViT-B-32 with random weights (224 px) and a FairFace-layout
folder. No shipped SAEs fit it, so SEM's is trained in the run; the comparison has no target label (bias queries
over every image) and no spurious gallery; the report is still written."""
import json

import pytest

from tests.methods.test_experts_command import _fairface_folder
from tests.methods.test_sem_command import _small_real_prompts
from workbench.cli import main

pytestmark = pytest.mark.slow


def test_demo_on_a_random_vit_b_32_and_a_fairface_folder(tmp_path, monkeypatch, capsys):
    import workbench.demo as demo
    import workbench.sem_command as sem_command
    from tests.models.archs import build_pair
    from workbench import models

    _, model = build_pair("ViT-B-32")
    monkeypatch.setattr(models, "load_clip", lambda *a, **k: model)
    monkeypatch.setattr(sem_command, "vocabulary_prompts", lambda m: _small_real_prompts())
    monkeypatch.setattr(demo, "SAE_STEPS", 20)
    folder = _fairface_folder(tmp_path / "fairface")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="fewer than top_k"):
        code = main(["demo", "--model", "ViT-B-32", "--data", f"fairface:{folder}", "--quick", "--quiet",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "ViT-B-32" and summary["data"] == f"fairface:{folder}"
    assert "before" not in summary  # the expert-heads tour needs SynthSocial labels
    comparison = summary["comparison"]
    # DebiasLens joins when its search finds social neurons on these random weights; the others always do
    assert {"expert_heads", "sem", "projection"} <= {v["method"] for v in comparison["variants"]}
    assert comparison["saes"]["sem_sae"] == str(out / "saes" / "text-embed")
    assert comparison["saes"]["image_sae"] == str((out / "saes" / "image").resolve())
    assert comparison["saes"]["text_sae"] == str((out / "saes" / "text").resolve())
    assert comparison["spurious"] == "None" and "worst_group_accuracy" not in comparison["baseline"]
    assert "gender_maxskew_occupations" in comparison["baseline"] and "zero_shot_accuracy" not in comparison["baseline"]
    html = (out / "report.html").read_text()
    assert "All methods side by side" in html and html.count('class="plotly-graph-div"') >= 2
