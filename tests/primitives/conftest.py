"""Fixtures for the primitives tests: the tiny random-weight CLIP ("wb-tiny") and a small random SAE."""
import pytest
import torch

from tests.models.archs import build_pair, images_for


@pytest.fixture(scope="session")
def model():
    """wb-tiny: 32×32 images, 3 layers, d_model 64, 4 heads, d_mlp 256, d_embed 32 (shared, cached weights)."""
    return build_pair("wb-tiny")[1]


@pytest.fixture
def images(model):
    return images_for(model, n=3, seed=0)


def random_sae(d_in: int, d_sae: int, seed: int = 0):
    """A sae_lens StandardSAE with random weights and biases (so b_dec/b_enc matter in the checks)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    return sae.eval()


@pytest.fixture(scope="session")
def sae():
    """SAE on the image tower's residual stream: d_in = d_model = 64, 128 latents."""
    return random_sae(64, 128)
