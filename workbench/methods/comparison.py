"""All four inference-time methods side by side: one model, one gallery, one set of prompts, one table.

    cmp = compare_methods(model, reference, gallery, spurious=SynthSocial("test_spurious"))
    cmp.result.wide(intervals=True)     # vanilla vs expert heads vs SEMi/SEMb/SEMbi vs projection vs DebiasLens
    cmp.specs                            # {variant: InterventionSpec | [specs] | None (API-only, e.g. sem_i)}

Each method is built from its own module (`expert_heads`, `sem`, `baselines`, `debiaslens`) and every variant is
evaluated by one `evaluate_variants` call on `gallery` (bias queries: occupation and stereotype prompts; utility:
zero-shot accuracy, mAP) and, with `spurious`, a second one on it for worst-group accuracy, joined into one
result. On the spurious gallery the text-side methods are refitted for its bias label (SEM and the projection
remove the spurious attribute, e.g. the scene, as the papers do for Waterbirds); the image-side variants are the
same edits. Definitions: docs/methods.md; protocols: docs/metrics.md.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["compare_methods", "MethodComparison", "METHODS"]

METHODS = ("expert_heads", "sem", "projection", "debiaslens")
EXPERT_VARIANTS = ("attribution_top3_neutral", "ap_top3_neutral")
BIAS_SETS = ("occupations", "stereotypes")


@dataclass
class MethodComparison:
    """What `compare_methods` measured.

    result: the joined `EvaluationResult` (one row per variant and metric, 95 % intervals, paired tests).
    method_of: {variant: method}; specs: {variant: InterventionSpec | list of specs | None (API-only variants)};
    findings: {method: what its search found (ExpertHeadsFinding, {"image": SocialNeurons, "text": ...})};
    seconds: {method: fit time}; bias_queries: {set: prompts} the bias metrics ran on; spurious: the worst-group
    evaluation on its own (its `prompt_embeddings` hold the refitted text methods' queries), or None.
    """

    result: Any
    method_of: dict
    specs: dict
    findings: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    bias_queries: dict = field(default_factory=dict)
    spurious: Any = None

    def table(self, metrics: Optional[Sequence[str]] = None, intervals: bool = True):
        """One row per variant (with its method), the chosen metrics as "value [lo, hi]" (or plain values)."""
        wide = self.result.wide(intervals=intervals)
        if metrics is not None:
            wide = wide[[m for m in metrics if m in wide.columns]]
        wide.insert(0, "method", [self.method_of.get(v, "vanilla") for v in wide.index])
        return wide

    def __repr__(self) -> str:
        return (f"MethodComparison({len(self.method_of)} variants of {sorted(set(self.method_of.values()))}, "
                f"{len(self.result.metrics)} metrics)")


def _check_methods(methods) -> tuple[str, ...]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return methods


def compare_methods(model, reference, gallery, *, spurious=None, prompts=None, attribute: str = "gender",
                    methods: Sequence[str] = METHODS, sem_sae="synthsocial/text-embed",
                    image_sae="synthsocial/image-resid-last", text_sae=None, text_search=None, alpha: float = 0.6,
                    tau: Optional[float] = None, expert_layers="last", spurious_attribute: str = "scene",
                    spurious_classes: Sequence[str] = ("kitchen", "field"), top_k: int = 100, n_boot: int = 1000,
                    seed: int = 0, batch_size: int = 256, progress: bool = True) -> MethodComparison:
    """Fit every method in `methods` and evaluate all their variants together.

    reference: labelled images the searches run on (expert heads, social neurons); gallery: other images the
    variants are evaluated on (SynthSocial `test_balanced` or a folder with `target` labels); spurious: a
    gallery with "target" and "spurious" labels (SynthSocial `test_spurious`) for worst-group accuracy.
    prompts: a `PromptSets` (default `prompt_sets("synthsocial")`). attribute: the protected attribute the
    expert heads and the text methods remove. sem_sae: the SAE at `text.hook_text_embed`; image_sae /
    text_sae: SAEs at the last block of each tower for DebiasLens (no text SAE: image side only); text_search:
    (prompts, {attribute: codes, −1 = not labelled}, {attribute: group names}) the text-side search runs on
    (default: the reference images' SynthSocial captions); alpha: its blend; tau: its "consistently active"
    threshold (default: `find_social_neurons`'s). expert_layers: where expert heads are searched ("last", the
    paper's choice for large CLIPs; "all" on small models, where gender reaches the CLS token early).
    """
    import time

    from workbench.data import dataset_labels, prompt_sets
    from workbench.evaluation import evaluate_variants

    methods = _check_methods(methods)
    prompts = prompt_sets("synthsocial") if prompts is None else prompts
    variants, spurious_variants, method_of, specs, findings, seconds = {}, {}, {}, {}, {}, {}

    def add(method: str, found: dict, for_spurious: Optional[dict] = None) -> None:
        for name, v in found.items():
            variants[name], method_of[name] = v, method
            specs[name] = v if _is_spec(v) else None
        spurious_variants.update(found if for_spurious is None else for_spurious)

    if "expert_heads" in methods:
        from workbench.methods.expert_heads import expert_variants, find_expert_heads

        start = time.perf_counter()
        has_target = "occupation" in getattr(reference, "label_names", {})
        finding = find_expert_heads(model, reference, attribute, layers=expert_layers, seed=seed,
                                    batch_size=batch_size, progress=progress,
                                    target="occupation" if has_target else None,
                                    queries=None if has_target else list(prompts.occupations))
        found = expert_variants(finding, single_heads=False)
        chosen = {f"experts_{k}": found[k] for k in EXPERT_VARIANTS if k in found}
        from workbench.methods.expert_heads import variant_spec

        add("expert_heads", {k: variant_spec(model, k[len("experts_"):], v, finding) for k, v in chosen.items()})
        findings["expert_heads"], seconds["expert_heads"] = finding, time.perf_counter() - start
    if "sem" in methods:
        from workbench.methods.sem import sem_variants

        start = time.perf_counter()
        found = sem_variants(model, sem_sae, prompts, attribute)
        other = (sem_variants(model, sem_sae, prompts, spurious_attribute, classes=spurious_classes)
                 if spurious is not None else None)
        add("sem", found, other)
        seconds["sem"] = time.perf_counter() - start
    if "projection" in methods:
        from workbench.methods.baselines import projection_variants

        start = time.perf_counter()
        found = projection_variants(model, prompts, attribute)
        other = (projection_variants(model, prompts, spurious_attribute, classes=spurious_classes)
                 if spurious is not None else None)
        add("projection", {k: _spec(model, k, v, attribute) for k, v in found.items()},
            None if other is None else {k: _spec(model, k, v, spurious_attribute) for k, v in other.items()})
        seconds["projection"] = time.perf_counter() - start
    if "debiaslens" in methods:
        from workbench.methods.debiaslens import debiaslens_variants, find_social_neurons

        start = time.perf_counter()
        kw = {} if tau is None else {"tau": tau}
        labels = dataset_labels(reference)  # the attributes with at least two groups among the reference images
        attrs = [a for a in ("gender", "ethnicity", "age")
                 if a in labels and len(set(labels[a][labels[a] >= 0].tolist())) >= 2]
        image = find_social_neurons(model, image_sae, reference, attributes=attrs, batch_size=min(batch_size, 64),
                                    progress=progress, **kw)
        text = None
        if text_sae is not None:
            if text_search is None:  # SynthSocial: each reference image's full caption names its groups
                from workbench.evaluation import synthsocial_captions

                text_search = (synthsocial_captions(labels), {a: labels[a] for a in attrs},
                               {a: reference.label_names[a] for a in attrs})
            prompts_t, labels_t, names_t = text_search
            keep = [a for a in labels_t if a in attrs]
            text = find_social_neurons(model, text_sae, prompts_t, attributes=keep,
                                       labels={a: labels_t[a] for a in keep},
                                       label_names={a: names_t[a] for a in keep}, progress=progress, **kw)
        add("debiaslens", debiaslens_variants(model, image=image, text=text, alpha=alpha))
        findings["debiaslens"] = {"image": image, "text": text}
        seconds["debiaslens"] = time.perf_counter() - start

    groups = tuple(dict.fromkeys([attribute, *(g for g in ("gender", "ethnicity") if g != attribute)]))
    bias_queries = {s: list(getattr(prompts, s)) for s in BIAS_SETS}
    target = "occupation" if "occupation" in getattr(gallery, "label_names", {"occupation": ()}) else None
    queries = _class_queries(prompts, gallery.label_names["occupation"]) if target else list(prompts.occupations)
    result = evaluate_variants(model, gallery, variants, target=target, queries=queries, groups=groups,
                               bias_queries=bias_queries, word_lists={},
                               captions=False, top_k=top_k, n_boot=n_boot, seed=seed, batch_size=batch_size,
                               progress=progress)
    if spurious is not None:
        names = spurious.label_names["target"]
        worst = evaluate_variants(model, spurious, {k: spurious_variants[k] for k in variants}, target="target",
                                  groups=(), worst_group="spurious", queries=_class_queries(prompts, names),
                                  word_lists={}, captions=False, n_boot=n_boot, seed=seed, batch_size=batch_size,
                                  progress=progress)
        result = result.join(worst, metrics=["worst_group_accuracy"])
    else:
        worst = None
    return MethodComparison(result, method_of, specs, findings, seconds, bias_queries, worst)


def _class_queries(prompts, classes) -> dict:
    """{class: its prompt in `prompts.occupations` (so SEM finds its paraphrases), else "a photo of a {class}"}."""
    return {c: next((p for p in prompts.occupations if p.endswith(f" {c}")), f"a photo of a {c}") for c in classes}


def _is_spec(v) -> bool:
    from workbench.primitives import InterventionSpec

    return isinstance(v, InterventionSpec) or (isinstance(v, list) and bool(v)
                                               and all(isinstance(x, InterventionSpec) for x in v))


def _spec(model, name: str, edits, attribute: str):
    """A projection baseline's spec; its method is the registered name ("orth_proj", "orth_cali")."""
    from workbench.primitives import InterventionSpec

    return InterventionSpec.from_edits(model, edits, method=name, attribute=attribute, variant=name)
