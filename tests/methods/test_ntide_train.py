"""N-TIDE training: a run killed after an epoch and resumed ends with the same weights, bit for bit, as an
uninterrupted run; checkpoints are plain safetensors (no pickle) and belong to one run; distillation towards
group-free teacher features removes the group from the student's features (the effect N-TIDE relies on)."""
import json

import pytest
import torch
from safetensors import safe_open

from workbench.methods.ntide import NTIDEConfig, _train_student
from workbench.methods.ntide_data import Split
from workbench.methods.ntide_student import Student, student_loss
from workbench.methods.ntide_train import CheckpointMismatch, fit, latest_checkpoint
from workbench.metrics import representation_bias_distance


def _images(n: int = 96, size: int = 16, seed: int = 0):
    """Class = which corner holds a bright square; group = a red or blue tint over the whole image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    group = (torch.arange(n) // 2) % 2
    x = torch.rand(n, 3, size, size, generator=g) * 0.3
    x[y == 0, :, :5, :5] += 0.6
    x[y == 1, :, -5:, -5:] += 0.6
    x[group == 0, 0] += 0.3
    x[group == 1, 2] += 0.3
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y, group


def _run(folder, epochs=2, resume=False, on_epoch_end=None, lr=1e-3, seed=0):
    images, y, _ = _images()
    torch.manual_seed(123 if resume else 0)  # a resumed run must not depend on its fresh initialisation
    student = Student("small_cnn", n_classes=2, feature_dim=8)
    target = torch.randn(len(y), 8, generator=torch.Generator().manual_seed(5))

    def step(index):
        logits, features = student(images[index])
        return student_loss(logits, y[index], features, target[index], 1.0, 0.1), (logits.argmax(-1) == y[index]).sum()

    torch.manual_seed(7)  # the global RNG the checkpoint restores
    history = fit(student, student.param_groups(lr, lr), step, len(y), run={"lr": lr, "epochs": epochs},
                  folder=folder, epochs=epochs, batch_size=32, weight_decay=1e-2, eta_min=1e-5, seed=seed,
                  resume=resume, progress=False, name="student", on_epoch_end=on_epoch_end)
    return student, history


class Killed(Exception):
    pass


def _kill_after_first_epoch(epoch, record):
    if epoch == 1:
        raise Killed


def test_resume_after_a_kill_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    full, full_history = _run(tmp_path / "full")
    with pytest.raises(Killed):
        _run(tmp_path / "killed", on_epoch_end=_kill_after_first_epoch)
    assert latest_checkpoint(tmp_path / "killed").name == "epoch_001.safetensors"
    resumed, history = _run(tmp_path / "killed", resume=True)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name  # weights and BatchNorm statistics
    assert [h["loss"] for h in history] == [h["loss"] for h in full_history]
    assert [h["lr"] for h in history] == [h["lr"] for h in full_history]
    # resuming a finished run trains nothing and returns the stored weights
    again, _ = _run(tmp_path / "killed", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), full.state_dict().values()))


def test_checkpoints_are_plain_safetensors_of_one_run(tmp_path):
    _run(tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["epoch_002.safetensors"]  # keep="last": the previous epoch's file is gone
    with safe_open(str(tmp_path / "run" / files[0]), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"model/proj.weight", "model/backbone.1.running_mean", "rng/torch"} <= keys
    assert any(k.startswith("optimizer/") and k.endswith("/exp_avg_sq") for k in keys)  # AdamW moments
    state = json.loads(meta["state"])
    assert state["epoch"] == 2 and state["scheduler"]["last_epoch"] == 2 and len(state["history"]) == 2
    with pytest.raises(CheckpointMismatch, match="a different lr:\n  stored:    0.001\n  requested: 0.002"):
        _run(tmp_path / "run", resume=True, lr=2e-3)
    _run(tmp_path / "run", lr=2e-3)  # without resume the old run is replaced
    with safe_open(str(tmp_path / "run" / "epoch_002.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["run"])["lr"] == 2e-3


def test_distillation_to_group_free_features_removes_the_group_from_the_student():
    images, y, group = _images(n=192)
    # teacher features that carry the class only: a fixed direction per class
    directions = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    split = Split(images, torch.zeros(len(y), 4), {"t": y, "g": group}, {"t": ("a", "b"), "g": ("m", "f")})
    task = {"n_classes": 2}
    cfg = NTIDEConfig(target="t", group="g", student_epochs=6, student_batch_size=32, student_lr_backbone=3e-3,
                      student_lr_head=3e-3)
    kwargs = dict(teacher_run=None, feature_dim=16, base_run={}, device="cpu", folder=None, resume=False,
                  progress=False, keep="last", amp=False, on_epoch_end=None)
    baseline, _, _ = _train_student(split, task, cfg, name="student", targets=None, lambda_s=0.0, **kwargs)
    distilled, _, _ = _train_student(split, task, cfg, name="ntide", targets=directions[y], lambda_s=10.0, **kwargs)
    test_images, test_y, test_group = _images(n=192, seed=1)
    with torch.no_grad():
        rbd = {name: representation_bias_distance(m.eval()(test_images)[1], test_group.numpy())
               for name, m in (("baseline", baseline), ("distilled", distilled))}
        accuracy = (distilled(test_images)[0].argmax(-1) == test_y).float().mean().item()
    assert rbd["distilled"] < 0.5 * rbd["baseline"], rbd
    assert accuracy > 0.9
