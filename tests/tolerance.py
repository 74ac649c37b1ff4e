"""One tolerance for fp32 comparisons of differently ordered computations.

Two fp32 computations of the same quantity in a different order (fused vs explicit attention, open_clip vs
our towers, a sum of decomposed parts vs the whole) differ by rounding that grows with the magnitude of
the values and with the BLAS/torch release a fresh install resolves. So the tolerance is relative to the
magnitudes compared: |actual − expected| ≤ REL · max(1, max|expected|), REL = 1e-5 (≈ 80 fp32 ulps at 1).
Comparisons of the *same* computation stay bit-exact (`torch.equal`).
"""
import torch

REL = 1e-5


def fp32_atol(expected: torch.Tensor, rel: float = REL) -> float:
    return rel * max(1.0, float(expected.detach().abs().max()))


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL, msg: str = "") -> None:
    """assert |actual − expected| ≤ rel · max(1, max|expected|) elementwise (shapes must agree)."""
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = float((actual.detach().double() - expected.detach().double()).abs().max()) if actual.numel() else 0.0
    atol = fp32_atol(expected, rel)
    assert err <= atol, f"{msg} max |Δ| = {err:.3g} > {atol:.3g} (fp32 tolerance {rel:g} × scale)"
