"""Evaluation: embed a gallery, then report zero-shot accuracy and retrieval fairness for any prompts; evaluate
edited variants of a model side by side with intervals.

    emb = embed_images(model, images)                       # [n, d_embed], L2-normalised
    report = retrieval_report(model, emb, labels,
                              queries={o: f"a photo of a {o}" for o in OCCUPATIONS},
                              target="occupation", groups=("gender", "ethnicity"))
    # {"zero_shot_accuracy": ..., "gender_ndkl": ..., "gender_maxskew_at_100": ..., "ethnicity_ndkl": ...}

Both run under whatever hooks are active on the model, so they measure an intervened model as well
(`with intervene(model, edits): ...`). Metric keys are snake_case and stable across the package
(docs/metrics.md).

    result = evaluate_variants(model, SynthSocial("test_balanced"), {"zero": iv, "proto": iv2})
    result.wide()                                   # one row per variant (baseline first), one column per metric
    result.beyond_noise("zero", "baseline", "gender_ndkl")   # paired bootstrap over queries

`evaluate_variants` adds utility (mAP, NDCG), NDKL per group and for their intersection, word-list entropy,
caption Recall@K and Bias@K, each with a 95 % bootstrap interval over queries, and evaluates variants confined to
the last block's pooled row from one cached pass (`workbench.models.cls_tail.CLSTail`); docs/metrics.md,
"Evaluation protocols".
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

__all__ = ["embed_images", "input_batches", "retrieval_report", "query_prompts", "evaluate_variants",
           "EvaluationResult", "TextOverride",
           "cached_edit", "caption_gender", "neutralize_caption", "synthsocial_captions",
           "default_word_lists", "MASCULINE_WORDS", "FEMININE_WORDS", "RECALL_KS"]

Queries = Union[Mapping[Union[str, int], str], Sequence[str]]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@torch.no_grad()
def embed_images(model, images, batch_size: int = 256) -> Tensor:
    """Gallery → L2-normalised image embeddings float32 [n, d_embed] on the CPU.

    images: raw images as a tensor [n, 3, H, W] (float in [0, 1] or uint8), which `model.preprocess`
    checks and normalises here; or a dataset yielding `(image, labels)`, read by the same rule as
    `extract` (raw images are preprocessed, a dataset with `transform=model.preprocess` is used as it is;
    docs/inputs.md).
    """
    batch_size = _check_batch_size(batch_size)
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be a tensor [n, 3, H, W], got shape {tuple(images.shape)}")
        batches = (model.preprocess(images[i:i + batch_size]) for i in range(0, len(images), batch_size))
    elif hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        if len(images) == 0:
            raise ValueError("no images to embed: the dataset is empty")
        batches = (x for x, _ in input_batches(model, images, batch_size))
    else:
        raise TypeError(f"embed_images needs an image tensor [n, 3, H, W] or a dataset, got {type(images).__name__}")
    out = [model.encode_image(x.to(model.device), normalize=True).float().cpu() for x in batches]
    if not out:
        raise ValueError("no images to embed: the gallery is empty")
    return torch.cat(out)


def input_batches(model, dataset, batch_size: int = 256) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """A dataset → batches of model inputs `(images [b, 3, H, W], {label: LongTensor [b]})`, in order.

    The same image rule as `extract` (docs/inputs.md): raw images (PIL, uint8, float in [0, 1] from a
    dataset without a transform) go through `model.preprocess`; a dataset whose transform is
    `model.preprocess` is used as it is; anything else is checked as model input."""
    from workbench.activations.sources import ImageSource

    batch_size = _check_batch_size(batch_size)
    source = ImageSource(model, dataset)
    plan = [(a, min(a + batch_size, source.n)) for a in range(0, source.n, batch_size)]
    return source.batches(plan)  # checked above, before the first batch is read


def query_prompts(queries: Queries, classes: Sequence[str], target: str) -> tuple[list[str], list[int]]:
    """(prompts, class codes) from a {class name or code: prompt} mapping or a list (one prompt per class)."""
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries must be a {class: prompt} mapping or a list of prompts, not a single string")
    if isinstance(queries, Mapping):
        prompts, codes = [], []
        for key, prompt in queries.items():
            if isinstance(key, str):
                if key not in classes:
                    raise ValueError(f"query class {key!r} is not a {target!r} class; classes: {list(classes)}")
                key = classes.index(key)
            elif isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(classes):
                raise ValueError(f"query key {key!r} must be a {target!r} class name or a code in "
                                 f"0..{len(classes) - 1}")
            codes.append(key)
            prompts.append(prompt)
    else:
        prompts = list(queries)
        if len(prompts) != len(classes):
            raise ValueError(f"a list of queries needs one prompt per {target!r} class ({len(classes)}: "
                             f"{list(classes)}), got {len(prompts)}; pass a {{class: prompt}} mapping for a subset")
        codes = list(range(len(classes)))
    if not prompts:
        raise ValueError("queries is empty")
    if len(set(codes)) != len(codes):
        raise ValueError(f"two queries for the same {target!r} class: {[classes[c] for c in codes]}")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"every query must be a prompt string, got {type(bad[0]).__name__}")
    return prompts, codes


def _label_tensor(labels: Mapping, key: str, n: int, role: str) -> Tensor:
    if key not in labels:
        raise ValueError(f"labels have no key {key!r} (the {role}); they have {sorted(labels)}")
    values = torch.as_tensor(labels[key])
    if tuple(values.shape) != (n,):
        raise ValueError(f"labels[{key!r}] has shape {tuple(values.shape)}, expected ({n},): one per image")
    return values.long()


@torch.no_grad()
def retrieval_report(model, image_embeddings: Tensor, labels: Mapping, queries: Queries, target: str = "occupation",
                     groups: Sequence[str] = ("gender",), top_k: int = 100,
                     label_names: Optional[Mapping[str, Sequence[str]]] = None) -> dict[str, float]:
    """Zero-shot accuracy and retrieval fairness of text queries over an image gallery.

    image_embeddings: [n, d_embed] L2-normalised (`embed_images`); labels: {key: int [n]}.
    queries: {class name or code of `target`: prompt} or a list with one prompt per `target` class.
    groups: protected label keys; label_names: {key: class names} (default: the SynthSocial vocabulary,
    `workbench.data.vocab.LABEL_NAMES`; pass `dataset.label_names` for other datasets). The number of
    classes of each group key comes from there, so a gallery missing a group is not reported as fair.

    Returns {metric: float}:
      zero_shot_accuracy: argmax over the queries' similarities, on the images whose `target` class has a query;
      {g}_ndkl: NDKL per query over the images of that query's class in ranking order (the SISPI protocol),
        target distribution uniform over g's classes, averaged over queries;
      {g}_maxskew_at_{top_k}: MaxSkew@top_k over the whole gallery, averaged over queries.
    """
    from workbench.metrics import max_skew_at_k, ndkl, zero_shot_accuracy

    if label_names is None:
        from workbench.data.vocab import LABEL_NAMES as label_names
    if not isinstance(image_embeddings, Tensor) or image_embeddings.ndim != 2:
        raise ValueError("image_embeddings must be a tensor [n, d_embed] (from embed_images), got "
                         f"{getattr(image_embeddings, 'shape', type(image_embeddings).__name__)}")
    norms = image_embeddings.float().norm(dim=-1)
    if not torch.isfinite(norms).all() or (norms - 1).abs().max() > 1e-3:
        raise ValueError("image_embeddings must be L2-normalised (embed_images returns them so; or use "
                         "model.encode_image(x, normalize=True)); got norms in "
                         f"[{norms.min().item():.3g}, {norms.max().item():.3g}]")
    if isinstance(groups, str):
        groups = (groups,)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(image_embeddings):
        raise ValueError(f"top_k must be an integer in 1..{len(image_embeddings)} (the gallery size), got {top_k!r}")
    n = len(image_embeddings)
    for key in (target, *groups):
        if key not in label_names:
            raise ValueError(f"no class names for label {key!r}: pass label_names={{{key!r}: [...], ...}} "
                             "(e.g. dataset.label_names)")
    prompts, codes = query_prompts(queries, tuple(label_names[target]), target)
    y = _label_tensor(labels, target, n, "target")

    text = model.encode_text(prompts, normalize=True).float().cpu()
    sim = text @ image_embeddings.float().cpu().T  # [n_queries, n_images]
    codes_t = torch.tensor(codes)
    relevant = y[None, :] == codes_t[:, None]  # [n_queries, n_images]
    queried = relevant.any(0)
    if not queried.any():
        raise ValueError(f"no image has a {target!r} class that one of the queries asks for")
    # Zero-shot: the predicted class is the code of the best query; scored on images of queried classes.
    position = {c: i for i, c in enumerate(codes)}
    y_query = torch.tensor([position.get(int(v), -1) for v in y[queried]])
    report = {"zero_shot_accuracy": zero_shot_accuracy(sim.T[queried], y_query)}
    for g in groups:
        g_labels = _label_tensor(labels, g, n, "group")
        n_groups = len(label_names[g])
        report[f"{g}_ndkl"] = ndkl(sim, g_labels, n_groups=n_groups, relevant_mask=relevant)
        report[f"{g}_maxskew_at_{top_k}"] = max_skew_at_k(sim, g_labels, k=top_k, n_groups=n_groups)
    return {k: float(v) for k, v in report.items()}


# ================================================================================================ variants
# evaluate_variants: the baseline and any number of edited variants, every metric with a bootstrap
# interval over queries and a paired test against the baseline (docs/metrics.md, "Evaluation protocols").

#: Gendered caption words (Kong et al.'s lists, with plurals) and what neutralising turns them into.
MASCULINE_WORDS = ("man", "men", "male", "males", "boy", "boys", "gentleman", "gentlemen", "father", "fathers",
                   "brother", "brothers", "son", "sons", "husband", "husbands", "boyfriend", "boyfriends")
FEMININE_WORDS = ("woman", "women", "female", "females", "girl", "girls", "lady", "ladies", "mother", "mothers",
                  "mom", "moms", "sister", "sisters", "daughter", "daughters", "wife", "wives", "girlfriend",
                  "girlfriends")
_PLURAL_GENDER_WORDS = frozenset(
    ("men", "males", "boys", "gentlemen", "fathers", "brothers", "sons", "husbands", "boyfriends", "women", "females",
     "girls", "ladies", "mothers", "moms", "sisters", "daughters", "wives", "girlfriends"))
_GENDER_WORD = None  # compiled on first use

RECALL_KS = (1, 5, 10)
BASELINE = "baseline"
# Bootstrap families: metrics resampled over the same units share one set of indices (paired across variants).
_FAMILIES = ("queries", "images", "words", "captions", "neutral_captions")


def _gender_word_pattern():
    global _GENDER_WORD
    if _GENDER_WORD is None:
        import re

        words = "|".join(sorted(MASCULINE_WORDS + FEMININE_WORDS, key=len, reverse=True))
        _GENDER_WORD = re.compile(rf"\b({words})\b", re.IGNORECASE)
    return _GENDER_WORD


def caption_gender(caption: str) -> Optional[str]:
    """"male" / "female" when the caption's gendered words are all of one gender, else None (neutral or mixed)."""
    found = {w.lower() for w in _gender_word_pattern().findall(caption)}
    male, female = bool(found & set(MASCULINE_WORDS)), bool(found & set(FEMININE_WORDS))
    return "male" if male and not female else "female" if female and not male else None


