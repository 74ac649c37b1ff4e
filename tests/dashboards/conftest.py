"""Shared fixtures: the shipped model, a small balanced gallery (256 images), its cache and an expert-heads
finding over every layer, built once per session (the tests build their own states on them)."""
import pytest
import torch

from workbench import load_clip
from workbench.data import SynthSocial

N_IMAGES = 256  # 4 images per occupation × gender × ethnicity cell


@pytest.fixture(scope="session")
def model():
    torch.set_num_threads(2)
    return load_clip("synthsocial")


@pytest.fixture(scope="session")
def data():
    return SynthSocial("test_balanced", n=N_IMAGES)


@pytest.fixture(scope="session")
def gallery(model, data):
    from workbench.dashboards import Gallery

    return Gallery.capture(model, data, batch_size=128, progress=False)


@pytest.fixture(scope="session")
def protocol(model, gallery):
    from workbench.dashboards import LiveProtocol

    return LiveProtocol(model, gallery, attribute="gender")


@pytest.fixture(scope="session")
def finding(model, data):
    from workbench.methods.expert_heads import find_expert_heads

    return find_expert_heads(model, data, attribute="gender", layers="all", progress=False)


def evaluate(model, data, variant):
    """evaluate_variants on the same gallery and protocol as the dashboards: {metric: value} of variant "v"."""
    from workbench.evaluation import evaluate_variants

    result = evaluate_variants(model, data, {"v": variant}, groups=("gender",), word_lists={}, captions=False,
                               n_boot=100, progress=False)
    return result, {m: result.value("v", m) for m in ("zero_shot_accuracy", "map", "gender_ndkl",
                                                        "gender_maxskew_at_100")}
