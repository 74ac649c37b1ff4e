"""`workbench experts`: argument checks, the best-variant rule, and end-to-end runs — the embedded model on a
small SynthSocial split, and a random-weight ViT-B-32 (224 px) on a FairFace-layout folder of real JPEGs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.cli import main
from workbench.experts_command import parse_data, pick_best, run_experts

SUMMARY_KEYS = {"method", "model", "data", "attribute", "seconds", "baseline", "variants", "best"}


def test_parse_data(tmp_path):
    assert parse_data("synthsocial") == ("synthsocial", None)
    assert parse_data(f"fairface:{tmp_path}") == ("fairface", tmp_path)
    with pytest.raises(ValueError, match=r"--data 'imagenet:/x': expected 'synthsocial' or KIND:DIR with KIND one of "
                                         r"fairface, utkface, sispi, celeba"):
        parse_data("imagenet:/x")
    with pytest.raises(ValueError, match="expected 'synthsocial' or KIND:DIR"):
        parse_data("fairface")
    with pytest.raises(FileNotFoundError, match=r"--data 'utkface:.*nowhere': no folder"):
        parse_data(f"utkface:{tmp_path / 'nowhere'}")


def test_pick_best_keeps_utility():
    base = {"gender_ndkl": 0.10, "map": 0.50, "zero_shot_accuracy": 0.90}
    variants = {
        "fair_but_useless": {"gender_ndkl": 0.01, "map": 0.40, "zero_shot_accuracy": 0.90},  # mAP −0.10
        "fair_wrong_zero_shot": {"gender_ndkl": 0.02, "map": 0.50, "zero_shot_accuracy": 0.87},  # −3 points
        "good": {"gender_ndkl": 0.05, "map": 0.485, "zero_shot_accuracy": 0.885},
        "worse": {"gender_ndkl": 0.12, "map": 0.52, "zero_shot_accuracy": 0.91},
    }
    assert pick_best(base, variants, "gender") == "good"
    assert pick_best(base, {"x": variants["fair_but_useless"]}, "gender") is None
    # a gallery without utility metrics (no target label): only NDKL counts
    assert pick_best({"gender_ndkl": 0.1}, {"a": {"gender_ndkl": 0.2}, "b": {"gender_ndkl": 0.05}}, "gender") == "b"


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["experts", "--out", str(blocker)]) == 2
    assert f"the experts output folder '{blocker}' exists and is not a folder" in capsys.readouterr().err
    assert main(["experts", "--data", "coco:/x", "--out", str(tmp_path / "a")]) == 2
    assert "expected 'synthsocial' or KIND:DIR" in capsys.readouterr().err
    assert main(["experts", "--layers", "first", "--out", str(tmp_path / "b")]) == 2
    assert "--layers must be 'last', 'all' or comma-separated layer indices" in capsys.readouterr().err
    for bad in ("2,x", "0,2"):
        assert main(["experts", "--sweep", bad, "--out", str(tmp_path / "d")]) == 2
        assert "--sweep must be comma-separated positive head counts (e.g. 1,2,4,6) or 'none'" in \
            capsys.readouterr().err
    assert main(["experts", "--attribute", "religion", "--n-images", "64", "--quiet", "--out",
                 str(tmp_path / "c")]) == 2
    assert "the synthsocial data has no label 'religion'; choose --attribute from ['age'," in capsys.readouterr().err


def _check_report(out: Path, summary: dict, attribute: str) -> None:
    from workbench.primitives import InterventionSpec

    assert SUMMARY_KEYS <= set(summary) and summary["method"] == "expert_heads"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert set(summary["model"]) == {"name", "pretrained", "fingerprint"} and summary["attribute"] == attribute
    names = [v["name"] for v in summary["variants"]]
    assert len(names) == len(set(names)) and "baseline" not in names
    for v in summary["variants"]:
        spec = InterventionSpec.load(out / v["spec"])
        assert spec.provenance["variant"] == v["name"] and spec.model.fingerprint == summary["model"]["fingerprint"]
        for metric, value in v["metrics"].items():
            lo, hi = v["intervals"][metric]
            assert lo - 1e-9 <= value <= hi + 1e-9 or lo == hi
    best = pick_best(summary["baseline"], {v["name"]: v["metrics"] for v in summary["variants"]}, attribute)
    assert summary["best"] == best
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("variant,") and len(table) == len(names) + 2  # header + baseline + variants
    assert "| variant |" in (out / "table.md").read_text()
    for name in ("expert_heads", "neuron_ap", "metrics", "gallery"):
        html = (out / "figures" / f"{name}.html").read_text()
        assert "plotly.min.js" in html and len(html) < 1_000_000  # plotly.js once, beside the figures
    assert (out / "figures" / "plotly.min.js").stat().st_size > 1_000_000
    assert (out / "heads.csv").exists() and (out / "neurons.csv").exists()


def test_experts_on_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    summary = run_experts(out, n_images=128, n_boot=100, progress=False)
    _check_report(out, summary, "gender")
    names = [v["name"] for v in summary["variants"]]
    assert {"attribution_top3_neutral", "ap_top3_zero", "ap_top3_male", "ap_top3_damp0.1", "neurons_ap0.42_damp0.1",
            "intersectional_gender_ethnicity_ap_neutral", "intersectional_gender_ethnicity_ap_male_white"} <= set(names)
    metrics = summary["variants"][0]["metrics"]
    for key in ("zero_shot_accuracy", "map", "ndcg", "gender_ndkl", "ethnicity_ndkl", "gender_ethnicity_ndkl",
                "recall_at_1", "bias_at_1"):
        assert key in metrics and np.isfinite(metrics[key])
    assert all(v["path"] == "cached" for v in summary["variants"])  # last-layer edits: one cached pass
    assert summary["finding"]["layers"] == [5] and len(summary["finding"]["selections"]["probe_ap"]) == 3
    assert set(summary["timings"]) == {"load", "find", "evaluate", "confirm", "write"}
    # the head-count sweep (8 heads in the last layer: k = 1, 2, 4, 6, 8 by both rankings) and its figure
    assert {f"{r}_top{k}_neutral" for r in ("ap", "attribution") for k in (1, 2, 4, 6, 8)} <= set(names)
    assert (out / "figures" / "head_sweep.html").exists()
    # the chance level of each NDKL metric, and the best variant re-measured on a fresh gallery
    from workbench.metrics import ndkl_chance

    # 128 balanced images: 16 per occupation, 8 of each gender
    assert summary["chance"]["gender_ndkl"] == pytest.approx(ndkl_chance(np.repeat([0, 1], 8)))
    assert "Chance level" in (out / "table.md").read_text()
    confirmation = summary["confirmation"]
    assert confirmation["variant"] == summary["best"] and "seed=2" in confirmation["gallery"]
    assert confirmation["diff"] == pytest.approx(confirmation["best"]["gender_ndkl"]
                                                 - confirmation["baseline"]["gender_ndkl"])
    from workbench.primitives import InterventionSpec

    seen = {v["name"]: InterventionSpec.load(out / v["spec"]).provenance["selection"] for v in summary["variants"]}
    assert seen["ap_top3_neutral"] == seen["neurons_ap0.42_damp0.1"] == "probe_ap"
    assert seen["attribution_top3_zero"] == seen["intersectional_gender_ethnicity_attribution_neutral"] == \
        "bias_attribution"
    assert seen["intersectional_gender_ethnicity_ap_male_white"] == "probe_ap"
    assert seen["attribution_top8_neutral"] == "bias_attribution" and seen["ap_top1_neutral"] == "probe_ap"
    assert {seen[n] for n in seen if n.startswith("head_")} == {"single_head"}


# ---------------------------------------------------------------------------------------------- real-model path
def _fairface_folder(root: Path, n: int = 32) -> Path:
    """A FairFace-layout folder: n noisy 224 px JPEGs whose mean colour depends on gender (val split)."""
    rng = np.random.default_rng(0)
    rows = ["file,age,gender,race,service_test"]
    for i in range(n):
        gender, race = ("Male", "Female")[i % 2], ("White", "Black")[(i // 2) % 2]
        base = np.array([90, 120, 150] if gender == "Male" else [150, 110, 90]) + (30 if race == "White" else -30)
        pixels = np.clip(base + rng.normal(0, 25, (224, 224, 3)), 0, 255).astype(np.uint8)
        (root / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "val" / f"{i}.jpg", "JPEG", quality=90)
        rows.append(f"val/{i}.jpg,20-29,{gender},{race},False")
    (root / "fairface_label_val.csv").write_text("\n".join(rows) + "\n")
    return root


def test_experts_on_a_random_vit_b_32_and_a_fairface_folder(tmp_path, monkeypatch, capsys):
    """The real-model path end to end through the console script: open_clip ViT-B-32 (random weights, 224 px,
    12 layers × 12 heads), FairFace loader over real JPEGs, no occupation label (queries relevant to every
    image). The prompt lists are cut to 4 + 4 prompts to keep the text tower cheap."""
    import workbench.experts_command as command
    from workbench import models
    from tests.models.archs import build_pair

    _, model = build_pair("ViT-B-32")
    monkeypatch.setattr(models, "load_clip", lambda *a, **k: model)
    monkeypatch.setattr(command, "real_prompts", lambda: {
        "occupations": ["a photo of a doctor", "a photo of a nurse", "a photo of a pilot", "a photo of a chef"],
        "adjectives": ["a photo of a kind person", "a photo of a smart person", "a photo of a lazy person",
                       "a photo of a strong person"]})
    folder = _fairface_folder(tmp_path / "fairface")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="the gallery has 16 images, fewer than top_k=100"):
        code = main(["experts", "--model", "ViT-B-32", "--data", f"fairface:{folder}", "--n-boot", "100", "--quiet",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    _check_report(out, summary, "gender")
    assert summary["model"]["name"] == "ViT-B-32" and summary["data"] == f"fairface:{folder}"
    assert summary["finding"]["layers"] == [11] and summary["finding"]["n_reference"] == 16
    metrics = summary["baseline"]
    assert "zero_shot_accuracy" not in metrics and "map" not in metrics  # no target label, no utility metrics
    assert np.isfinite(metrics["gender_ndkl"]) and np.isfinite(metrics["ethnicity_ndkl"])
    heads = (out / "heads.csv").read_text().splitlines()
    assert len(heads) == 1 + 12  # 12 heads of the last layer
    neurons = (out / "neurons.csv").read_text().splitlines()
    assert len(neurons) == 1 + 12 * 768  # every coordinate of every head's write (d_model = 768)
    spec_path = out / "specs" / "ap_top3_neutral.json"
    from workbench.primitives import InterventionSpec, apply, intervene

    spec = InterventionSpec.load(spec_path)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = model.preprocess(x)
    with intervene(model, spec.edits):
        expected = model.encode_image(x)
    with apply(model, spec):
        assert torch.equal(model.encode_image(x), expected)

