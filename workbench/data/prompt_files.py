"""Loaders for the official prompt and word-list files of So-B-IT, SEM and DebiasLens, given a path.

Each loader accepts the shape the authors ship plus the obvious simpler shapes, validates what it reads,
and on a mismatch raises :class:`PromptFileError` listing the accepted shapes. Nothing is downloaded.

Shapes seen in the official repositories (read while writing this module):

- So-B-IT (Hamidieh et al., AIES 2024): ``So-B-IT_taxonomy.json`` maps each of 10 bias categories to its
  words; ``So-B-IT_categories.json`` maps each word to its part of speech (``"ADJECTIVE"``/``"NOUN"``),
  which decides the prompt ("a photo of a/an {word} person" vs "a photo of a/an {word}").
- SEM (Guimard et al., CVPR Findings 2026, github.com/mardgui/SEM): the diverse set is a Python list in
  ``sem_data/diverse_prompts.py``; per-task files are ``query_templates/*_query_templates.json``
  (``{query class: {"query": str, "extra prompts": {method: {"bias prompts": {class: [...]},
  "extra class prompts": [[...]]}}}}``) and ``prompt_templates/*_prompt_templates.json``
  (``{"extra prompts": {method: {...}}}`` for zero-shot classification).
- DebiasLens (An et al., CVPR 2026, github.com/namin-an/DeBiasLens): ``prompts/prompt_templates_*.csv``
  with columns ``template,concept``; every template (``"A {} person"``) is filled with every concept.
"""
from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import DatasetFormatError, read_text_file

__all__ = [
    "PromptFileError",
    "SoBITTaxonomy",
    "load_sobit",
    "load_sem_prompts",
    "load_debiaslens_prompts",
]

SOBIT_WORD_TYPES = ("ADJECTIVE", "NOUN")

SOBIT_SHAPES = """\
accepted So-B-IT taxonomy shapes:
  {"appearance": ["attractive", ...], "occupation": ["CEO", ...], ...}      (official So-B-IT_taxonomy.json)
  [{"category": "appearance", "words": ["attractive", ...]}, ...]            ("name" also accepted for "category")
accepted categories files:
  {"attractive": "ADJECTIVE", "CEO": "NOUN", ...}                          (official So-B-IT_categories.json)
  ["appearance", "occupation", ...]  or a .txt with one category per line   (category order / subset)"""

SEM_SHAPES = """\
accepted SEM prompt files:
  .txt: one prompt per line                                    -> the diverse set
  .py:  diverse_prompts = ["...", ...]  (parsed, never run)    -> the diverse set
        (the official sem_data/diverse_prompts.py)
  .json list of strings                                        -> the diverse set
  .json {"diverse": [...], "paraphrases": {query: [...]}, "bias": {class: [...]}}   (any subset of the keys)
  .json {query class: {"query": str, "extra prompts": {"sem": {"bias prompts": {class: [...]},
        "extra class prompts": [[...]]}}}}                     (official query_templates/*.json)
  .json {"extra prompts": {"sem": {...}}}                       (official prompt_templates/*.json)"""

DEBIASLENS_SHAPES = """\
accepted DebiasLens prompt files:
  .csv with columns template,concept (official prompts/prompt_templates_*.csv) -> {concept: [each template filled]}
  .txt: one prompt per line                                                    -> {file stem: [prompts]}
  .json {category: [prompts]}  or a JSON list of prompts                       -> as is / {file stem: [prompts]}"""


class PromptFileError(DatasetFormatError):
    """A prompt or word-list file does not have one of the accepted shapes."""


def _fail(path: Path, problem: str, shapes: str) -> PromptFileError:
    return PromptFileError(f"{path}: {problem}\n{shapes}")


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    return path


def _read_text(path: Path, kind: str) -> str:
    """UTF-8 text, a byte-order mark dropped; binary content raises naming the file (base.read_text_file)."""
    try:
        return read_text_file(path, "prompt file", kind)
    except DatasetFormatError as error:
        raise PromptFileError(str(error)) from None


