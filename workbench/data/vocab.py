"""The SynthSocial vocabulary: class names of every label and the words captions use for them.

Everything here is plain data. Class names double as caption words, so each one is a real English
word that the CLIP BPE tokenizer encodes as a single token (checked in the tests). The order of a
tuple is the label's integer coding: ``OCCUPATIONS[3] == "firefighter"`` means label 3.
"""

from __future__ import annotations

GENDERS: tuple[str, ...] = ("male", "female")
ETHNICITIES: tuple[str, ...] = ("white", "black", "asian", "indian")
AGES: tuple[str, ...] = ("young", "old")
OCCUPATIONS: tuple[str, ...] = (
    "doctor",
    "nurse",
    "chef",
    "firefighter",
    "engineer",
    "teacher",
    "farmer",
    "pilot",
)
SCENES: tuple[str, ...] = ("hospital", "kitchen", "street", "field", "classroom", "airport")

#: label key -> class names; the label int indexes the tuple (shared data contract).
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "gender": GENDERS,
    "ethnicity": ETHNICITIES,
    "age": AGES,
    "occupation": OCCUPATIONS,
    "scene": SCENES,
}

#: The scene each occupation is usually seen in (drives the occupation <-> scene correlation).
HOME_SCENE: dict[str, str] = {
    "doctor": "hospital",
    "nurse": "hospital",
    "chef": "kitchen",
    "firefighter": "street",
    "engineer": "street",
    "teacher": "classroom",
    "farmer": "field",
    "pilot": "airport",
}

# Caption words per class. Nouns ("a woman") and adjectives ("a female doctor") are kept apart
# because templates need one or the other to read as English.
GENDER_NOUNS: dict[str, tuple[str, ...]] = {"male": ("man",), "female": ("woman",)}
GENDER_ADJECTIVES: dict[str, tuple[str, ...]] = {"male": ("male",), "female": ("female",)}
AGE_WORDS: dict[str, tuple[str, ...]] = {"young": ("young",), "old": ("old", "elderly")}
ETHNICITY_WORDS: dict[str, tuple[str, ...]] = {e: (e,) for e in ETHNICITIES}
SCENE_PHRASES: dict[str, tuple[str, ...]] = {
    "hospital": ("in a hospital",),
    "kitchen": ("in a kitchen",),
    "street": ("on a street", "in the city"),
    "field": ("in a field", "on a farm"),
    "classroom": ("in a classroom", "at school"),
    "airport": ("at an airport",),
}
#: What each occupation is doing, grounded in the tool glyph the renderer draws in its hand.
ACTIVITIES: dict[str, tuple[str, ...]] = {
    "doctor": ("holding a clipboard",),
    "nurse": ("holding a syringe",),
    "chef": ("holding a frying pan", "cooking"),
    "firefighter": ("holding an axe",),
    "engineer": ("holding a wrench",),
    "teacher": ("holding a book", "teaching"),
    "farmer": ("holding a pitchfork",),
    "pilot": ("carrying a suitcase",),
}
#: Adjectives that carry no label information: captions draw them uniformly at random.
ADJECTIVES: tuple[str, ...] = (
    "friendly",
    "smiling",
    "serious",
    "confident",
    "tired",
    "busy",
    "calm",
    "cheerful",
)

#: Every class name of every label key (used by tokenizer checks).
ALL_CLASS_WORDS: tuple[str, ...] = tuple(w for names in LABEL_NAMES.values() for w in names)


def _check_consistency() -> None:
    """Fail at import if the tables above disagree (cheap; protects later edits)."""
    for table, keys, name in (
        (HOME_SCENE, OCCUPATIONS, "HOME_SCENE"),
        (ACTIVITIES, OCCUPATIONS, "ACTIVITIES"),
        (SCENE_PHRASES, SCENES, "SCENE_PHRASES"),
        (AGE_WORDS, AGES, "AGE_WORDS"),
        (GENDER_NOUNS, GENDERS, "GENDER_NOUNS"),
        (GENDER_ADJECTIVES, GENDERS, "GENDER_ADJECTIVES"),
        (ETHNICITY_WORDS, ETHNICITIES, "ETHNICITY_WORDS"),
    ):
        if tuple(table) != tuple(keys):
            raise AssertionError(f"vocab.{name} keys {tuple(table)} must match {tuple(keys)} in order")
    unknown = set(HOME_SCENE.values()) - set(SCENES)
    if unknown:
        raise AssertionError(f"vocab.HOME_SCENE names unknown scenes {sorted(unknown)}")


_check_consistency()
