"""Tests for workbench.data.captions and the vocabulary's tokenizability."""

import itertools

import numpy as np
import pytest

from workbench.data import captions as C
from workbench.data import vocab


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip  # ships its BPE vocabulary: works offline

    return open_clip.get_tokenizer("ViT-B-32")


def every_label_combination():
    keys = ("occupation", "gender", "ethnicity", "age", "scene")
    sizes = [len(vocab.LABEL_NAMES[k]) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(range(s) for s in sizes))]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a engineer", "an engineer"),
        ("a photo of a indian woman", "a photo of an indian woman"),
        ("an doctor", "a doctor"),
        ("a elderly asian man at a airport", "an elderly asian man at an airport"),
        ("a uniform", "a uniform"),
        ("a hour", "an hour"),
        ("A apple", "An apple"),
        ("a european city", "a european city"),
        ("a close-up photo of a old man", "a close-up photo of an old man"),
    ],
)
def test_with_articles(text, expected):
    assert C.with_articles(text) == expected


def test_all_captions_for_one_image():
    codes = {"occupation": vocab.OCCUPATIONS.index("engineer"), "gender": 1,
             "ethnicity": vocab.ETHNICITIES.index("asian"), "age": 1, "scene": vocab.SCENES.index("airport")}
    caps = C.all_captions(codes)
    # photo 1, plain 1, adjective 8, activity 1, gender 2, gender_photo 1, gender_working 1, scene 1, age 2,
    # ethnicity 1, full 2, ethnicity_gender_photo 1, ethnicity_gender 1, age_gender_scene 2, person 8
    assert len(caps) == 33 == len(set(caps))
    for expected in ("a photo of an engineer", "a female engineer", "a woman engineer", "an engineer at an airport",
                     "an elderly engineer", "an asian engineer", "an old asian female engineer at an airport",
                     "a photo of an asian woman", "an engineer holding a wrench", "a woman working as an engineer",
                     "a calm person at an airport"):
        assert expected in caps


def test_mention_rates_from_template_weights():
    rates = C.mention_rates()
    total = 0.98  # sum of the default weights
    assert rates["occupation"] == pytest.approx(1 - (0.06 + 0.04 + 0.02) / total)
    assert rates["gender"] == pytest.approx((0.10 + 0.05 + 0.04 + 0.08 + 0.05 + 0.06 + 0.04) / total)
    assert rates["ethnicity"] == pytest.approx((0.07 + 0.08 + 0.05 + 0.06) / total)
    assert rates["age"] == pytest.approx((0.08 + 0.08 + 0.04) / total)
    assert rates["scene"] == pytest.approx((0.10 + 0.08 + 0.04 + 0.02) / total)
    assert rates["occupation"] >= 0.85 and min(rates.values()) >= 0.2
    only_age = {name: 0.0 for name in C.TEMPLATE_NAMES if name != "age"}
    assert C.mention_rates(only_age) == {"occupation": 1.0, "gender": 0.0, "ethnicity": 0.0, "age": 1.0, "scene": 0.0}


def test_sample_captions_follow_the_weights():
    n = 6000
    rng = np.random.default_rng(0)
    keys = ("occupation", "gender", "ethnicity", "age", "scene")
    codes = {k: rng.integers(0, len(vocab.LABEL_NAMES[k]), n) for k in keys}
    caps = C.sample_captions(codes, np.random.default_rng(1))
    photo_share = np.mean([c.startswith("a photo of a") and len(c.split()) == 5 for c in caps])
    weights = C.template_weights()
    assert photo_share == pytest.approx(weights[C.TEMPLATE_NAMES.index("photo")], abs=0.015)
    both = [c for c, a in zip(caps, codes["age"]) if a == 1 and c.split()[1] in ("old", "elderly")]
    elderly = np.mean([c.split()[1] == "elderly" for c in both])
    assert elderly == pytest.approx(0.5, abs=0.08)  # word variants drawn uniformly


def test_bad_weights_and_rng():
    with pytest.raises(ValueError, match="unknown caption template"):
        C.template_weights({"haiku": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        C.template_weights({"photo": -1.0})
    with pytest.raises(ValueError, match="not all 0"):
        C.template_weights({name: 0.0 for name in C.TEMPLATE_NAMES})
    with pytest.raises(TypeError, match="numpy Generator"):
        C.sample_captions({k: [0] for k in ("occupation", "gender", "ethnicity", "age", "scene")}, rng=0)


def test_class_words_are_single_tokens(tokenizer):
    for word in vocab.ALL_CLASS_WORDS + vocab.ADJECTIVES + ("man", "woman", "elderly", "person"):
        ids = tokenizer.encode(word)
        assert len(ids) == 1, f"{word!r} splits into {[tokenizer.decoder[i] for i in ids]}"
        assert tokenizer.decoder[ids[0]] == word + "</w>"


def test_every_caption_fits_the_context_and_round_trips(tokenizer):
    unique = {c for codes in every_label_combination() for c in C.all_captions(codes)}
    assert len(unique) > 1000
    longest = 0
    for caption in unique:
        ids = tokenizer.encode(caption)
        longest = max(longest, len(ids) + 2)  # + start and end tokens
        assert tokenizer.decode(ids).strip() == caption
        for word in caption.split():
            assert len(tokenizer.encode(word)) <= 3, word
    assert longest <= C.MAX_CAPTION_TOKENS