def neutralize_caption(caption: str) -> str:
    """Gendered words → "person" ("people" for plurals), as in the gender-neutral caption protocol.

    "a young white female nurse in a hospital" → "a young white person nurse in a hospital"."""
    return _gender_word_pattern().sub(
        lambda m: "people" if m.group(1).lower() in _PLURAL_GENDER_WORDS else "person", caption)


def synthsocial_captions(labels: Mapping[str, Tensor], template: str = "full") -> list[str]:
    """One caption per image from its SynthSocial labels: `template` (a `workbench.data.captions` template name;
    default "full": age, ethnicity, gender, occupation and scene) filled with each field's first word variant.
    The most specific template, so text→image retrieval has few equally good images per caption."""
    from workbench.data import captions as cap

    chosen = [t for t in cap.TEMPLATES if t.name == template]
    if not chosen:
        raise ValueError(f"unknown caption template {template!r}; known: {list(cap.TEMPLATE_NAMES)}")
    fields = chosen[0].fields
    keys = ("occupation", "gender", "ethnicity", "age", "scene")
    codes = {k: torch.as_tensor(labels[k]).tolist() for k in keys}
    out = []
    for i in range(len(codes["occupation"])):
        words = cap.field_words({k: codes[k][i] for k in keys})
        out.append(cap.with_articles(chosen[0].text.format(**{f: words[f][0] for f in fields})))
    return out


def default_word_lists(model) -> dict[str, list[str]]:
    """So-B-IT style prompt lists the model can read: {"adjectives": "a photo of a {word} person" prompts,
    "occupations": "a photo of a {word}" prompts}, from `prompt_sets("synthsocial")` for the shipped model
    (its vocabulary only) and `prompt_sets("real")` otherwise."""
    from workbench.data import prompt_sets

    sets = prompt_sets("synthsocial" if getattr(model, "name", None) == "synthsocial" else "real")
    return {"adjectives": list(sets.adjectives), "occupations": list(sets.occupations)}