def _read_json(path: Path, shapes: str) -> Any:
    try:
        return json.loads(_read_text(path, "JSON"))
    except json.JSONDecodeError as error:
        raise _fail(path, f"not valid JSON ({error})", shapes) from error


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines, stripped; lines starting with '#' are comments."""
    lines = (line.strip() for line in _read_text(path, "text").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _string_list(value: Any, path: Path, what: str, shapes: str) -> list[str]:
    """``value`` as a non-empty list of non-empty strings (stripped), else a :class:`PromptFileError`."""
    if not isinstance(value, list) or not value:
        raise _fail(path, f"{what} must be a non-empty list of strings, got {type(value).__name__}", shapes)
    bad = [item for item in value if not isinstance(item, str) or not item.strip()]
    if bad:
        raise _fail(path, f"{what} holds non-string or empty entries, e.g. {bad[:3]!r}", shapes)
    return [item.strip() for item in value]


def _string_lists(value: Any, path: Path, what: str, shapes: str) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"{what} must map names to lists of strings, got {type(value).__name__}", shapes)
    return {str(key): _string_list(items, path, f"{what}[{key!r}]", shapes) for key, items in value.items()}


# --------------------------------------------------------------------------- So-B-IT


class SoBITTaxonomy(dict):
    """``{category: [words]}`` (a plain ``dict``) plus each word's part of speech when it was loaded.

    Attributes:
        word_types: ``{word: "ADJECTIVE" | "NOUN"}`` from the official categories file, else empty.
    """

    def __init__(self, categories: Mapping[str, list[str]], word_types: Mapping[str, str] | None = None) -> None:
        super().__init__(categories)
        self.word_types: dict[str, str] = dict(word_types or {})

    def prompts(
        self,
        adjective_template: str = "a photo of a/an {} person",
        noun_template: str = "a photo of a/an {}",
    ) -> dict[str, list[str]]:
        """``{category: [prompt per word]}`` using each word's part of speech (So-B-IT's templates by default)."""
        if not self.word_types:
            raise ValueError(
                "no word types loaded: pass the So-B-IT categories file (word -> ADJECTIVE/NOUN) to load_sobit"
            )
        templates = {"ADJECTIVE": adjective_template, "NOUN": noun_template}
        return {
            category: [templates[self.word_types[word]].format(word) for word in words]
            for category, words in self.items()
        }


def load_sobit(
    taxonomy_json: str | os.PathLike, categories_file: str | os.PathLike | None = None
) -> SoBITTaxonomy:
    """Load the So-B-IT taxonomy: ``{category: [words]}`` in file order.

    Args:
        taxonomy_json: ``{category: [words]}`` (official) or ``[{"category": ..., "words": [...]}, ...]``.
        categories_file: optional. Either the official ``So-B-IT_categories.json`` (``{word: "ADJECTIVE" |
            "NOUN"}``; every taxonomy word must have an entry, stored in ``.word_types``), or a list of
            category names (JSON list or one per line in a .txt) that selects and orders the categories.
    Returns:
        :class:`SoBITTaxonomy`, a ``dict[str, list[str]]``.
    """
    path = _existing(taxonomy_json)
    data = _read_json(path, SOBIT_SHAPES)
    if isinstance(data, Mapping):
        taxonomy = _string_lists(data, path, "taxonomy", SOBIT_SHAPES)
    elif isinstance(data, list):
        taxonomy = _sobit_from_objects(data, path)
    else:
        raise _fail(path, f"top level is a {type(data).__name__}", SOBIT_SHAPES)
    if not taxonomy:
        raise _fail(path, "no categories", SOBIT_SHAPES)
    if categories_file is None:
        return SoBITTaxonomy(taxonomy)

    categories_path = _existing(categories_file)
    if categories_path.suffix.lower() == ".json":
        categories = _read_json(categories_path, SOBIT_SHAPES)
    else:
        categories = _read_lines(categories_path)
    if isinstance(categories, Mapping):
        return SoBITTaxonomy(taxonomy, _sobit_word_types(categories, taxonomy, categories_path))
    order = _string_list(categories, categories_path, "category list", SOBIT_SHAPES)
    unknown = [name for name in order if name not in taxonomy]
    if unknown:
        problem = f"categories {unknown} are not in the taxonomy {list(taxonomy)}"
        raise _fail(categories_path, problem, SOBIT_SHAPES)
    return SoBITTaxonomy({name: taxonomy[name] for name in order})


def _sobit_from_objects(items: list[Any], path: Path) -> dict[str, list[str]]:
    taxonomy: dict[str, list[str]] = {}
    for position, item in enumerate(items):
        name = item.get("category", item.get("name")) if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name.strip():
            raise _fail(path, f"entry {position} has no \"category\" (or \"name\") string", SOBIT_SHAPES)
        if name in taxonomy:
            raise _fail(path, f"category {name!r} appears twice", SOBIT_SHAPES)
        taxonomy[name.strip()] = _string_list(item.get("words"), path, f"words of {name!r}", SOBIT_SHAPES)
    return taxonomy


def _sobit_word_types(
    word_types: Mapping[str, Any], taxonomy: Mapping[str, list[str]], path: Path
) -> dict[str, str]:
    types = {str(word): str(kind).upper() for word, kind in word_types.items()}
    bad = {word: kind for word, kind in types.items() if kind not in SOBIT_WORD_TYPES}
    if bad:
        examples = dict(list(bad.items())[:3])
        raise _fail(path, f"word types must be {SOBIT_WORD_TYPES}, got e.g. {examples}", SOBIT_SHAPES)
    untyped = sorted({word for words in taxonomy.values() for word in words if word not in types})
    if untyped:
        raise _fail(path, f"{len(untyped)} taxonomy words have no word type, e.g. {untyped[:5]}", SOBIT_SHAPES)
    return types


# --------------------------------------------------------------------------- SEM


def load_sem_prompts(
    path: str | os.PathLike,
    *,
    diverse: str | os.PathLike | None = None,
    method: str = "sem",
) -> dict[str, Any]:
    """Load SEM reference prompt sets.

    Args:
        path: any shape in ``SEM_SHAPES`` (see the module docstring for the official ones).
        diverse: optional second file (.txt / .py / JSON list) with the diverse set D; it replaces any
            diverse set in ``path`` (the official repository keeps D apart from the per-task files).
        method: which entry of the official files' ``"extra prompts"`` to read (``"sem"`` or ``"bendsem"``).
    Returns:
        ``{"diverse": [str], "paraphrases": {query prompt: [str]}, "bias": {bias class: [str]},
        "queries": {query class: query prompt}}``. ``paraphrases`` is keyed by the query prompt itself
        (the official files list the query as its own first paraphrase); ``queries`` is filled from
        query-template files only. Keys absent from the file hold empty containers.
    """
    source = _existing(path)
    result = _sem_sets(source, method)
    if diverse is not None:
        result["diverse"] = _sem_sets(_existing(diverse), method)["diverse"]
        if not result["diverse"]:
            raise _fail(Path(diverse), "holds no diverse prompts", SEM_SHAPES)
    if len(result["bias"]) == 1:
        problem = f"SEM needs bias prompts for at least two classes, got only {list(result['bias'])}"
        raise _fail(source, problem, SEM_SHAPES)
    return result


def _sem_sets(path: Path, method: str) -> dict[str, Any]:
    result: dict[str, Any] = {"diverse": [], "paraphrases": {}, "bias": {}, "queries": {}}
    suffix = path.suffix.lower()
    if suffix == ".txt":
        result["diverse"] = _string_list(_read_lines(path), path, "prompt list", SEM_SHAPES)
        return result
    if suffix == ".py":
        result["diverse"] = _python_list_literal(path)
        return result
    data = _read_json(path, SEM_SHAPES)
    if isinstance(data, list):
        result["diverse"] = _string_list(data, path, "prompt list", SEM_SHAPES)
    elif isinstance(data, Mapping) and data.keys() & {"diverse", "paraphrases", "bias"}:
        unknown = sorted(set(data) - {"diverse", "paraphrases", "bias"})
        if unknown:
            raise _fail(path, f"unexpected keys {unknown}", SEM_SHAPES)
        if "diverse" in data:
            result["diverse"] = _string_list(data["diverse"], path, "diverse", SEM_SHAPES)
        result["paraphrases"] = _string_lists(data.get("paraphrases", {}), path, "paraphrases", SEM_SHAPES)
        result["bias"] = _string_lists(data.get("bias", {}), path, "bias", SEM_SHAPES)
    elif isinstance(data, Mapping) and set(data) == {"extra prompts"}:
        entry = _sem_method_entry(data, path, method, "the file")
        result["bias"] = _string_lists(entry.get("bias prompts", {}), path, "bias prompts", SEM_SHAPES)
        result["paraphrases"] = _paraphrases_by_query(entry.get("extra class prompts", []), path)
    elif isinstance(data, Mapping) and data and all(_is_query_block(block) for block in data.values()):
        _sem_query_templates(data, path, method, result)
    else:
        raise _fail(path, "does not match any accepted shape", SEM_SHAPES)
    return result


def _is_query_block(block: Any) -> bool:
    return isinstance(block, Mapping) and "query" in block


def _sem_method_entry(block: Mapping[str, Any], path: Path, method: str, where: str) -> Mapping[str, Any]:
    extra = block.get("extra prompts")
    if not isinstance(extra, Mapping) or not isinstance(extra.get(method), Mapping):
        available = sorted(extra) if isinstance(extra, Mapping) else []
        problem = f"{where} has no \"extra prompts\" entry for method {method!r}; available: {available}"
        raise _fail(path, problem, SEM_SHAPES)
    return extra[method]


def _paraphrases_by_query(lists: Any, path: Path) -> dict[str, list[str]]:
    """Official ``"extra class prompts"`` (a list per class, query first) -> ``{query: paraphrases}``."""
    if not isinstance(lists, list):
        raise _fail(path, "\"extra class prompts\" must be a list of prompt lists", SEM_SHAPES)
    paraphrases: dict[str, list[str]] = {}
    for position, items in enumerate(lists):
        prompts = _string_list(items, path, f"extra class prompts[{position}]", SEM_SHAPES)
        if prompts[0] in paraphrases:
            raise _fail(path, f"two paraphrase lists start with the same query {prompts[0]!r}", SEM_SHAPES)
        paraphrases[prompts[0]] = prompts
    return paraphrases


def _sem_query_templates(data: Mapping[str, Any], path: Path, method: str, result: dict[str, Any]) -> None:
    for query_class, block in data.items():
        if not isinstance(block["query"], str) or not block["query"].strip():
            raise _fail(path, f"query of {query_class!r} must be a non-empty string", SEM_SHAPES)
        query = block["query"].strip()
        if query in result["queries"].values():
            raise _fail(path, f"query {query!r} appears twice", SEM_SHAPES)
        entry = _sem_method_entry(block, path, method, f"query {query_class!r}")
        result["queries"][query_class] = query
        lists = _paraphrases_by_query(entry.get("extra class prompts", []), path).values()
        paraphrases = [prompt for prompts in lists for prompt in prompts]
        if paraphrases:
            result["paraphrases"][query] = paraphrases
        bias = _string_lists(entry.get("bias prompts", {}), path, f"bias prompts of {query_class!r}", SEM_SHAPES)
        # The official files repeat one bias set per query; one returned set must fit them all.
        if result["bias"] and bias and bias != result["bias"]:
            problem = f"query {query_class!r} has other bias prompts than earlier queries; split the file per bias set"
            raise _fail(path, problem, SEM_SHAPES)
        result["bias"] = result["bias"] or bias


def _python_list_literal(path: Path) -> list[str]:
    """The list literal assigned in a .py file (e.g. ``diverse_prompts = [...]``), parsed without running it."""
    try:
        tree = ast.parse(_read_text(path, "Python"), filename=str(path))
    except SyntaxError as error:
        raise _fail(path, f"not valid Python ({error})", SEM_SHAPES) from error
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as error:
                raise _fail(path, f"the list is not a plain literal ({error})", SEM_SHAPES) from error
            return _string_list(value, path, "prompt list", SEM_SHAPES)
    raise _fail(path, "no `name = [...]` list assignment found", SEM_SHAPES)


# --------------------------------------------------------------------------- DebiasLens


def load_debiaslens_prompts(path: str | os.PathLike) -> dict[str, list[str]]:
    """Load DebiasLens prompts as ``{group: [prompts]}``.

    The official CSV (``template,concept``; the template column is shorter than the concept column)
    gives ``{concept: [template.format(concept) for each template]}``, the same prompts DebiasLens
    evaluates (MaxSkew averaged over all of them). A .txt (one prompt per line) or a JSON list gives
    ``{file stem: prompts}``; a JSON object ``{category: [prompts]}`` is returned as is.
    """
    path = _existing(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _debiaslens_csv(path)
    if suffix == ".txt":
        return {path.stem: _string_list(_read_lines(path), path, "prompt list", DEBIASLENS_SHAPES)}
    data = _read_json(path, DEBIASLENS_SHAPES)
    if isinstance(data, list):
        return {path.stem: _string_list(data, path, "prompt list", DEBIASLENS_SHAPES)}
    if isinstance(data, Mapping) and data:
        return _string_lists(data, path, "prompts", DEBIASLENS_SHAPES)
    raise _fail(path, "does not match any accepted shape", DEBIASLENS_SHAPES)


def _debiaslens_csv(path: Path) -> dict[str, list[str]]:
    import csv
    import io

    with io.StringIO(_read_text(path, "CSV"), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        if sorted(columns) != ["concept", "template"]:
            raise _fail(path, f"expected columns template,concept; found {columns}", DEBIASLENS_SHAPES)
        rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    templates = [row["template"] for row in rows if row["template"]]
    concepts = [row["concept"] for row in rows if row["concept"]]
    if not templates or not concepts:
        problem = f"needs at least one template and one concept, found {len(templates)} and {len(concepts)}"
        raise _fail(path, problem, DEBIASLENS_SHAPES)
    bad = [template for template in templates if template.count("{}") != 1]
    if bad:
        raise _fail(path, f"each template needs exactly one '{{}}' placeholder, e.g. {bad[:3]}", DEBIASLENS_SHAPES)
    repeated = sorted({concept for concept in concepts if concepts.count(concept) > 1})
    if repeated:
        raise _fail(path, f"concepts listed twice: {repeated}", DEBIASLENS_SHAPES)
    # replace, not str.format: a stray brace elsewhere in a template must not raise
    return {concept: [template.replace("{}", concept) for template in templates] for concept in concepts}

