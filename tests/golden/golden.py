"""Where the golden values live and how the tests compare against them (see regenerate.py)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DECOMPOSITION = HERE / "decomposition.safetensors"
DEMO_JSON = HERE / "demo.json"
DEMO_PROTOTYPES = HERE / "demo_prototypes.safetensors"
REGENERATE = "python3 tests/golden/regenerate.py"
RTOL = 1e-5  # fp32: a fresh install may resolve another torch / BLAS, so no comparison is bit-exact
# Metrics computed from rankings or counts (NDKL, MaxSkew, accuracy) do not move continuously: another
# BLAS can swap two images whose similarities tie to ~1e-6, which moves such a metric by ~1e-4, and one
# flipped prediction moves accuracy by 1/1024. So they are compared to an absolute 2e-3 (the demo's NDKL
# drop it guards is 0.0126).
RANK_ATOL = 2e-3


def golden_batch_uint8() -> torch.Tensor:
    """The fixed batch: 8 SynthSocial test_balanced images, uint8 [8, 3, 64, 64]."""
    from workbench.data import SynthSocial

    images, _ = SynthSocial("test_balanced", seed=0, n=64).tensors(0, 8)
    return (images * 255).round().to(torch.uint8)


def load_decomposition() -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(DECOMPOSITION), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return tensors, meta


def load_demo() -> dict:
    return json.loads(DEMO_JSON.read_text())


def load_demo_prototypes() -> dict:
    from safetensors.torch import load_file

    return load_file(str(DEMO_PROTOTYPES))


def check_same_model(model, golden_fingerprint: str) -> None:
    """Golden values belong to one checkpoint: a retrained model needs new ones, not a tolerance."""
    assert model.fingerprint() == golden_fingerprint, (
        f"the shipped model's weights changed since the golden values were frozen; if that is intended, "
        f"regenerate them with `{REGENERATE}` and say why in the commit")


def assert_close_fp32(actual, expected, what: str) -> None:
    """fp32 tolerance scaled to the magnitudes: rtol 1e-5, atol 1e-5 × the largest |expected|."""
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")