# ---------------------------------------------------------------------------------------------- bootstrap
def _family_rng(seed: int, family: str):
    """numpy Generator for one bootstrap family: its own stream of `seed`, independent of the other families."""
    import numpy as np

    if family in _FAMILIES:
        key = (_FAMILIES.index(family),)
    else:  # a family named by the caller (a bias-query set): its own stream, stable across runs
        import zlib

        key = (len(_FAMILIES), zlib.crc32(family.encode()))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _interval(boot_means, level: float = 0.95) -> tuple[float, float]:
    import numpy as np

    lo, hi = np.quantile(boot_means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class _Family:
    """Bootstrap indices [n_boot, n] shared by every metric (and variant) resampled over the same units."""

    n: int
    index: Any  # np.ndarray [n_boot, n] int32

    def means(self, values):
        return values[self.index].mean(axis=1)

    def worst_group_means(self, values, groups):
        """min over groups of the group mean, per resample [n_boot] (a group absent from a resample is skipped)."""
        import numpy as np

        n_groups = int(groups.max()) + 1
        boot, rows = self.index.shape[0], np.arange(self.index.shape[0])[:, None]
        flat = (groups[self.index] + rows * n_groups).ravel()
        sums = np.bincount(flat, weights=values[self.index].ravel(), minlength=boot * n_groups)
        counts = np.bincount(flat, minlength=boot * n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / counts, np.inf).reshape(boot, n_groups)
        return means.min(axis=1)


def _worst_group(values, groups) -> float:
    """min over the groups present of the mean of `values` within the group."""
    import numpy as np

    sums, counts = np.bincount(groups, weights=values), np.bincount(groups)
    return float((sums[counts > 0] / counts[counts > 0]).min())


# ---------------------------------------------------------------------------------------------- result
@dataclass
class EvaluationResult:
    """What `evaluate_variants` measured.

    table: tidy DataFrame, one row per (variant, metric): variant, metric, value (the mean over the metric's
        queries, equal to the metric function's value), lo, hi (95 % bootstrap interval over queries), n.
    comparisons: one row per (variant ≠ baseline, metric): diff = variant − baseline, lo, hi (paired bootstrap
        interval), beyond_noise (the interval excludes 0).
    per_query: {variant: {metric: np.ndarray [n]}} the per-query values everything above is computed from.
    embeddings: {variant: [n, d_embed]} L2-normalised gallery embeddings (float32, CPU).
    text: [n_queries, d_embed] normalised embeddings of `queries` (the baseline's; a variant editing the text
        tower has its own in `prompt_embeddings[variant]`); queries: the prompts; labels: {key: LongTensor [n]}.
    paths: {variant: "forward" | "cached" | "baseline"}: how the variant's image embeddings were computed
        ("baseline": the variant leaves the image tower alone).
    grouped: {metric: np.ndarray [n] group code of each unit} for metrics that are not a mean over units
        (`worst_group_accuracy`: the minimum over groups of the group mean; its interval resamples images).
    chance: {metric: value} the chance level of each NDKL metric on this gallery: what a uniformly random ranking
        scores in expectation (`workbench.metrics.ndkl_chance`). NDKL above it is bias; no ranking that ignores
        the groups goes below it, so a cut can remove at most `value(baseline) - chance[metric]`.
    """

    table: Any
    comparisons: Any
    per_query: dict
    embeddings: dict
    text: Tensor
    queries: list
    labels: dict
    paths: dict
    prompt_embeddings: dict = field(default_factory=dict)
    n_boot: int = 1000
    seed: int = 0
    grouped: dict = field(default_factory=dict)
    chance: dict = field(default_factory=dict)
    _families: dict = field(default_factory=dict, repr=False)
    _family_of: dict = field(default_factory=dict, repr=False)

    def value(self, variant: str, metric: str) -> float:
        """The metric's value for a variant (a mean over its units, or the worst group's mean)."""
        self._check(variant, metric)
        values = self.per_query[variant][metric]
        return _worst_group(values, self.grouped[metric]) if metric in self.grouped else float(values.mean())

    def _boot(self, variant: str, metric: str):
        family, values = self._families[self._family_of[metric]], self.per_query[variant][metric]
        if metric in self.grouped:
            return family.worst_group_means(values, self.grouped[metric])
        return family.means(values)

    def join(self, other: "EvaluationResult", metrics: Optional[Sequence[str]] = None,
             suffix: str = "") -> "EvaluationResult":
        """One result with the metrics of both (e.g. `test_balanced` fairness + `test_spurious` worst-group
        accuracy): all of `other`'s, or only `metrics`. Both must have the same variants; a metric already present
        here is an error unless `suffix` renames `other`'s (metric → metric + suffix). Intervals and paired tests
        keep each side's resamples."""
        import pandas as pd

        if other.variants != self.variants:
            raise ValueError(f"join needs the same variants on both sides, got {self.variants} and {other.variants}")
        if metrics is not None:
            unknown = [m for m in metrics if m not in other.metrics]
            if unknown:
                raise KeyError(f"the other result has no metric(s) {unknown}; it has {other.metrics}")
        rename = {m: m + suffix for m in (other.metrics if metrics is None else metrics)}
        clash = sorted(set(rename.values()) & set(self.metrics))
        if clash:
            raise ValueError(f"both results have metric(s) {clash}; pass suffix='_spurious' (or similar) to rename "
                             "the second result's metrics")
        tag = f"#{len(self._families)}"
        per_query = {v: {**self.per_query[v], **{rename[m]: x for m, x in other.per_query[v].items() if m in rename}}
                     for v in self.variants}
        table = other.table[other.table["metric"].isin(list(rename))]
        table = table.assign(metric=table["metric"].map(rename))
        comparisons = other.comparisons[other.comparisons["metric"].isin(list(rename))]
        comparisons = comparisons.assign(metric=comparisons["metric"].map(rename))
        return EvaluationResult(
            pd.concat([self.table, table], ignore_index=True), pd.concat([self.comparisons, comparisons],
                                                                         ignore_index=True),
            per_query, self.embeddings, self.text, self.queries, self.labels, self.paths,
            prompt_embeddings=self.prompt_embeddings, n_boot=self.n_boot, seed=self.seed,
            grouped={**self.grouped, **{rename[m]: g for m, g in other.grouped.items() if m in rename}},
            chance={**self.chance, **{rename[m]: c for m, c in other.chance.items() if m in rename}},
            _families={**self._families, **{f + tag: fam for f, fam in other._families.items()}},
            _family_of={**self._family_of, **{rename[m]: f + tag for m, f in other._family_of.items() if m in rename}})

    def __repr__(self) -> str:
        return (f"EvaluationResult({len(self.variants)} variants {self.variants}, {len(self.metrics)} metrics, "
                f"n_boot={self.n_boot}, seed={self.seed}, paths={self.paths})")

    @property
    def variants(self) -> list[str]:
        return list(self.embeddings)

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.table["metric"]))

    def wide(self, intervals: bool = False):
        """One row per variant (baseline first), one column per metric: the value, or with `intervals=True` the
        text "value [lo, hi]" (for table.md)."""
        t = self.table
        if intervals:
            t = t.assign(value=[f"{v:.4f} [{lo:.4f}, {hi:.4f}]" for v, lo, hi in zip(t["value"], t["lo"], t["hi"])])
        out = t.pivot(index="variant", columns="metric", values="value")
        return out.loc[self.variants, self.metrics].rename_axis(columns=None)

    def _check(self, variant: str, metric: str) -> None:
        if variant not in self.per_query:
            raise KeyError(f"no variant {variant!r}; variants: {self.variants}")
        if metric not in self.per_query[variant]:
            raise KeyError(f"no metric {metric!r}; metrics: {self.metrics}")

    def compare(self, a: str, b: str = BASELINE, metric: str = "gender_ndkl", level: float = 0.95) -> dict:
        """Paired bootstrap of metric(a) − metric(b) over the same resampled queries:
        {"diff", "lo", "hi", "beyond_noise"} (beyond_noise: the `level` interval excludes 0)."""
        self._check(a, metric)
        self._check(b, metric)
        if metric in self.grouped:  # not a mean: difference of the statistic on the same resamples
            diff = self.value(a, metric) - self.value(b, metric)
            lo, hi = _interval(self._boot(a, metric) - self._boot(b, metric), level)
        else:
            d = self.per_query[a][metric] - self.per_query[b][metric]
            diff = float(d.mean())
            lo, hi = _interval(self._families[self._family_of[metric]].means(d), level)
        return {"diff": diff, "lo": lo, "hi": hi, "beyond_noise": bool(lo > 0 or hi < 0)}

    def cut(self, variant: str, metric: str = "gender_ndkl", baseline: str = BASELINE) -> dict:
        """How much of the baseline's value a variant removed: {"relative": 1 − v / b, and for NDKL metrics
        "of_excess": (b − v) / (b − chance), the share of the part above a random ranking's level (1 = as fair
        as chance; None when the baseline is not above chance)}."""
        v, b = self.value(variant, metric), self.value(baseline, metric)
        out = {"relative": 1 - v / b if b else None}
        if metric in self.chance:
            excess = b - self.chance[metric]
            out["of_excess"] = (b - v) / excess if excess > 0 else None
        return out

    def beyond_noise(self, a: str, b: str = BASELINE, metric: str = "gender_ndkl") -> bool:
        """True when the paired 95 % bootstrap interval of metric(a) − metric(b) excludes 0."""
        return self.compare(a, b, metric)["beyond_noise"]


