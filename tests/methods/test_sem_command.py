"""`workbench sem`: argument errors before any work, the best-variant rule, and end-to-end runs — the embedded
model on a small SynthSocial gallery, and a random-weight ViT-B-32 on a FairFace-layout folder with an SAE
trained in the run."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.methods.test_experts_command import _fairface_folder
from workbench.cli import main
from workbench.data import PromptSets, prompt_sets
from workbench.primitives import InterventionSpec, apply
from workbench.sem_command import pick_best, run_sem

SUMMARY_KEYS = {"method", "model", "data", "attribute", "seconds", "timings", "baseline", "variants", "best"}
VARIANTS = ["sem_i", "sem_b", "sem_bi", "orth_proj", "orth_cali"]


def test_pick_best_keeps_zero_shot_accuracy():
    base = {"gender_maxskew_prior_occupations": 0.3, "zero_shot_accuracy": 0.9}
    variants = {"fair_wrong": {"gender_maxskew_prior_occupations": 0.1, "zero_shot_accuracy": 0.87},
                "good": {"gender_maxskew_prior_occupations": 0.2, "zero_shot_accuracy": 0.885},
                "worse": {"gender_maxskew_prior_occupations": 0.4, "zero_shot_accuracy": 0.95}}
    assert pick_best(base, variants, "gender_maxskew_prior_occupations") == "good"
    assert pick_best(base, {"x": variants["fair_wrong"]}, "gender_maxskew_prior_occupations") is None


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sem", "--out", str(blocker)]) == 2
    assert f"the sem output folder '{blocker}' exists and is not a folder" in capsys.readouterr().err
    assert main(["sem", "--data", "coco:/x", "--out", str(tmp_path / "a")]) == 2
    assert "expected 'synthsocial' or KIND:DIR" in capsys.readouterr().err
    assert main(["sem", "--sae", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "--sae" in (err := capsys.readouterr().err) and "no SAE folder there" in err
    assert main(["sem", "--attribute", "religion", "--n-images", "64", "--quiet", "--out", str(tmp_path / "c")]) == 2
    assert "the synthsocial data has no label 'religion'; choose --attribute from ['age'," in capsys.readouterr().err
    assert main(["sem", "--attribute", "occupation", "--n-images", "64", "--quiet", "--out", str(tmp_path / "d")]) == 2
    assert ("SEMb and the projections need bias prompts for --attribute 'occupation'; the synthsocial prompt sets "
            "have them for ['age', 'ethnicity', 'gender', 'scene']") in capsys.readouterr().err
    assert main(["sem", "--n-images", "4", "--out", str(tmp_path / "e")]) == 2
    assert "n_images must be an integer ≥ 8, got 4" in capsys.readouterr().err
    assert main(["sem", "--disentanglement", "gender,religion", "--out", str(tmp_path / "f")]) == 2
    assert "--disentanglement: no bias prompts for ['religion'] in the synthsocial prompt sets" in \
        capsys.readouterr().err


def _check_report(out: Path, summary: dict, attribute: str) -> None:
    assert SUMMARY_KEYS <= set(summary) and summary["method"] == "sem" and summary["attribute"] == attribute
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [v["name"] for v in summary["variants"]] == VARIANTS
    for v in summary["variants"]:
        if v["name"] == "sem_i":
            assert v["spec"] is None and v["evaluated_as"] == "api"
        else:
            spec = InterventionSpec.load(out / v["spec"])
            assert spec.provenance["variant"] == v["name"]
            assert spec.model.fingerprint == summary["model"]["fingerprint"]
        for metric, value in v["metrics"].items():
            lo, hi = v["intervals"][metric]
            assert lo - 1e-9 <= value <= hi + 1e-9
    for key in (f"{attribute}_kl_occupations", f"{attribute}_maxskew_prior_stereotypes"):
        assert np.isfinite(summary["baseline"][key])
    assert summary["best"] == pick_best(summary["baseline"], {v["name"]: v["metrics"] for v in summary["variants"]},
                                        summary["best_metric"])
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("variant,") and len(table) == 1 + 1 + len(VARIANTS)
    for name in ("metrics", "modulation", "scores"):
        assert "plotly.min.js" in (out / "figures" / f"{name}.html").read_text()


@pytest.mark.slow
def test_sem_on_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    summary = run_sem(out, n_images=128, n_boot=100, disentanglement=("gender",), progress=False)
    _check_report(out, summary, "gender")
    assert summary["sae"]["source"] == "shipped" and summary["prompts"]["without_paraphrases"] == []
    assert set(summary["timings"]) == {"load", "sae", "fit", "evaluate", "disentanglement", "write"}
    metrics = {v["name"]: v["metrics"] for v in summary["variants"]}
    assert 0 <= metrics["sem_bi"]["worst_group_accuracy"] <= 1 and "zero_shot_accuracy_spurious" in metrics["sem_bi"]
    assert summary["spurious"]["classes"] == ["kitchen", "field"]
    assert [(r["attribute"], r["features"]) for r in summary["disentanglement"]] == [("gender", "dense"),
                                                                                      ("gender", "sae_sae")]
    # the exported SEMb spec reproduces the evaluated variant's text embeddings
    from workbench import load_clip
    from workbench.methods.sem import SEM

    model = load_clip("synthsocial")
    queries = prompt_sets("synthsocial").occupations
    with torch.no_grad(), apply(model, InterventionSpec.load(out / "specs" / "sem_b.json")):
        applied = model.encode_text(queries)
    sem = SEM.fit(model, "synthsocial/text-embed", prompt_sets("synthsocial"), "gender")
    assert torch.equal(applied, sem.debias(queries, "sem_b"))


def _small_real_prompts() -> PromptSets:
    """prompt_sets("real") cut down so a random ViT-B-32 text tower encodes it in seconds."""
    real = prompt_sets("real")
    queries = [*real.occupations[:3], *real.stereotypes[:2]]
    return PromptSets(occupations=real.occupations[:3], adjectives=real.adjectives[:1], activities=real.activities[:1],
                      stereotypes=real.stereotypes[:2],
                      bias={"gender": {c: p[:6] for c, p in real.bias["gender"].items()}},
                      paraphrases={q: real.paraphrases[q] for q in queries}, diverse=real.diverse[:12],
                      vocabulary="real")


@pytest.mark.slow
def test_sem_on_a_random_vit_b_32_and_a_fairface_folder(tmp_path, monkeypatch, capsys):
    """The real-model path through the console script: open_clip ViT-B-32 (random weights), FairFace loader,
    no occupation label, an SAE trained in the run (a few steps) and saved under DIR/saes."""
    import workbench.sem_command as command
    from tests.models.archs import build_pair
    from workbench import models

    _, model = build_pair("ViT-B-32")
    monkeypatch.setattr(models, "load_clip", lambda *a, **k: model)
    monkeypatch.setattr(command, "vocabulary_prompts", lambda m: _small_real_prompts())
    folder = _fairface_folder(tmp_path / "fairface")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="the gallery has 16 images, fewer than top_k=100"):
        code = main(["sem", "--model", "ViT-B-32", "--data", f"fairface:{folder}", "--n-boot", "100", "--sae-steps",
                     "20", "--disentanglement", "gender", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    _check_report(out, summary, "gender")
    assert summary["sae"]["source"] == "trained" and Path(summary["sae"]["path"]) == out / "saes" / "text-embed"
    assert summary["sae"]["d_sae"] == 4 * 512 and summary["spurious"] is None
    assert "zero_shot_accuracy" not in summary["baseline"] and "worst_group_accuracy" not in summary["baseline"]
    assert [r["attribute"] for r in summary["disentanglement"]] == ["gender", "gender"]  # dense, SAE latents
    spec = InterventionSpec.load(out / "specs" / "sem_b.json")
    queries = ["a photo of an accountant", "a photo of a doctor"]
    from workbench.methods.sem import SEM

    sem = SEM.fit(model, out / "saes" / "text-embed", _small_real_prompts(), "gender")
    with torch.no_grad(), apply(model, spec):
        applied = model.encode_text(queries)
    assert torch.equal(applied, sem.debias(queries, "sem_b"))
