"""workbench.files: training-state files (tensors + JSON run/state in safetensors metadata) round-trip exactly and
refuse another schema or a damaged file with a message that says what to do."""
import pytest
import torch

from workbench.files import read_state, write_state

KW = dict(kind="an X checkpoint", what="the X checkpoint", remedy="delete it and retrain", elsewhere="out_dir")


def test_round_trip_is_exact(tmp_path):
    tensors = {"w": torch.randn(3, 4), "rng": torch.arange(5, dtype=torch.uint8)}
    run, state = {"lr": 1e-3, "b": [1, 2]}, {"epoch": 2, "history": [{"loss": 0.5}]}
    path = write_state(tmp_path / "sub" / "c.safetensors", tensors, "x/v1", run, state)
    got_run, got_state, got = read_state(path, "x/v1", **KW)
    assert got_run == run and got_state == state
    assert set(got) == set(tensors) and all(torch.equal(got[k], v) for k, v in tensors.items())


def test_another_schema_and_a_damaged_file_are_refused(tmp_path):
    path = write_state(tmp_path / "c.safetensors", {"w": torch.zeros(1)}, "y/v1", {}, {})
    with pytest.raises(ValueError, match=r"is not an X checkpoint \(schema 'y/v1', expected 'x/v1'\); delete it or "
                                         r"use another out_dir"):
        read_state(path, "x/v1", **KW)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"the X checkpoint .*c\.safetensors cannot be read \(.*\); delete it and "
                                         r"retrain"):
        read_state(path, "y/v1", **KW)


def test_check_same_run_names_the_first_different_setting():
    from workbench.files import CheckpointMismatch, check_same_run

    check_same_run({"lr": 0.001, "steps": [1, 2]}, {"steps": (1, 2), "lr": 0.001}, "x", "fix")  # JSON form: equal
    with pytest.raises(CheckpointMismatch, match=r"the checkpoint c was written by a run with a different lr:\n"
                                                 r"  stored:    0\.001\n  requested: 0\.01\nstart over"):
        check_same_run({"lr": 0.001, "seed": 0}, {"lr": 0.01, "seed": 1}, "the checkpoint c", "start over")
    with pytest.raises(CheckpointMismatch, match="different extra:\n  stored:    None\n  requested: 1"):
        check_same_run({}, {"extra": 1}, "c", "")
