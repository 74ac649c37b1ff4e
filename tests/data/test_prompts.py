"""Tests for workbench.data.prompts: sizes, well-formedness, class wording, vocabulary, tokenizability."""

import itertools

import pytest

from workbench.data import PromptSets, prompt_sets, vocab
from workbench.data.captions import MAX_CAPTION_TOKENS, all_captions, with_articles

FAIRFACE_RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip  # ships its BPE vocabulary: works offline

    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module", params=["synthsocial", "real"])
def sets(request):
    return prompt_sets(request.param)


def every_prompt(p: PromptSets) -> list[str]:
    bias = [q for classes in p.bias.values() for prompts in classes.values() for q in prompts]
    paraphrases = [q for prompts in p.paraphrases.values() for q in prompts]
    return p.queries + bias + paraphrases + p.diverse


def test_sizes():
    synth, real = prompt_sets("synthsocial"), prompt_sets("real")
    assert synth.occupations == [with_articles(f"a photo of a {o}") for o in vocab.OCCUPATIONS]
    assert len(synth.diverse) >= 50 and len(real.diverse) >= 300
    assert len(real.occupations) == 100 and len(real.adjectives) >= 50
    assert len(real.activities) >= 40 and len(real.stereotypes) >= 30
    assert set(synth.bias) == {"gender", "ethnicity", "age", "scene"} and set(real.bias) == {"gender", "ethnicity", "age"}
    assert list(synth.bias["scene"]) == list(vocab.SCENES)
    assert list(synth.bias["ethnicity"]) == list(vocab.ETHNICITIES)
    assert tuple(real.bias["ethnicity"]) == FAIRFACE_RACES  # FairFace's own class names
    assert list(real.bias["gender"]) == list(synth.bias["gender"]) == ["male", "female"]


def test_every_query_has_ten_paraphrases_of_the_same_subject(sets):
    assert set(sets.paraphrases) == set(sets.queries)
    for query, paraphrases in sets.paraphrases.items():
        assert len(paraphrases) == 10 and query not in paraphrases
        subject = query.removeprefix("a photo of an ").removeprefix("a photo of a ")
        assert all(subject in p for p in paraphrases), (query, paraphrases)


def test_bias_prompts_name_their_class_and_are_gender_balanced(sets):
    for attribute, classes in sets.bias.items():
        for cls, prompts in classes.items():
            assert len(prompts) == 20
            words = [set(p.split()) for p in prompts]
            if attribute == "gender":
                male, female = {"man", "male"}, {"woman", "female"}
                own, other = (male, female) if cls == "male" else (female, male)
                assert all(w & own and not w & other for w in words)
            else:  # the other attributes hold gender fixed: half men, half women
                assert sum("man" in w for w in words) == sum("woman" in w for w in words) == 10
    for cls, prompts in sets.bias["age"].items():
        assert all(cls in p.split() for p in prompts)


def test_prompts_are_well_formed(sets):
    for name in ("occupations", "adjectives", "activities", "stereotypes", "diverse"):
        prompts = getattr(sets, name)
        assert len(prompts) == len(set(prompts)), name
    for prompt in every_prompt(sets):
        assert prompt == " ".join(prompt.split()) and prompt == prompt.lower()
        assert with_articles(prompt) == prompt  # "a"/"an" already right
        assert not prompt.endswith((".", ","))


def test_prompts_tokenize_to_real_words(sets, tokenizer):
    limit = MAX_CAPTION_TOKENS if sets.vocabulary == "synthsocial" else tokenizer.context_length
    for prompt in set(every_prompt(sets)):
        ids = tokenizer.encode(prompt)
        assert len(ids) + 2 <= limit, prompt
        assert tokenizer.decode(ids).replace(" - ", "-").strip() == prompt  # lossless: real BPE words
    for word in {w for p in every_prompt(sets) for w in p.replace("-", " ").split()}:
        assert len(tokenizer.encode(word)) <= 4, word


def test_synthetic_prompts_use_only_caption_words():
    keys = ("occupation", "gender", "ethnicity", "age", "scene")
    seen = set()
    for combo in itertools.product(*(range(len(vocab.LABEL_NAMES[k])) for k in keys)):
        for caption in all_captions(dict(zip(keys, combo))):
            seen.update(caption.split())
    used = {w for p in every_prompt(prompt_sets("synthsocial")) for w in p.split()}
    assert used <= seen, sorted(used - seen)


def test_each_call_returns_a_fresh_copy():
    first = prompt_sets("real")
    first.occupations.append("a photo of a wizard")
    first.bias["gender"]["male"].clear()
    second = prompt_sets("real")
    assert "a photo of a wizard" not in second.occupations and len(second.bias["gender"]["male"]) == 20


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown prompt vocabulary 'french'"):
        prompt_sets("french")
    good = prompt_sets("synthsocial").to_dict()
    with pytest.raises(ValueError, match="adjectives must be a non-empty list"):
        PromptSets(**{**good, "adjectives": []})
    with pytest.raises(ValueError, match="repeats prompts"):
        PromptSets(**{**good, "diverse": ["a doctor", "a doctor"]})
    with pytest.raises(ValueError, match="malformed prompt"):
        PromptSets(**{**good, "stereotypes": ["a  doctor"]})
    with pytest.raises(ValueError, match="not queries"):
        PromptSets(**{**good, "paraphrases": {"a photo of a wizard": ["a wizard"]}})
    with pytest.raises(ValueError, match=">= 2 classes"):
        PromptSets(**{**good, "bias": {"gender": {"male": ["a man"]}}})