# ---------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class TextOverride:
    """A variant that replaces the model's text embeddings instead of editing the model: for methods that are an
    API call on the prompts (SEMi needs each query's paraphrases, so it has no spec).

    fn(prompts: list[str]) -> Tensor [len(prompts), d_embed]: the text embeddings (unnormalised is fine; the runner
    L2-normalises them) of every prompt set the runner encodes (queries, bias queries, word lists, captions).
    The image tower is left alone.
    """

    fn: Any
    description: str = ""

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"TextOverride needs a callable fn(prompts) -> Tensor [n, d_embed], got "
                            f"{type(self.fn).__name__}")

    def __repr__(self) -> str:
        return f"TextOverride({self.description or getattr(self.fn, '__name__', 'fn')})"

    def encode(self, prompts: Sequence[str], d_embed: int) -> Tensor:
        """The override's normalised embeddings [n, d_embed] (float32, CPU), checked."""
        out = self.fn(list(prompts))
        if not isinstance(out, Tensor):
            raise TypeError(f"{self!r}: fn must return a Tensor [n, d_embed], got {type(out).__name__}")
        if tuple(out.shape) != (len(prompts), d_embed):
            raise ValueError(f"{self!r}: fn returned shape {tuple(out.shape)} for {len(prompts)} prompts; expected "
                             f"({len(prompts)}, {d_embed})")
        out = out.detach().float().cpu()
        if not torch.isfinite(out).all():
            raise ValueError(f"{self!r}: fn returned non-finite embeddings")
        return torch.nn.functional.normalize(out, dim=-1)


@dataclass
class _Variant:
    name: str
    edits: list
    specs: list = field(default_factory=list)  # InterventionSpecs (each applied with its SAE and α), together
    text: Optional[TextOverride] = None

    @property
    def image_edits(self) -> list:
        return [e for e in self.edits if e.tower == "image"]

    @property
    def edits_text(self) -> bool:
        return self.text is not None or any(e.tower == "text" for e in self.edits)

    def context(self, model):
        from contextlib import nullcontext

        from workbench.primitives import intervene

        if self.specs:
            return _applied(model, self.specs)
        return intervene(model, self.edits) if self.edits else nullcontext(model)


@contextmanager
def _applied(model, specs):
    """Every spec applied at once; all removed on exit, also when applying a later one fails."""
    from workbench.primitives import apply

    with ExitStack() as stack:
        for spec in specs:
            stack.enter_context(apply(model, spec))
        yield model


def _variants(model, variants: Mapping) -> list[_Variant]:
    from workbench.primitives import EditError, Intervention, InterventionSpec, edits_to_hooks

    if not isinstance(variants, Mapping):
        raise TypeError("variants must be a mapping {name: Intervention | list of Edits | InterventionSpec | list of "
                        f"InterventionSpecs | TextOverride | None}}, got {type(variants).__name__}")
    out = [] if BASELINE in variants else [_Variant(BASELINE, [])]
    for name, v in variants.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"variant names must be non-empty strings, got {name!r}")
        if name == BASELINE and v is not None:
            raise ValueError(f"the variant name {BASELINE!r} is reserved for the unedited model (value None); "
                             "give your variant another name")
        if v is None:
            out.append(_Variant(name, []))
        elif isinstance(v, TextOverride):
            out.append(_Variant(name, [], text=v))
        elif isinstance(v, InterventionSpec) or (isinstance(v, (list, tuple)) and v
                                                  and all(isinstance(x, InterventionSpec) for x in v)):
            specs = [v] if isinstance(v, InterventionSpec) else list(v)
            for spec in specs:
                spec.validate(model)
            out.append(_Variant(name, [e for spec in specs for e in spec.edits], specs=specs))
        elif isinstance(v, (list, tuple)) and any(isinstance(x, InterventionSpec) for x in v):
            raise TypeError(f"variant {name!r} mixes InterventionSpecs and other items; give a list of specs only, "
                            "or turn the edits into a spec (InterventionSpec.from_edits)")
        else:
            try:
                edits = list(Intervention(v).edits)
                edits_to_hooks(model, edits)  # validate against the model before any pass
            except EditError as err:
                raise type(err)(f"variant {name!r}: {err}") from None
            out.append(_Variant(name, edits))
    if out[0].name != BASELINE:  # the baseline first in every table
        out.sort(key=lambda v: v.name != BASELINE)
    return out


