"""The `workbench` console script: subcommands run end to end; bad input gives one clear line."""
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


def test_demo_refuses_an_unwritable_output_folder_before_any_work(tmp_path, capsys):
    """The folder is checked first: one line naming it, no traceback, and no work done (nothing printed).
    A path under a regular file cannot be created even as root, where chmod would not block writes."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "demo"
    assert main(["demo", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith("workbench demo: error: cannot write to the demo output folder")
    assert str(out) in lines[0] and "pass a folder you can write to" in lines[0]


def test_demo_refuses_an_output_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "summary.json"
    target.write_text("{}")
    assert main(["demo", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"the demo output folder {str(target)!r} exists and is not a folder" in err
    assert target.read_text() == "{}"  # untouched


def test_train_toy_checks_its_output_folder_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["train-toy", "--steps", "1", "--out", str(blocker / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert "workbench train-toy: error: cannot write to the train-toy output folder" in captured.err


# The demo's end-to-end run (outputs, spec, metrics against golden values) is tests/golden/test_demo_golden.py.
