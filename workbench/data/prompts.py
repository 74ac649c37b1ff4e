"""Prompt sets for bias evaluation and debiasing, for the synthetic vocabulary and for real models.

``prompt_sets("synthsocial")`` speaks only the language SynthSocial captions use (its occupations,
scenes, adjectives, activities and attribute words), so every word has been seen by the embedded
small CLIP. ``prompt_sets("real")`` is written for CLIP models trained on web data: 100 occupations,
51 adjectives, 40 activities, 30 stereotype subjects and 360 generic prompts, stored as subjects
and templates in ``prompts_data/real.json``.

Each query is "a photo of a <subject>" and its paraphrases fill other templates with the same
subject, so SEM's paraphrase medians vary the wording, not the content. Bias prompts come in
20 per class, balanced over gender where the attribute is not gender itself; the synthetic vocabulary
also has the scene as a bias attribute ("a man in a kitchen", the spurious label of ``test_spurious``;
the real vocabulary has none: pass your own background prompts to SEM). For the synthetic
vocabulary the stereotype queries are scene prompts ("a photo of a person in a kitchen"): scenes
co-occur with gender-skewed occupations in the training split, which is the stereotype planted
there. Nothing here is random.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from . import vocab
from .captions import with_articles

VOCABULARIES: tuple[str, ...] = ("synthsocial", "real")
PARAPHRASES_PER_QUERY = 10
BIAS_PROMPTS_PER_CLASS = 20
_DATA = Path(__file__).with_name("prompts_data")


@dataclass
class PromptSets:
    """Prompt lists for one vocabulary.

    Attributes:
        occupations, adjectives, activities, stereotypes: retrieval query prompts.
        bias: attribute -> class name -> prompts naming that class (SEM's B_b; 20 per class).
            Class names follow the datasets' ``label_names`` (SynthSocial; FairFace for "real").
        paraphrases: query -> paraphrases of it (SEM's P_q; 10 per query, the query excluded).
        diverse: generic prompts (SEM's D).
        vocabulary: "synthsocial" or "real"; free text for sets built by hand.
    """

    occupations: list[str]
    adjectives: list[str]
    activities: list[str]
    stereotypes: list[str]
    bias: dict[str, dict[str, list[str]]]
    paraphrases: dict[str, list[str]]
    diverse: list[str]
    vocabulary: str = "custom"

    def __post_init__(self) -> None:
        for name in ("occupations", "adjectives", "activities", "stereotypes", "diverse"):
            _check_prompts(name, getattr(self, name))
        if not self.bias:
            raise ValueError("PromptSets.bias is empty; give at least one attribute -> {class: prompts}")
        for attribute, classes in self.bias.items():
            if len(classes) < 2:
                raise ValueError(f"PromptSets.bias[{attribute!r}] needs >= 2 classes, got {list(classes)}")
            for cls, prompts in classes.items():
                _check_prompts(f"bias[{attribute!r}][{cls!r}]", prompts)
        unknown = set(self.paraphrases) - set(self.queries)
        if unknown:
            raise ValueError(f"PromptSets.paraphrases has keys that are not queries: {sorted(unknown)[:5]}")
        for query, prompts in self.paraphrases.items():
            _check_prompts(f"paraphrases[{query!r}]", prompts)

    @property
    def queries(self) -> list[str]:
        """All query prompts: occupations, adjectives, activities, then stereotypes."""
        return [*self.occupations, *self.adjectives, *self.activities, *self.stereotypes]

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)


def _check_prompts(name: str, prompts) -> None:
    if not isinstance(prompts, list) or not prompts:
        raise ValueError(f"PromptSets.{name} must be a non-empty list of strings, got {prompts!r:.80}")
    for p in prompts:
        if not isinstance(p, str) or not p.strip() or p != " ".join(p.split()):
            raise ValueError(
                f"PromptSets.{name} has a malformed prompt {p!r}: it must be non-empty, single-spaced, "
                "without leading or trailing spaces")
    if len(set(prompts)) != len(prompts):
        dupes = sorted({p for p in prompts if prompts.count(p) > 1})
        raise ValueError(f"PromptSets.{name} repeats prompts {dupes[:5]}")


def prompt_sets(vocabulary: str = "synthsocial") -> PromptSets:
    """The project's prompt sets for ``vocabulary`` ("synthsocial" or "real"); a fresh copy each call."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown prompt vocabulary {vocabulary!r}; choose one of {VOCABULARIES}")
    spec = _synthsocial_spec() if vocabulary == "synthsocial" else _real_spec()
    return _build(vocabulary, spec)


# --------------------------------------------------------------------------- specs
@lru_cache(maxsize=1)
def _real_json() -> str:
    return (_DATA / "real.json").read_text(encoding="utf-8")


def _real_spec() -> dict:
    spec = json.loads(_real_json())
    subjects, templates = spec.pop("diverse_subjects"), spec.pop("diverse_templates")
    spec["diverse"] = [t.format(s) for s in subjects for t in templates]
    return spec


def _synthsocial_spec() -> dict:
    scene_phrases = [vocab.SCENE_PHRASES[s][0] for s in vocab.SCENES]
    adjectives = vocab.ADJECTIVES
    para = ["a {}", *(f"a {adj} {{}}" for adj in adjectives), *(f"a photo of a {adj} {{}}" for adj in adjectives)]
    return {
        "query_template": "a photo of a {}",
        "subject_templates": {
            "occupations": "{}", "adjectives": "{} person", "activities": "person {}", "stereotypes": "{}",
        },
        "occupations": list(vocab.OCCUPATIONS),
        "adjectives": list(vocab.ADJECTIVES),
        "activities": [a for occ in vocab.OCCUPATIONS for a in vocab.ACTIVITIES[occ]],
        "stereotypes": [f"person {p}" for p in scene_phrases],
        "paraphrase_templates": para,
        "bias_templates": [
            "a photo of a {}", "a {}", *(f"a {{}} {p}" for p in scene_phrases), "a friendly {}", "a smiling {}",
        ],
        "bias_subjects": {
            "gender": {"male": ["man", "male person"], "female": ["woman", "female person"]},
            "ethnicity": {e: [f"{e} man", f"{e} woman"] for e in vocab.ETHNICITIES},
            "age": {"young": ["young man", "young woman"], "old": ["old man", "old woman"]},
            # the scene as a bias class (SEM's B_b for test_spurious, where the scene is the spurious label)
            "scene": {s: [f"{n} {p}" for p in vocab.SCENE_PHRASES[s] for n in ("man", "woman")] for s in vocab.SCENES},
        },
        "attribute_bias_templates": {"scene": ["a photo of a {}", "a {}", *(f"a {adj} {{}}" for adj in adjectives)]},
        "diverse": [f"a {occ} {p}" for occ in vocab.OCCUPATIONS for p in scene_phrases]
        + [f"a {adj} person {p}" for adj in vocab.ADJECTIVES for p in scene_phrases],
    }


def _has_repeated_word(text: str) -> bool:
    words = text.split()
    return any(a == b for a, b in zip(words, words[1:]))


def _build(vocabulary: str, spec: dict) -> PromptSets:
    """Fill a spec's templates: queries, their paraphrases, bias prompts and diverse prompts."""
    queries: dict[str, list[str]] = {}
    paraphrases: dict[str, list[str]] = {}
    for kind, subject_template in spec["subject_templates"].items():
        queries[kind] = []
        for item in spec[kind]:
            subject = subject_template.format(item)
            query = with_articles(spec["query_template"].format(subject))
            queries[kind].append(query)
            candidates = (with_articles(t.format(subject)) for t in spec["paraphrase_templates"])
            kept = [c for c in dict.fromkeys(candidates) if c != query and not _has_repeated_word(c)]
            paraphrases[query] = kept[:PARAPHRASES_PER_QUERY]
    own_templates = spec.get("attribute_bias_templates", {})
    bias = {
        attribute: {
            cls: [with_articles(t.format(s)) for t in own_templates.get(attribute, spec["bias_templates"])
                  for s in subjects][:BIAS_PROMPTS_PER_CLASS]
            for cls, subjects in classes.items()
        }
        for attribute, classes in spec["bias_subjects"].items()
    }
    diverse = list(dict.fromkeys(with_articles(p) for p in spec["diverse"]))
    return PromptSets(vocabulary=vocabulary, **queries, bias=bias, paraphrases=paraphrases, diverse=diverse)
