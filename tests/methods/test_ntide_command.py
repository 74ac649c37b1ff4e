"""`workbench ntide`: arguments refused before any work, and end-to-end runs — the embedded teacher on a small
SynthSocial split (the reported metrics recomputed from the saved checkpoint), and a random-weight ViT-B-32
teacher (224 px) on a FairFace-layout folder of real JPEGs through the console script."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.cli import main
from workbench.ntide_command import pick_best, run_ntide_command

SUMMARY_KEYS = {"method", "model", "data", "attribute", "seconds", "timings", "baseline", "variants", "best"}
ROWS = ["clip_probe", "clip_text", "clip_text_inversion_random", "clip_text_inversion", "ntide_no_inversion", "ntide"]
METRICS = {"accuracy", "eop_diff", "eo_diff", "dp_diff", "rbd"}


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["ntide", "--out", str(blocker)]) == 2
    assert f"the ntide output folder '{blocker}' exists and is not a folder" in capsys.readouterr().err
    assert main(["ntide", "--data", "sispi:/x", "--out", str(tmp_path / "a")]) == 2
    assert "expected 'synthsocial' or KIND:DIR with KIND one of fairface, utkface" in capsys.readouterr().err
    assert main(["ntide", "--lambda-t", "one", "--out", str(tmp_path / "b")]) == 2
    assert "expected comma-separated numbers (e.g. 1 or 0.25,1,2), got 'one'" in capsys.readouterr().err
    assert main(["ntide", "--lambda-s", "-1", "--out", str(tmp_path / "c")]) == 2
    assert "lambda_s must be one or more non-negative numbers" in capsys.readouterr().err
    assert main(["ntide", "--group", "religion", "--n-train", "64", "--quiet", "--out", str(tmp_path / "d")]) == 2
    assert "the synthsocial data has no label 'religion'; choose --group from ['age'," in capsys.readouterr().err
    assert main(["ntide", "--target", "gender", "--group", "gender", "--n-train", "64", "--n-test", "64", "--quiet",
                 "--out", str(tmp_path / "e")]) == 2
    assert "--target and --group are both 'gender'" in capsys.readouterr().err
    assert main(["ntide", "--backbone-weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "f")]) == 2
    assert "--backbone-weights: no file" in capsys.readouterr().err
    assert not (tmp_path / "e" / "checkpoints").exists()  # refused before any training


def test_pick_best_is_an_image_only_student_below_the_baseline_eo():
    base = {"accuracy": 0.90, "eo_diff": 0.10}
    variants = {"clip_text": {"accuracy": 0.95, "eo_diff": 0.01},  # a teacher: needs CLIP, not eligible
                "ntide": {"accuracy": 0.89, "eo_diff": 0.05},
                "ntide_lt2_ls1": {"accuracy": 0.85, "eo_diff": 0.02},  # accuracy −0.05: too costly
                "ntide_no_inversion": {"accuracy": 0.91, "eo_diff": 0.12}}
    students = {"ntide", "ntide_lt2_ls1", "ntide_no_inversion"}
    assert pick_best(base, variants, students) == "ntide"
    assert pick_best(base, {"ntide_no_inversion": variants["ntide_no_inversion"]}, students) is None


def _check_report(out: Path, summary: dict, group: str, rows=ROWS) -> None:
    assert SUMMARY_KEYS <= set(summary) and summary["method"] == "ntide" and summary["attribute"] == group
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert set(summary["model"]) == {"name", "pretrained", "fingerprint"}
    assert [v["name"] for v in summary["variants"]] == rows and set(summary["baseline"]) == METRICS
    for v in summary["variants"]:
        assert v["spec"] is None and set(v["metrics"]) == METRICS
        for metric, value in v["metrics"].items():
            lo, hi = v["intervals"][metric]
            assert np.isfinite(value) and lo <= value + 1e-12 <= hi + 2e-12
        if v["kind"] == "probe":
            assert v["checkpoint"] is None
        else:
            assert (out / v["checkpoint"]).is_file()
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("variant,kind,accuracy,eop_diff,eo_diff,dp_diff,rbd,") and len(table) == len(rows) + 2
    md = (out / "table.md").read_text()
    assert "| variant | kind | accuracy |" in md and "| student | student |" in md
    for name in ("features_pca", "features_tsne", "training_curves", "metrics"):
        html = (out / "figures" / f"{name}.html").read_text()
        assert "plotly.min.js" in html and len(html) < 2_000_000


@pytest.mark.slow
def test_ntide_on_the_embedded_model_reports_what_its_checkpoints_compute(tmp_path):
    from workbench import load_clip
    from workbench.data import SynthSocial
    from workbench.methods.ntide_data import prepare_split
    from workbench.methods.ntide_student import Student
    from workbench.methods.ntide_train import load_checkpoint
    from workbench.metrics import fairness_report

    out = tmp_path / "run"
    summary = run_ntide_command(out, n_train=256, n_test=128, teacher_epochs=2, student_epochs=1, n_boot=3,
                                progress=False)
    _check_report(out, summary, "gender")
    assert summary["target"] == "occupation" and summary["task"]["n_classes"] == 8
    assert set(summary["timings"]) == {"load", "features", "teachers", "students", "evaluate", "write"}
    assert summary["history"]["clip_text_inversion"][-1]["epoch"] == 2
    # the reported N-TIDE row is what its checkpoint computes on the test split, scored by fairness_report
    model = load_clip("synthsocial")
    test = prepare_split(model, SynthSocial("test_balanced", n=128), ("occupation", "gender"), progress=False)
    entry = next(v for v in summary["variants"] if v["name"] == "ntide")
    student = Student("small_cnn", 8, 64)  # features: d_embed 128 // 2
    load_checkpoint(out / entry["checkpoint"], student)
    with torch.no_grad():
        logits, features = student.eval()(test.images)
    expected = fairness_report(test.labels["occupation"].numpy(), logits.numpy(), test.labels["gender"].numpy(),
                               features=features.numpy(), n_classes=8)
    for metric, value in expected.items():
        assert entry["metrics"][metric] == pytest.approx(value, abs=1e-6), metric


# ---------------------------------------------------------------------------------------------- real-model path
def _fairface_folder(root: Path, n_train: int = 24, n_val: int = 16) -> Path:
    """A FairFace-layout folder with train and val splits: noisy 224 px JPEGs whose colour follows gender."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = ["file,age,gender,race,service_test"]
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            gender, race = ("Male", "Female")[i % 2], ("White", "Black")[(i // 2) % 2]
            base = np.array([90, 120, 150] if gender == "Male" else [150, 110, 90]) + (30 if race == "White" else -30)
            pixels = np.clip(base + rng.normal(0, 25, (224, 224, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"{i}.jpg", "JPEG", quality=90)
            rows.append(f"{split}/{i}.jpg,20-29,{gender},{race},False")
        (root / f"fairface_label_{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.slow
def test_ntide_on_a_random_vit_b_32_and_a_fairface_folder(tmp_path, monkeypatch, capsys):
    """One epoch of every model through the console script: open_clip ViT-B-32 (random weights, 12-layer text
    tower with a 77-token context) as the frozen teacher, FairFace train → val, target gender, group race."""
    from workbench import models
    from tests.models.archs import build_pair

    _, model = build_pair("ViT-B-32")
    monkeypatch.setattr(models, "load_clip", lambda *a, **k: model)
    folder = _fairface_folder(tmp_path / "fairface")
    out = tmp_path / "run"
    code = main(["ntide", "--model", "ViT-B-32", "--data", f"fairface:{folder}", "--teacher-epochs", "1",
                 "--student-epochs", "1", "--image-size", "32", "--n-boot", "3", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "N-TIDE vs the student-only baseline: rbd" in printed
    summary = json.loads((out / "summary.json").read_text())
    _check_report(out, summary, "ethnicity")
    assert summary["model"]["name"] == "ViT-B-32" and summary["data"] == f"fairface:{folder}"
    assert summary["target"] == "gender" and summary["task"]["groups"] == [0, 1]  # White, Black present
    assert summary["config"]["feature_dim"] is None and summary["history"]["ntide"][0]["epoch"] == 1
    # the neutral token is ViT-B-32's text width (512) and sits before the pooled EOT token of a 77-token context
    from safetensors import safe_open

    with safe_open(str(out / "checkpoints" / "clip_text_inversion" / "epoch_001.safetensors"), "pt") as f:
        assert f.get_tensor("model/prompt.v").shape == (512,)
        assert f.get_tensor("model/fuse.0.weight").shape == (256, 512)  # d_embed 512 → 256


@pytest.mark.slow
def test_a_killed_run_resumed_reports_the_uninterrupted_run(tmp_path, monkeypatch):
    """Kill `workbench ntide` after the first epoch of the N-TIDE student, rerun with resume: the teachers come back
    from their checkpoints, the student continues from epoch 1, and every weight and metric equals the run that was
    never interrupted."""
    import workbench.methods.ntide as ntide
    from safetensors.torch import load_file

    settings = dict(n_train=128, n_test=64, teacher_epochs=2, student_epochs=2, ablations=False, n_boot=0,
                    progress=False)
    full = run_ntide_command(tmp_path / "full", **settings)
    assert full["finding"].startswith("N-TIDE vs the student-only baseline: rbd ") and "noise" not in full["finding"]

    class Killed(Exception):
        pass

    real_fit = ntide.fit

    def fit_killed_in_ntide(*args, **kwargs):
        if kwargs["name"] == "ntide":
            def kill(epoch, record):
                raise Killed
            kwargs["on_epoch_end"] = kill
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(ntide, "fit", fit_killed_in_ntide)
    with pytest.raises(Killed):
        run_ntide_command(tmp_path / "killed", **settings)
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints" / "ntide").iterdir()) == \
        ["epoch_001.safetensors"]
    monkeypatch.setattr(ntide, "fit", real_fit)
    resumed = run_ntide_command(tmp_path / "killed", resume=True, **settings)
    assert resumed["baseline"] == full["baseline"]
    assert [v["metrics"] for v in resumed["variants"]] == [v["metrics"] for v in full["variants"]]
    for row in ("student", "clip_text_inversion", "ntide"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / row / "epoch_002.safetensors"))
        b = load_file(str(tmp_path / "killed" / "checkpoints" / row / "epoch_002.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), row
