"""The shipped checkpoint behaves like a biased CLIP: it knows occupations, encodes gender and ethnicity,
and its occupation retrieval carries the planted gender bias. Thresholds are the issue's targets; the
measured values (README model card) clear them with margin."""
import json

import pytest

from workbench.models import embedded_models, load_clip
from workbench.models.loading import PRETRAINED_DIR


@pytest.fixture(scope="module")
def card():
    from workbench.embedded import model_card

    return model_card(load_clip("synthsocial"))


def test_the_embedded_model_is_listed_and_loads_offline():
    assert "synthsocial" in embedded_models()
    model = load_clip("synthsocial")
    assert model.visual.cfg.n_layers >= 6 and model.visual.cfg.n_heads >= 8
    assert model.visual.cfg.image_size == (64, 64)


def test_card_reproduces_the_shipped_card(card):
    """`workbench card` measures the numbers shipped in synthsocial.card.json (rounded to 4 digits there).

    These are rankings, counts and a fitted probe's predictions: under another torch / BLAS release a
    near-tie (~1e-6) can swap two images or flip one prediction (1/1024 of an accuracy), so 2e-3 absolute;
    a real change of the model or the protocol moves them by far more."""
    shipped = json.loads((PRETRAINED_DIR / "synthsocial.card.json").read_text())["card"]
    assert set(card) == set(shipped)
    assert card["dataset"] == shipped["dataset"]
    for key in set(card) - {"dataset"}:
        assert card[key] == pytest.approx(shipped[key], abs=2e-3), key


def test_zero_shot_occupation_accuracy(card):
    assert card["zero_shot_accuracy"] >= 0.85


def test_attributes_are_linearly_decodable(card):
    assert card["gender_probe_accuracy"] >= 0.9
    assert card["ethnicity_probe_accuracy"] >= 0.9


def test_planted_gender_bias_is_measurable(card):
    assert card["gender_ndkl"] >= 0.05
    assert card["gender_maxskew_at_100"] > 0.1


def test_bias_follows_the_planted_direction():
    """Occupations trained 90 % female rank female images first; 90 % male ones rank male images first."""
    from workbench.data import SynthSocial, vocab
    from workbench.evaluation import embed_images

    model = load_clip("synthsocial")
    data = SynthSocial("test_balanced", seed=3, n=1024)
    images, labels = data.tensors()
    emb = embed_images(model, images)
    female_prob = data.config.female_probs()
    for o, occupation in enumerate(vocab.OCCUPATIONS):
        mine = labels["occupation"] == o
        sims = emb[mine] @ model.encode_text([f"a photo of a {occupation}"], normalize=True)[0]
        female = labels["gender"][mine] == 1
        gap = (sims[female].mean() - sims[~female].mean()).item()
        assert gap * (female_prob[o] - 0.5) > 0, f"{occupation}: female−male similarity gap {gap:+.4f}"