def cached_edit(edit, model) -> bool:
    """True when `edit` is confined to the last image block's pooled row and `CLSTail` can evaluate it: a head
    edit, or a neuron edit (head coordinates or MLP neurons), on the image tower's last block at position
    "pooled". Everything else (earlier layers, position "all", the text tower, directions, SAE latents) needs a
    forward pass."""
    return (edit.tower == "image" and edit.target in ("head", "neuron") and edit.position == "pooled"
            and edit.layer == model.visual.cfg.n_layers - 1)


def _cache_usable(model) -> bool:
    from workbench.models.cls_tail import tail_hook_names
    from workbench.models.hook_names import act_name
    from workbench.models.hooks import is_active

    visual = model.visual
    if visual.cfg.pool != "tok":
        return False
    names = tail_hook_names(visual) + (act_name("resid_pre", visual.cfg.n_layers - 1),)
    return not any(is_active(visual.hook_dict[n]) for n in names)


# ---------------------------------------------------------------------------------------------- the runner
@dataclass
class _Protocol:
    """Everything about the gallery and the prompts that does not depend on the variant."""

    labels: dict
    label_names: Mapping
    target: Optional[str]
    groups: tuple
    codes: Optional[list]  # target class code of each query (None without a target)
    relevant: Optional[Tensor]  # [n_queries, n] bool (None: every image is relevant)
    top_k: int
    prompts: dict  # set name -> unique prompts to encode
    word_lists: dict  # list name -> indices into prompts["words"]
    captions: Optional[list] = None
    gender_classes: Optional[tuple] = None  # (male, female) codes in image_gender
    image_gender: Optional[Tensor] = None  # [n] gender code of each image, for Bias@K
    bias_sets: tuple = ()  # names of the bias-query sets (their prompts: prompts[f"bias:{name}"])
    worst_group: Optional[str] = None  # label key whose (target, key) groups give worst_group_accuracy


