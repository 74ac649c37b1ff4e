"""The shipped model's decomposition of a frozen batch matches the golden values (fp32 tolerance).

Regenerate with `python3 tests/golden/regenerate.py` only when a change is meant to move them."""
import json

import pytest
import torch

from tests.golden.golden import (
    assert_close_fp32,
    check_same_model,
    golden_batch_uint8,
    load_decomposition,
)
from workbench.models import load_clip


@pytest.fixture(scope="module")
def golden():
    return load_decomposition()


@pytest.fixture(scope="module")
def model(golden):
    model = load_clip("synthsocial")
    check_same_model(model, golden[1]["fingerprint"])
    return model


@pytest.fixture(scope="module")
def decomposition(model, golden):
    tensors, _ = golden
    return model.visual.decompose(model.preprocess(tensors["images"].float() / 255))


def test_component_names_and_order(decomposition, golden):
    labels = json.loads(golden[1]["labels"])
    assert decomposition.labels == labels
    assert len(labels) == 1 + 6 * (8 + 2) + 1  # embed, per layer 8 heads + attn bias + MLP, ln_post bias


def test_component_values(decomposition, golden):
    tensors, _ = golden
    assert decomposition.components.shape == tensors["components"].shape == (8, 62, 128)
    assert_close_fp32(decomposition.components, tensors["components"], "decomposition components")


def test_encode_image_and_the_sum_of_components(model, decomposition, golden):
    tensors, _ = golden
    with torch.no_grad():
        embed = model.encode_image(model.preprocess(tensors["images"].float() / 255))
    assert_close_fp32(embed, tensors["image_embed"], "encode_image")
    assert_close_fp32(decomposition.sum(), tensors["image_embed"], "sum of the decomposition")


def test_the_generator_still_renders_the_frozen_batch(golden):
    """The demo's golden metrics assume SynthSocial renders the same images (to within uint8 rounding)."""
    tensors, _ = golden
    rendered = golden_batch_uint8().float()
    assert (rendered - tensors["images"].float()).abs().max().item() <= 1.0, (
        "SynthSocial('test_balanced', seed=0) renders different images than when the golden values were "
        "frozen; if intended, regenerate them (python3 tests/golden/regenerate.py)")
