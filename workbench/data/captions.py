"""Caption templates for SynthSocial images, filled from an image's labels.

A template names some attributes of the image ("a {age} {occupation}"); each field has one or more
word variants per class (``vocab``), so a template has several fillings. Training draws one template
per image per step with the template weights; the weights are chosen so the occupation is named in
most captions and every other attribute (gender, ethnicity, age, scene) in a fair share of them:
a CLIP only learns to tell apart what its captions name (``mention_rates`` gives the shares).
"""

from __future__ import annotations

import itertools
import re
import string
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from . import vocab

#: Context length of the small CLIP trained on SynthSocial; every caption fits (tested).
MAX_CAPTION_TOKENS = 16


@dataclass(frozen=True)
class CaptionTemplate:
    """A caption pattern: ``text`` with ``{field}`` slots and its default sampling ``weight``."""

    name: str
    text: str
    weight: float

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.text) if f)


TEMPLATES: tuple[CaptionTemplate, ...] = (
    CaptionTemplate("photo", "a photo of a {occupation}", 0.12),
    CaptionTemplate("plain", "a {occupation}", 0.05),
    CaptionTemplate("adjective", "a {adjective} {occupation}", 0.05),
    CaptionTemplate("activity", "a {occupation} {activity}", 0.07),
    CaptionTemplate("gender", "a {gender} {occupation}", 0.10),
    CaptionTemplate("gender_photo", "a photo of a {gender_adj} {occupation}", 0.05),
    CaptionTemplate("gender_working", "a {gender_noun} working as a {occupation}", 0.04),
    CaptionTemplate("scene", "a {occupation} {scene}", 0.10),
    CaptionTemplate("age", "a {age} {occupation}", 0.08),
    CaptionTemplate("ethnicity", "a {ethnicity} {occupation}", 0.07),
    CaptionTemplate("full", "a {age} {ethnicity} {gender_adj} {occupation} {scene}", 0.08),
    CaptionTemplate("ethnicity_gender_photo", "a photo of a {ethnicity} {gender_adj} {occupation}", 0.05),
    CaptionTemplate("ethnicity_gender", "a photo of a {ethnicity} {gender_noun}", 0.06),
    CaptionTemplate("age_gender_scene", "a {age} {gender_noun} {scene}", 0.04),
    CaptionTemplate("person", "a {adjective} person {scene}", 0.02),
)
TEMPLATE_NAMES: tuple[str, ...] = tuple(t.name for t in TEMPLATES)

#: Which label attribute each field names (adjectives name none).
FIELD_ATTRIBUTE: dict[str, str | None] = {
    "occupation": "occupation", "activity": "occupation", "gender": "gender", "gender_noun": "gender",
    "gender_adj": "gender", "ethnicity": "ethnicity", "age": "age", "scene": "scene", "adjective": None,
}
_FIELDS: tuple[str, ...] = tuple(FIELD_ATTRIBUTE)

# "a" before a vowel sound becomes "an"; these words break the spelling rule.
_VOWEL_LETTER_CONSONANT_SOUND = ("uni", "use", "usu", "eu", "one", "once", "ubiq")
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")
_ARTICLE = re.compile(r"\b([Aa])n? (\w[\w-]*)")


def with_articles(text: str) -> str:
    """Fix indefinite articles: "a engineer" -> "an engineer", "an doctor" -> "a doctor"."""

    def fix(m: re.Match) -> str:
        word = m.group(2).lower()
        vowel = word[0] in "aeiou" and not word.startswith(_VOWEL_LETTER_CONSONANT_SOUND)
        vowel = vowel or word.startswith(_SILENT_H)
        return f"{m.group(1)}{'n' if vowel else ''} {m.group(2)}"

    return _ARTICLE.sub(fix, text)


def field_words(codes: Mapping[str, int]) -> dict[str, tuple[str, ...]]:
    """Word variants of every caption field for one image's label codes (keys as ``vocab.LABEL_NAMES``)."""
    occupation = vocab.OCCUPATIONS[codes["occupation"]]
    gender = vocab.GENDERS[codes["gender"]]
    return {
        "occupation": (occupation,),
        "activity": vocab.ACTIVITIES[occupation],
        "gender": vocab.GENDER_NOUNS[gender] + vocab.GENDER_ADJECTIVES[gender],
        "gender_noun": vocab.GENDER_NOUNS[gender],
        "gender_adj": vocab.GENDER_ADJECTIVES[gender],
        "ethnicity": vocab.ETHNICITY_WORDS[vocab.ETHNICITIES[codes["ethnicity"]]],
        "age": vocab.AGE_WORDS[vocab.AGES[codes["age"]]],
        "scene": vocab.SCENE_PHRASES[vocab.SCENES[codes["scene"]]],
        "adjective": vocab.ADJECTIVES,
    }


def all_captions(codes: Mapping[str, int]) -> list[str]:
    """Every filling of every template for one image, in template order, without duplicates."""
    words = field_words(codes)
    out: dict[str, None] = {}
    for template in TEMPLATES:
        fields = template.fields
        for combo in itertools.product(*(words[f] for f in fields)):
            out[with_articles(template.text.format(**dict(zip(fields, combo))))] = None
    return list(out)


def template_weights(overrides: Mapping[str, float] | None = None) -> np.ndarray:
    """Normalised sampling weights [n_templates], defaults replaced by ``overrides`` (name -> weight)."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(TEMPLATE_NAMES)
    if unknown:
        raise ValueError(f"unknown caption template names {sorted(unknown)}; known: {list(TEMPLATE_NAMES)}")
    w = np.array([overrides.get(t.name, t.weight) for t in TEMPLATES], dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        given = dict(zip(TEMPLATE_NAMES, w.tolist()))
        raise ValueError(f"caption template weights must be finite, >= 0 and not all 0; got {given}")
    return w / w.sum()


def mention_rates(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Share of sampled captions naming each attribute (occupation, gender, ethnicity, age, scene)."""
    w = template_weights(overrides)
    rates = dict.fromkeys(("occupation", "gender", "ethnicity", "age", "scene"), 0.0)
    for weight, template in zip(w, TEMPLATES):
        for attribute in {FIELD_ATTRIBUTE[f] for f in template.fields} - {None}:
            rates[attribute] += float(weight)
    return rates


def sample_captions(
    codes: Mapping[str, Sequence[int] | np.ndarray],
    rng: np.random.Generator,
    weights: Mapping[str, float] | None = None,
) -> list[str]:
    """One caption per image: template drawn with ``weights``, each field's variant uniformly.

    Args:
        codes: label codes [n] per key ``occupation``, ``gender``, ``ethnicity``, ``age``, ``scene``.
        rng: numpy Generator; the draws are vectorised (two calls for the whole batch).
        weights: template-name -> weight overrides (see ``TEMPLATES``).

    Returns:
        n caption strings.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    arrays = {k: np.asarray(codes[k]).reshape(-1) for k in ("occupation", "gender", "ethnicity", "age", "scene")}
    n = len(arrays["occupation"])
    which = rng.choice(len(TEMPLATES), size=n, p=template_weights(weights))
    pick = rng.random((n, len(_FIELDS)))
    out = []
    for i in range(n):
        words = field_words({k: int(v[i]) for k, v in arrays.items()})
        template = TEMPLATES[which[i]]
        filled = {f: words[f][int(pick[i, _FIELDS.index(f)] * len(words[f]))] for f in template.fields}
        out.append(with_articles(template.text.format(**filled)))
    return out
