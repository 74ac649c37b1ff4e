"""`workbench debiaslens`: argument checks before any work, and end-to-end runs — the embedded model on a small
SynthSocial split (shipped image SAE, text SAE trained in the command), and a random-weight ViT-B-32 (224 px) on a
FairFace-layout folder with both SAEs trained in the command."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.methods.test_experts_command import _fairface_folder
from tests.primitives.conftest import random_sae
from workbench.cli import main
from workbench.debiaslens_command import bias_score, run_debiaslens
from workbench.primitives import InterventionSpec, apply

SUMMARY_KEYS = {"method", "model", "data", "attribute", "seconds", "baseline", "variants", "best", "target",
                "alpha_sweep", "neurons", "saes", "settings", "timings"}


def test_bias_score():
    metrics = {"gender_maxskew_occupations": 0.2, "ethnicity_maxskew_occupations": 0.4,
               "gender_maxskew_prior_occupations": 0.1, "ethnicity_maxskew_prior_occupations": 0.3}
    assert bias_score(metrics, ["gender", "ethnicity"]) == pytest.approx(0.3)
    assert bias_score(metrics, ["gender", "ethnicity"], prior=True) == pytest.approx(0.2)
    assert bias_score(metrics, ["gender", "age"]) is None


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    from workbench import load_clip
    from workbench.saes import save_sae

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["debiaslens", "--out", str(blocker)]) == 2
    assert f"the debiaslens output folder '{blocker}' exists and is not a folder" in capsys.readouterr().err
    cases = [
        (["--tau", "1.5"], r"tau must be a fraction in (0, 1]"),
        (["--tau", "0"], r"tau must be a fraction in (0, 1]"),
        (["--alpha", "1.2"], "alpha must be in [0, 1]"),
        (["--alphas", "0,0.5,2"], "alpha must be in [0, 1]"),
        (["--alphas", "0,half"], "--alphas must be comma-separated numbers in [0, 1]"),
        (["--top-n", "0"], "top_n must be a positive integer"),
        (["--data", "coco:/x"], "expected 'synthsocial' or KIND:DIR"),
        (["--attribute", "religion", "--n-images", "64"], "unknown attribute 'religion': the synthsocial data has the "
                                                          "labels ['age', 'ethnicity', 'gender', 'occupation', "
                                                          "'scene']; choose --attribute from ['gender', 'ethnicity'] "
                                                          "or 'all'"),
        (["--attribute", "age", "--n-images", "64"], "--attribute 'age' has a single group in the reference set"),
        (["--sae", "synthsocial/image-embed", "--n-images", "64"],
         "--sae 'synthsocial/image-embed': this SAE was trained at 'hook_image_embed'; DebiasLens's image side needs "
         "an SAE on the last image block, 'blocks.5.hook_resid_post'"),
        (["--text-sae", "synthsocial/image-resid-last", "--n-images", "64"],
         "--text-sae 'synthsocial/image-resid-last': this SAE was trained at 'blocks.5.hook_resid_post'; DebiasLens's "
         "text side needs an SAE on the last text block, 'text.blocks.2.hook_resid_post'"),
    ]
    model = load_clip("synthsocial")
    narrow = save_sae(random_sae(64, 32), tmp_path / "narrow", model=model, site="blocks.5.hook_resid_post")
    cases.append((["--sae", str(narrow), "--n-images", "64"], f"--sae '{narrow}': the SAE reads vectors of size "
                                                              "d_in=64, but 'blocks.5.hook_resid_post' has width 128"))
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert main(["debiaslens", *args, "--quiet", "--out", str(out)]) == 2, args
        assert message in capsys.readouterr().err, args
        assert not (out / "summary.json").exists() and not (out / "saes").exists()


def _check_report(out: Path, summary: dict) -> None:
    assert SUMMARY_KEYS <= set(summary) and summary["method"] == "debiaslens"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    names = [v["name"] for v in summary["variants"]]
    assert len(names) == len(set(names)) and "baseline" not in names
    for v in summary["variants"]:
        paths = v["spec"] if isinstance(v["spec"], list) else [v["spec"]]
        for path in paths:
            spec = InterventionSpec.load(out / path)
            assert spec.provenance["method"] == "debiaslens"
            assert spec.model.fingerprint == summary["model"]["fingerprint"]
        for metric, value in v["metrics"].items():
            lo, hi = v["intervals"][metric]
            assert lo - 1e-9 <= value <= hi + 1e-9 or lo == hi
    groups = summary["settings"]["groups"]
    best = summary["best"]
    if best is not None:
        metrics = {v["name"]: v["metrics"] for v in summary["variants"]}
        assert bias_score(metrics[best], groups) < bias_score(summary["baseline"], groups)
    main_names = [v["name"] for v in summary["variants"] if not v.get("sweep")]
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("variant,") and len(table) == len(main_names) + 2  # header + baseline + variants
    for name in ("neurons_image", "neurons_text", "alpha_sweep"):
        html = (out / "figures" / f"{name}.html").read_text()
        assert "plotly.min.js" in html and len(html) < 1_000_000
    for tower in ("image", "text"):
        header = (out / f"neurons_{tower}.csv").read_text().splitlines()[0]
        assert header == "attribute,group,latent,frequency,mean_activation,other_frequency,other_mean_activation," \
                         "exclusive,selected"
    sweep = (out / "alpha_sweep.csv").read_text().splitlines()
    assert sweep[0].startswith("tower,alpha,variant,maxskew_occupations")
    assert len(sweep) == 1 + len(summary["alpha_sweep"])


@pytest.mark.slow
def test_debiaslens_on_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="the gallery has 64 images, fewer than top_k=100"):
        summary = run_debiaslens(out, n_images=64, n_boot=100, alphas=[0.0, 1.0], sae_steps=40, progress=False)
    _check_report(out, summary)
    names = {v["name"] for v in summary["variants"]}
    assert {"debiaslens_i", "debiaslens_t", "debiaslens_it", "control_recon_i", "control_recon_t",
            "debiaslens_i_a1", "debiaslens_t_a1", "debiaslens_it_a1"} == names
    sweep_only = {v["name"] for v in summary["variants"] if v.get("sweep")}
    assert sweep_only == {"debiaslens_i_a1", "debiaslens_t_a1", "debiaslens_it_a1"}
    for v in summary["variants"]:  # the sweep skips caption retrieval; the main variants have every metric
        assert ("recall_at_1" in v["metrics"]) == (v["name"] not in sweep_only)
        assert "zero_shot_accuracy" in v["metrics"] and "gender_maxskew_occupations" in v["metrics"]
    assert summary["saes"]["image"]["source"] == "shipped synthsocial/image-resid-last"
    assert summary["saes"]["text"]["source"] == "trained" and (out / "saes" / "text" / "cfg.json").exists()
    metrics = summary["baseline"]
    for key in ("zero_shot_accuracy", "worst_group_accuracy", "gender_maxskew_occupations",
                "ethnicity_maxskew_prior_stereotypes", "ethnicity_kl_occupations"):
        assert key in metrics and np.isfinite(metrics[key]), key
    # 64 images: one per occupation × gender × ethnicity cell, all young — age has one group and is left out
    assert summary["settings"]["attributes"] == summary["settings"]["groups"] == ["gender", "ethnicity"]
    assert "age_kl_occupations" not in metrics
    sweep = summary["alpha_sweep"]
    assert [(r["tower"], r["alpha"]) for r in sweep] == [(t, a) for t in ("i", "t", "it") for a in (0.0, 0.6, 1.0)]
    main_i = next(v for v in summary["variants"] if v["name"] == "debiaslens_i")
    row = next(r for r in sweep if r["tower"] == "i" and r["alpha"] == 0.6)
    assert row["zero_shot_accuracy"] == main_i["metrics"]["zero_shot_accuracy"]
    assert row["maxskew_occupations"] == pytest.approx(bias_score(main_i["metrics"], summary["settings"]["groups"]))
    assert set(summary["target"]) == {"debiaslens_i", "debiaslens_t", "debiaslens_it"}
    assert summary["neurons"]["image"]["tau"] == 1.0 and summary["neurons"]["image"]["union"]
    # the I+T variant's two specs, reloaded and applied together, give the embeddings the pair gives
    from contextlib import ExitStack

    from workbench import load_clip
    from workbench.data import SynthSocial

    model = load_clip("synthsocial")
    spec_i, spec_t = (InterventionSpec.load(out / p) for p in next(v["spec"] for v in summary["variants"]
                                                                     if v["name"] == "debiaslens_it"))
    assert spec_i.edits[0].tower == "image" and spec_t.edits[0].tower == "text" and spec_i.alpha == 0.6
    x = model.preprocess(SynthSocial("test_balanced", n=64).tensors()[0][:4])
    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(apply(model, spec_i))
        stack.enter_context(apply(model, spec_t))
        image, text = model.encode_image(x), model.encode_text(["a photo of a nurse"])
    with torch.no_grad():
        clean_image, clean_text = model.encode_image(x), model.encode_text(["a photo of a nurse"])
    assert not torch.equal(image, clean_image) and not torch.equal(text, clean_text)


@pytest.mark.slow
def test_debiaslens_on_a_random_vit_b_32_and_a_fairface_folder(tmp_path, monkeypatch, capsys):
    """The real-model path through the console script: open_clip ViT-B-32 (random weights, 224 px), FairFace
    loader over real JPEGs, both SAEs trained in the command (seeded, 10 steps). The prompt sets are cut to a few
    prompts to keep the 12-layer text tower cheap."""
    import workbench.data as data
    from tests.models.archs import build_pair
    from workbench import models
    from workbench.data.prompts import PromptSets

    _, model = build_pair("ViT-B-32")
    monkeypatch.setattr(models, "load_clip", lambda *a, **k: model)
    small = PromptSets(
        occupations=["a photo of a doctor", "a photo of a nurse", "a photo of a pilot"],
        adjectives=["a photo of a kind person", "a photo of a lazy person"], activities=["a photo of a person cooking"],
        stereotypes=["a photo of a criminal", "a photo of a genius"],
        bias={"gender": {"male": ["a photo of a man", "a man"], "female": ["a photo of a woman", "a woman"]},
              "ethnicity": {"White": ["a photo of a white man", "a white woman"],
                            "Black": ["a photo of a black man", "a black woman"]}},
        paraphrases={}, diverse=["a photo of a street", "a photo of a kitchen"], vocabulary="real")
    monkeypatch.setattr(data, "prompt_sets", lambda vocabulary="synthsocial": small)
    folder = _fairface_folder(tmp_path / "fairface")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="fewer than top_k=100"):
        code = main(["debiaslens", "--model", "ViT-B-32", "--data", f"fairface:{folder}", "--tau", "0.9",
                     "--alphas", "0.6", "--sae-steps", "10", "--n-boot", "100", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["name"] == "ViT-B-32" and summary["data"] == f"fairface:{folder}"
    assert summary["settings"]["attributes"] == ["gender", "ethnicity"]  # one age bin in the folder: left out
    for tower, site in (("image", "blocks.11.hook_resid_post"), ("text", "text.blocks.11.hook_resid_post")):
        assert summary["saes"][tower]["source"] == "trained" and summary["saes"][tower]["site"] == site
        assert (out / "saes" / tower / "sae_weights.safetensors").exists()
    assert summary["neurons"]["image"]["n_inputs"] == 16 and summary["neurons"]["text"]["n_inputs"] == 8
    assert "zero_shot_accuracy" not in summary["baseline"]  # no target label
    assert np.isfinite(summary["baseline"]["gender_maxskew_occupations"])
    names = {v["name"] for v in summary["variants"]}
    assert {"control_recon_i", "control_recon_t"} <= names  # the controls do not depend on what was found
    assert names <= {"debiaslens_i", "debiaslens_t", "debiaslens_it", "control_recon_i", "control_recon_t"}
    _check_figures_and_specs(out, summary, model)


def _check_figures_and_specs(out, summary, model):
    for v in summary["variants"]:
        for path in (v["spec"] if isinstance(v["spec"], list) else [v["spec"]]):
            spec = InterventionSpec.load(out / path)
            if spec.edits[0].tower != "image":
                continue
            x = model.preprocess(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
            from workbench.primitives import intervene

            with intervene(model, spec.edits, sae=spec.load_sae(), alpha=spec.alpha), torch.no_grad():
                expected = model.encode_image(x)
            with apply(model, spec), torch.no_grad():
                assert torch.equal(model.encode_image(x), expected)
            return
