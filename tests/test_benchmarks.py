"""The benchmark runner (`python -m benchmarks`): discovery, bad flags, the table; the cold-start split."""
import pytest

from benchmarks.bench_cold_start import split_importtime
from benchmarks.common import case
from benchmarks.run import discover, main, markdown


def test_every_bench_module_is_discovered():
    names = discover()
    assert {"hooked_vs_native", "head_contributions", "cold_start", "probe", "sae_train", "variants",
            "extract_memory", "embedded_load", "input_checks", "synthsocial", "fairness_report"} <= set(names)
    assert names["cold_start"] == "benchmarks.bench_cold_start"


@pytest.mark.parametrize("argv, message", [
    (["--only", "head_contribution"],
     r"--only: no benchmark 'head_contribution' \(did you mean 'head_contributions'\?\)"),
    (["--dtype", "float64"], r"--dtype 'float64': choose one of float32, bfloat16, float16"),
])
def test_bad_flags(tmp_path, capsys, argv, message):
    import re

    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device 'cuda': CUDA is not available on this machine" in capsys.readouterr().err


def test_table_row():
    row = case("x vs y", figure=2.0, baseline=10.0, unit="ms", baseline_name="y", ratio=5.0,
               ratio_means="baseline / figure (speed-up)", goal="≥ 5×", met=True, device="cpu", dtype="float32")
    report = {"device": "cpu", "dtype": "float32", "quick": False, "finished": "2026-01-01T10:00:00", "seconds": 3.0,
              "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 1.5, 1.0], "note": "",
              "machine": {"cpus": 2, "torch_threads": 2, "torch": "2.x", "python": "3.11"},
              "rows": [{"benchmark": "demo", "load": 1.5, **row},
                       {"benchmark": "broken", "load": 2.0, "error": "Traceback…\nValueError: bad"}]}
    table = markdown(report)
    assert ("| demo | x vs y | 2 ms | 10 ms (y) | 5 (baseline / figure (speed-up)) | ≥ 5× | ✓ | cpu | float32 | 1.5 |"
            in table)
    assert "| broken | failed: ValueError: bad | | | | | ✗ | cpu | float32 | 2 |" in table
    assert "before [1.0, 1.0, 1.0], after [2.0, 1.5, 1.0]" in table
    report["rows"][0]["goal"] = "≥ 20×, max |Δaccuracy| ≤ 0.01"
    assert r"| ≥ 20×, max \|Δaccuracy\| ≤ 0.01 |" in markdown(report)  # a | inside a cell is escaped


def test_importtime_split_charges_the_outermost_heavy_package():
    # -X importtime prints a module after what it imported; indentation is the import depth
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |     numpy",
        "import time:      2000 |       2100 |   torch",
        "import time:        50 |         50 |     timm",
        "import time:       300 |        350 |   open_clip",
        "import time:        10 |         10 |     workbench.models.hooks",
        "import time:        20 |       2480 | workbench.models",
        "import time:         5 |          5 | workbench",
        "import time:         7 |          7 | json",
    ])
    split = split_importtime(stderr)
    assert split == pytest.approx({"torch": 0.0021, "open_clip": 0.00035, "transformer_lens": 0.0,
                                   "other": 0.000007, "workbench": 0.000035})