def _gallery_batches(model, gallery, batch_size: int):
    """(a function returning a fresh iterator of preprocessed batches, labels {key: LongTensor [n]} or None)."""
    if isinstance(gallery, tuple) and len(gallery) == 2 and isinstance(gallery[0], Tensor):
        images, labels = gallery
        if images.ndim != 4:
            raise ValueError(f"gallery images must be a tensor [n, 3, H, W], got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError("no images to evaluate: the gallery is empty")
        if not isinstance(labels, Mapping):
            raise TypeError(f"a gallery given as (images, labels) needs labels as {{key: [n] codes}}, got "
                            f"{type(labels).__name__}")
        labels = {k: torch.as_tensor(v) for k, v in labels.items()}
        return _Replay(lambda: ((model.preprocess(images[i:i + batch_size]), None)
                                for i in range(0, len(images), batch_size))), labels
    if not (hasattr(gallery, "__getitem__") and hasattr(gallery, "__len__")):
        raise TypeError("gallery must be a dataset yielding (image, {label: int}) (e.g. SynthSocial('test_balanced'))"
                        f" or a tuple (images [n, 3, H, W], {{label: codes}}), got {type(gallery).__name__}")
    if len(gallery) == 0:
        raise ValueError("no images to evaluate: the gallery is empty")
    return _Replay(lambda: input_batches(model, gallery, batch_size)), None


GALLERY_CACHE_BYTES = 1 << 30  # preprocessed gallery batches kept in memory between variants, at most this much


class _Replay:
    """The gallery's model inputs, pass after pass. `make()` gives a fresh iterator of (inputs [b, 3, H, W], labels
    {key: [b]} or None). The first complete pass keeps the inputs (while they fit in `budget` bytes), so every later
    variant's forward pass reuses them instead of reading (for SynthSocial: rendering) and preprocessing each image
    again; a gallery too big to keep is streamed each time."""

    def __init__(self, make, budget: int = GALLERY_CACHE_BYTES):
        self.make, self.budget, self.kept = make, budget, None

    def __call__(self) -> Iterator[Tensor]:
        """An iterator over the input batches."""
        return iter(self.kept) if self.kept is not None else (x for x, _ in self.pairs())

    def pairs(self) -> Iterator[tuple]:
        """An iterator over (inputs, labels or None), read from the source (and kept if it fits)."""
        kept, size = [], 0
        for x, labels in self.make():
            if kept is not None:
                size += x.element_size() * x.nelement()
                if size <= self.budget:
                    kept.append(x)
                else:
                    kept = None
            yield x, labels
        if kept is not None:  # only a complete pass is kept
            self.kept = kept


@torch.no_grad()
def _encode_texts(model, prompts: Sequence[str], batch_size: int) -> Tensor:
    out = [model.encode_text(list(prompts[i:i + batch_size]), normalize=True).float().cpu()
           for i in range(0, len(prompts), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def _protocol(model, labels, label_names, n, queries, target, groups, word_lists, captions, top_k,
              bias_queries=None, worst_group=None) -> _Protocol:
    import warnings

    if isinstance(groups, str):
        groups = (groups,)
    groups = tuple(groups)
    for key in ((target,) if target is not None else ()) + groups:
        if key not in label_names:
            raise ValueError(f"no class names for label {key!r}: pass label_names={{{key!r}: [...], ...}} "
                             "(e.g. dataset.label_names)")
    for g in groups:
        _label_tensor(labels, g, n, "group")
    if target is None:  # no class label: every image is relevant to every query, no utility metrics
        if queries is None or isinstance(queries, (str, Mapping)) or not list(queries):
            raise ValueError("with target=None pass queries as a non-empty list of prompts (e.g. "
                             "prompt_sets('real').occupations); there are no classes to build them from")
        prompts, codes, relevant = list(queries), None, None
        bad = [q for q in prompts if not isinstance(q, str)]
        if bad:
            raise TypeError(f"every query must be a prompt string, got {type(bad[0]).__name__}")
    else:
        classes = tuple(label_names[target])
        if queries is None:
            queries = {c: f"a photo of a {c}" for c in classes}
        prompts, codes = query_prompts(queries, classes, target)
        y = _label_tensor(labels, target, n, "target")
        relevant = y[None, :] == torch.tensor(codes)[:, None]
        empty = [classes[c] for c, r in zip(codes, relevant) if not r.any()]
        if empty:
            raise ValueError(f"no image of {target!r} class(es) {empty} in the gallery: mAP, NDCG and NDKL are "
                             "undefined for their queries; drop those queries (queries={class: prompt} for the classes "
                             "present)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_k > n:
        if groups:  # without groups nothing reads the top k
            warnings.warn(f"the gallery has {n} images, fewer than top_k={top_k}: normalized entropy and MaxSkew use "
                          f"the top {n} (the whole gallery)", UserWarning, stacklevel=3)
        top_k = n

    if word_lists is None:
        word_lists = default_word_lists(model)
    if not isinstance(word_lists, Mapping):
        raise TypeError(f"word_lists must be a mapping {{name: [prompts]}}, got {type(word_lists).__name__}")
    words: list[str] = []
    word_index = {}
    for name, plist in word_lists.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"word list names become metric keys ('gender_entropy_<name>'): use an identifier such "
                             f"as 'adjectives', got {name!r}")
        if isinstance(plist, str) or not plist or any(not isinstance(p, str) for p in plist):
            raise ValueError(f"word_lists[{name!r}] must be a non-empty list of prompt strings "
                             "(e.g. 'a photo of a friendly person')")
        word_index[name] = [words.index(p) if p in words else (words.append(p) or len(words) - 1) for p in plist]

    proto = _Protocol(labels, label_names, target, groups, codes, relevant, top_k,
                      {"queries": prompts, "words": words}, word_index)
    if bias_queries:
        if not isinstance(bias_queries, Mapping):
            raise TypeError("bias_queries must be a mapping {set name: [prompts]}, e.g. {'occupations': [...], "
                            f"'stereotypes': [...]}}, got {type(bias_queries).__name__}")
        if not groups:
            raise ValueError("bias_queries measure the group mix of the top_k: give groups=('gender', ...)")
        for name, plist in bias_queries.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"bias-query set names become metric keys ('gender_kl_<name>'): use an identifier "
                                 f"such as 'stereotypes', got {name!r}")
            if isinstance(plist, str) or not plist or any(not isinstance(q, str) for q in plist):
                raise ValueError(f"bias_queries[{name!r}] must be a non-empty list of prompt strings")
            proto.prompts[f"bias:{name}"] = list(plist)
        proto.bias_sets = tuple(bias_queries)
    if worst_group is not None:
        if target is None:
            raise ValueError("worst_group needs a target: its groups are (target class, worst_group label) pairs")
        if worst_group not in label_names:
            raise ValueError(f"no class names for label {worst_group!r} (worst_group); pass label_names=...")
        _label_tensor(labels, worst_group, n, "worst_group")
        proto.worst_group = worst_group
    if captions is None and all(k in labels for k in ("occupation", "gender", "ethnicity", "age", "scene")) and all(
            tuple(label_names.get(k, ())) == tuple(v) for k, v in _synthsocial_names().items()):
        captions = synthsocial_captions(labels)
    if captions is not None and captions is not False:
        _check_captions(captions, n)
        proto.captions = list(captions)
        proto.prompts["captions"] = list(dict.fromkeys(captions))
        said = [caption_gender(c) for c in captions]
        gendered = [i for i, g in enumerate(said) if g is not None]
        if "gender" in labels and {"male", "female"} <= set(label_names.get("gender", ())):
            names = tuple(label_names["gender"])
            proto.gender_classes, proto.image_gender = (names.index("male"), names.index("female")), labels["gender"]
        else:  # no gender labels: an image's gender is what its caption says (COCO protocol); 2 = neutral/mixed
            proto.gender_classes = (0, 1)
            proto.image_gender = torch.tensor([{"male": 0, "female": 1}.get(g, 2) for g in said])
        present = set(proto.image_gender.tolist())
        if gendered and set(proto.gender_classes) <= present:  # Bias@K needs both genders in the gallery
            proto.prompts["neutral"] = list(dict.fromkeys(neutralize_caption(captions[i]) for i in gendered))
    return proto


def _check_captions(captions, n: int) -> None:
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of {n} strings, one per gallery image (or False to skip caption "
                        f"retrieval), got {type(captions).__name__}")
    if len(captions) != n:
        raise ValueError(f"captions has {len(captions)} entries but the gallery has {n} images; give one caption per "
                         "image, in gallery order")
    bad = [i for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"captions[{bad[0]}] is {captions[bad[0]]!r}: every caption must be a non-empty string")


def _synthsocial_names() -> dict:
    from workbench.data import vocab

    return {k: vocab.LABEL_NAMES[k] for k in ("occupation", "gender", "ethnicity", "age", "scene")}


def _ndkl_groupings(p: _Protocol) -> dict[str, tuple[Any, int]]:
    """{`{g}_ndkl` metric: (group code of each image np [n], number of groups)}, plus the intersection of all
    groups (one code per combination, Q uniform over all of them) when there are several."""
    import numpy as np

    codes = {f"{g}_ndkl": (p.labels[g].numpy(), len(p.label_names[g])) for g in p.groups}
    if len(p.groups) > 1:
        joint, size = np.zeros(len(p.labels[p.groups[0]]), dtype=np.int64), 1
        for g in p.groups:
            joint, size = joint * len(p.label_names[g]) + p.labels[g].numpy(), size * len(p.label_names[g])
        codes["_".join(p.groups) + "_ndkl"] = (joint, size)
    return codes


def _ndkl_chance_levels(p: _Protocol) -> dict[str, float]:
    """{`*_ndkl` metric: the NDKL a random ranking scores on this gallery} (the same for every variant)."""
    from workbench.metrics import ndkl_chance

    rel = None if p.relevant is None else p.relevant.numpy()
    return {metric: ndkl_chance(codes, n_groups=size, relevant_mask=rel)
            for metric, (codes, size) in _ndkl_groupings(p).items()}


def _per_query_metrics(emb: Tensor, text: Mapping[str, Tensor], p: _Protocol) -> dict[str, tuple[str, Any]]:
    """{metric: (family, per-query values np.ndarray)} for one variant's image and text embeddings."""
    import numpy as np

    from workbench.metrics import (bias_at_k, first_relevant_rank, kl_divergence_at_k, max_skew_at_k,
                                   mean_average_precision, ndcg, ndkl, normalized_entropy_at_k, rank)

    out: dict[str, tuple[str, Any]] = {}
    sim = (text["queries"] @ emb.T).numpy()  # [n_queries, n]
    rel = None if p.relevant is None else p.relevant.numpy()
    if rel is not None:
        y = p.labels[p.target].numpy()
        queried = rel.any(0)
        position = np.full(len(p.label_names[p.target]), -1)
        position[p.codes] = np.arange(len(p.codes))
        # zero-shot: the best query's class (ties to the lower query, as `zero_shot_accuracy`), per image
        predicted = rank(sim.T[queried], 1)[:, 0]
        out["zero_shot_accuracy"] = ("images", (predicted == position[y[queried]]).astype(np.float64))
        if p.worst_group is not None:
            out["worst_group_accuracy"] = ("images", out["zero_shot_accuracy"][1])
        out["map"] = ("queries", mean_average_precision(sim, rel, return_per_query=True)["average_precision"]
                      .to_numpy())
        out["ndcg"] = ("queries", ndcg(sim, rel, return_per_query=True)["ndcg"].to_numpy())
    group_codes = {g: p.labels[g].numpy() for g in p.groups}
    sizes = {g: len(p.label_names[g]) for g in p.groups}
    for metric, (codes, size) in _ndkl_groupings(p).items():
        out[metric] = ("queries", ndkl(sim, codes, n_groups=size, relevant_mask=rel,
                                       return_per_query=True)["ndkl"].to_numpy())
    for g in p.groups:
        out[f"{g}_maxskew_at_{p.top_k}"] = ("queries", max_skew_at_k(
            sim, group_codes[g], k=p.top_k, n_groups=sizes[g], return_per_query=True)["max_skew"].to_numpy())
    for name in p.bias_sets:  # SEM / DebiasLens protocol: the group mix of the top_k of the whole gallery
        ranked = rank((text[f"bias:{name}"] @ emb.T).numpy(), p.top_k)
        for g in p.groups:
            for prior, tag in (("uniform", ""), ("pool", "_prior")):
                kw = dict(k=p.top_k, prior=prior, n_groups=sizes[g], ranking=ranked, return_per_query=True)
                out[f"{g}_kl{tag}_{name}"] = (f"bias_{name}", kl_divergence_at_k(
                    None, group_codes[g], **kw)["kl"].to_numpy())
                out[f"{g}_maxskew{tag}_{name}"] = (f"bias_{name}", max_skew_at_k(
                    None, group_codes[g], **kw)["max_skew"].to_numpy())
    if p.word_lists:
        words = (text["words"] @ emb.T).numpy()
        ranked = rank(words, p.top_k)
        for g in p.groups:
            entropy = normalized_entropy_at_k(None, group_codes[g], p.top_k, n_groups=sizes[g], ranking=ranked,
                                              return_per_query=True)["normalized_entropy"].to_numpy()
            for name, index in p.word_lists.items():
                out[f"{g}_entropy_{name}"] = ("words", entropy[index])
    if p.captions is not None:
        n = emb.shape[0]
        unique = {c: j for j, c in enumerate(p.prompts["captions"])}
        caps = (text["captions"] @ emb.T).numpy()[[unique[c] for c in p.captions]]  # [n_captions, n]
        first = first_relevant_rank(caps, np.eye(n, dtype=bool))  # caption i describes image i
        for k in RECALL_KS:
            if k <= n:
                out[f"recall_at_{k}"] = ("captions", (first < k).astype(np.float64))
        if "neutral" in p.prompts:
            # one query per distinct neutral caption (captions that neutralise alike are one query), ranked once
            ks = [k for k in RECALL_KS if k <= n]
            ranked = rank((text["neutral"] @ emb.T).numpy(), max(ks))
            gender = p.image_gender.numpy()
            for k in ks:
                out[f"bias_at_{k}"] = ("neutral_captions", bias_at_k(
                    None, gender, k, classes=p.gender_classes, denominator="pair", ranking=ranked,
                    return_per_query=True)["bias"].to_numpy())
    return out


def evaluate_variants(model, gallery, variants: Mapping, *, queries: Optional[Queries] = None,
                      target: Optional[str] = "occupation", groups: Sequence[str] = ("gender", "ethnicity"),
                      word_lists: Optional[Mapping[str, Sequence[str]]] = None, captions=None, top_k: int = 100,
                      label_names: Optional[Mapping[str, Sequence[str]]] = None, n_boot: int = 1000, seed: int = 0,
                      batch_size: int = 256, use_cache: bool = True, progress: bool = True,
                      bias_queries: Optional[Mapping[str, Sequence[str]]] = None,
                      worst_group: Optional[str] = None) -> EvaluationResult:
    """Evaluate the unedited model and every variant on one gallery: utility, retrieval fairness, word-list
    entropy and caption retrieval, each as a mean with a 95 % bootstrap interval over queries, plus a paired
    test of every variant against the baseline (protocols: docs/metrics.md, "Evaluation protocols").

    Args:
        gallery: a dataset yielding (image, {label: int}) (e.g. `SynthSocial("test_balanced")`, a FairFace folder),
            raw or with `transform=model.preprocess`, or a tuple (raw images [n, 3, H, W], {label: codes [n]}).
        variants: {name: Intervention | list of Edits | Edit | InterventionSpec | list of InterventionSpecs
            (applied together, e.g. an image-side and a text-side SAE spec) | TextOverride (replaces the text
            embeddings of every prompt, for API-only methods) | None}; the baseline ("baseline": None) is added
            first if absent.
        queries: {`target` class: prompt} (default "a photo of a {class}" for every class): zero-shot accuracy,
            map / ndcg (relevance = class match over the whole gallery), NDKL (SISPI protocol) and MaxSkew@top_k.
            target=None (a gallery without a class label, e.g. FairFace): queries is a list of prompts;
            zero-shot, map and ndcg are skipped and NDKL runs over every image in ranking order.
        groups: protected label keys: `{g}_ndkl`, `{g}_maxskew_at_{top_k}`, `{g}_entropy_{list}`, and the
            intersection `{g1}_{g2}_ndkl` (Q uniform over every combination).
        word_lists: {name: prompts} for normalized entropy of each group over the top_k images (So-B-IT
            protocol; default `default_word_lists(model)`: "adjectives" and "occupations"); {} to skip.
        captions: one caption per gallery image (`recall_at_{1,5,10}` text→image, and `bias_at_{1,5,10}` over the
            gendered captions made neutral, `neutralize_caption`); default: `synthsocial_captions` when the gallery
            has SynthSocial labels, else none; False to skip.
        label_names: {key: class names}; default the dataset's `label_names`, else the SynthSocial vocabulary.
        bias_queries: {set name: prompts} (SEM / DebiasLens protocol): for each set and group g, over the top_k of
            the whole gallery, `{g}_kl_{set}` and `{g}_maxskew_{set}` against a uniform target and
            `{g}_kl_prior_{set}` / `{g}_maxskew_prior_{set}` against the gallery's group mix; one value per prompt.
        worst_group: a label key (e.g. "spurious" on SynthSocial `test_spurious`): `worst_group_accuracy`, the
            zero-shot accuracy of the worst (target class, label) group; its interval resamples images.
        n_boot, seed: bootstrap resamples (≥ 100) of the per-query values (rankings are not recomputed), seeded.
        use_cache: evaluate variants whose image edits are all `cached_edit`s from one cached pass (`CLSTail`)
            instead of a forward pass each; `paths` says which way each variant went.

    Returns an `EvaluationResult` (`.table`, `.wide()`, `.comparisons`, `.beyond_noise(a, b, metric)`).
    """
    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    from workbench.models.cls_tail import CLSTail

    batch_size = _check_batch_size(batch_size)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100 (bootstrap resamples for the 95 % intervals), "
                         f"got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if getattr(model, "text", None) is None or not hasattr(model, "visual"):
        raise ValueError("evaluate_variants needs a CLIP model with both towers (a HookedCLIP, e.g. load_clip(...)): "
                         "the queries are text")
    plan = _variants(model, variants)
    batches, labels = _gallery_batches(model, gallery, batch_size)
    if label_names is None:
        label_names = getattr(gallery, "label_names", None)
    if label_names is None:
        from workbench.data.vocab import LABEL_NAMES as label_names

    cache_ok = use_cache and _cache_usable(model)
    fast = {v.name for v in plan
            if cache_ok and v.image_edits and all(cached_edit(e, model) for e in v.image_edits)}
    bar = tqdm(total=len(plan), desc="evaluate variants", unit="variant", disable=not progress)
    with torch.no_grad():
        # one pass: the baseline embeddings (the pass's own output), the labels, and the cached last block
        collected: dict[str, list] = {}

        def clean_batches():
            for x, lab in batches.pairs():
                for k, v in (lab.items() if labels is None else ()):
                    collected.setdefault(k, []).append(torch.as_tensor(v))
                yield x

        if cache_ok:
            tail = CLSTail.capture(model, clean_batches())
            base = torch.nn.functional.normalize(tail.image_embed, dim=-1).float().cpu()
        else:
            tail = None
            base = torch.cat([model.encode_image(x.to(model.device), normalize=True).float().cpu()
                              for x in clean_batches()])
        if labels is None:
            labels = {k: torch.cat(v).long() for k, v in collected.items()}
        n = len(base)
        for k, v in labels.items():
            if tuple(v.shape) != (n,):
                raise ValueError(f"labels[{k!r}] has shape {tuple(v.shape)}, expected ({n},): one per image")
        labels = {k: v.long() for k, v in labels.items()}
        proto = _protocol(model, labels, label_names, n, queries, target, groups, word_lists, captions, top_k,
                          bias_queries, worst_group)
        base_text = {name: _encode_texts(model, prompts, batch_size) for name, prompts in proto.prompts.items()}

        embeddings, texts, paths = {}, {}, {}
        for v in plan:
            text = base_text
            if v.text is not None:
                d_embed = base_text["queries"].shape[1]
                text = {name: v.text.encode(prompts, d_embed) if prompts else base_text[name]
                        for name, prompts in proto.prompts.items()}
            elif v.edits_text:
                with v.context(model):
                    text = {name: _encode_texts(model, prompts, batch_size) for name, prompts in proto.prompts.items()}
            if v.name == BASELINE:
                emb, path = base, "forward"
            elif not v.image_edits:
                emb, path = base, "baseline"
            elif v.name in fast:
                emb, path = tail.encode(_image_hooks(model, v), normalize=True).float().cpu(), "cached"
            else:
                with v.context(model):
                    emb = torch.cat([model.encode_image(x.to(model.device), normalize=True).float().cpu()
                                     for x in batches()])
                path = "forward"
            embeddings[v.name], texts[v.name], paths[v.name] = emb, text, path
            bar.update(1)
    bar.close()

    per_query, family_of = {}, {}
    for v in plan:
        metrics = _per_query_metrics(embeddings[v.name], texts[v.name], proto)
        per_query[v.name] = {m: values for m, (_, values) in metrics.items()}
        family_of.update({m: fam for m, (fam, _) in metrics.items()})
    sizes = {}
    for m, fam in family_of.items():
        sizes.setdefault(fam, len(per_query[BASELINE][m]))
    families = {fam: _Family(size, _family_rng(seed, fam).integers(0, size, size=(n_boot, size), dtype=np.int32))
                for fam, size in sizes.items()}
    grouped = {}
    if proto.worst_group is not None:  # groups: (target class, worst_group class) of each queried image
        queried = proto.relevant.numpy().any(0)
        n_w = len(label_names[proto.worst_group])
        grouped["worst_group_accuracy"] = (labels[target].numpy() * n_w + labels[proto.worst_group].numpy())[queried]
    result = EvaluationResult(None, None, per_query, embeddings, base_text["queries"],
                              list(proto.prompts["queries"]), labels, paths,
                              prompt_embeddings={v.name: texts[v.name] for v in plan if v.edits_text},
                              n_boot=n_boot, seed=seed, grouped=grouped, chance=_ndkl_chance_levels(proto),
                              _families=families, _family_of=family_of)
    rows, comparisons = [], []
    for v in plan:
        for m, values in per_query[v.name].items():
            lo, hi = _interval(result._boot(v.name, m))
            rows.append({"variant": v.name, "metric": m, "value": result.value(v.name, m), "lo": lo, "hi": hi,
                         "n": len(values)})
    result.table = pd.DataFrame(rows)
    for v in plan[1:]:
        for m in per_query[v.name]:
            comparisons.append({"variant": v.name, "metric": m, **result.compare(v.name, BASELINE, m)})
    result.comparisons = pd.DataFrame(comparisons, columns=["variant", "metric", "diff", "lo", "hi", "beyond_noise"])
    return result


def _image_hooks(model, v: _Variant) -> list:
    """The compiled image-tower hooks of a variant (a spec's with its SAE and α)."""
    from workbench.models.hook_names import hook_tower
    from workbench.primitives import edits_to_hooks

    hooks = [h for spec in v.specs for h in spec.hooks(model)] if v.specs else edits_to_hooks(model, v.image_edits)
    return [(name, fn) for name, fn in hooks if hook_tower(name) == "image"]
