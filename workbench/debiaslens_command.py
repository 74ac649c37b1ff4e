"""`workbench debiaslens`: find social neurons on SAEs of the image and text towers, silence them, evaluate the
variants and an α sweep, write a report.

    run_debiaslens("runs/debiaslens")                                  # embedded model, SynthSocial, both towers
    run_debiaslens("runs/dl", model_name="ViT-B-32", pretrained="openai", data="fairface:/data/fairface",
                   sae="runs/sae-img", text_sae="runs/sae-txt")

Steps (docs/debiaslens.md): the SAEs (`--sae` / `--text-sae` folders; the embedded model's image side uses the
shipped `synthsocial/image-resid-last`; anything missing is trained here at the tower's last block, seeded, with
one torch thread, and saved under DIR/saes/) → `find_social_neurons` on a reference set (images; captions or
prompts naming each group for the text side) → `debiaslens_variants` at α and `alpha_sweep_variants` →
`evaluate_variants` on a separate gallery (bias_queries: occupation and stereotype prompts; on SynthSocial also
`test_spurious` for worst-group accuracy, joined in) → DIR/summary.json, table.csv, table.md, neurons_image.csv,
neurons_text.csv, alpha_sweep.csv, figures/*.html, specs/NAME.json. The output folder is checked before any work.

Data: "synthsocial" (reference `test_balanced` seed+1, 1,024 images and their full captions; gallery
`test_balanced` seed, 2,048 images; `test_spurious` seed, 1,024 images) or "<loader>:DIR" (two seeded halves,
text side searched on the bias prompts of `prompt_sets("real")`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from workbench.data.base import dataset_labels
from workbench.method_report import UTILITY_BUDGET

__all__ = ["run_debiaslens", "bias_score", "TOWERS", "BEST_ZERO_SHOT_DROP", "image_side_sae",
           "text_side_sae", "text_search_data"]

TOWERS = ("image", "text", "both")
BEST_ZERO_SHOT_DROP = UTILITY_BUDGET  # the target: zero-shot accuracy down at most 2 points
N_REFERENCE_SYNTH = 1024
N_TEXT_TRAIN_SYNTH = 4000  # SynthSocial train captions for a text SAE trained here
SAE_STEPS = 300  # an SAE trained here: steps × 1024 rows (seconds on the embedded model)
TOP_IMAGES = 8  # thumbnails per latent in the neuron figure
BIAS_SETS = ("occupations", "stereotypes")


def bias_score(metrics: dict, groups, bias_set: str = "occupations", prior: bool = False) -> Optional[float]:
    """Mean over `groups` of `{g}_maxskew_{bias_set}` (uniform target; `prior=True`: `{g}_maxskew_prior_…`);
    None when a group's metric is missing."""
    key = "maxskew_prior" if prior else "maxskew"
    values = [metrics.get(f"{g}_{key}_{bias_set}") for g in groups]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


# ---------------------------------------------------------------------------------------------- data
def _datasets(kind: str, folder, seed: int, n_images: Optional[int]):
    """(reference, gallery, spurious or None, target or None, queries or None)."""
    from workbench.data import SynthSocial
    from workbench.method_report import halves, load_real

    if kind == "synthsocial":
        reference = _Rendered(SynthSocial("test_balanced", seed=seed + 1, n=n_images or N_REFERENCE_SYNTH))
        gallery = SynthSocial("test_balanced", seed=seed, n=n_images)
        spurious = SynthSocial("test_spurious", seed=seed, n=None if n_images is None else max(4, n_images // 4 * 4))
        return reference, gallery, spurious, "occupation", None
    reference, gallery = halves(load_real(kind, folder), n_images, seed, what="the debiaslens command")
    if "occupation" in reference.label_names:
        return reference, gallery, None, "occupation", None
    from workbench.data import prompt_sets

    return reference, gallery, None, None, list(prompt_sets("real").occupations)


def _in_memory(dataset):
    """A SynthSocial split as (images [n, 3, H, W], {label: codes}) rendered once; any other dataset as it is."""
    from workbench.data import SynthSocial

    return dataset.tensors() if isinstance(dataset, SynthSocial) else dataset


class _Rendered(torch.utils.data.Dataset):
    """A SynthSocial split rendered once in its fast batch path (`tensors()`), read item by item like the split
    itself: (image [3, H, W] in [0, 1], {label: int}); the repr names the split."""

    def __init__(self, split):
        self.images, labels = split.tensors()
        self.labels = {k: torch.as_tensor(v).long() for k, v in labels.items()}
        self.label_names = dict(split.label_names)
        self.transform = None  # raw [0, 1] images: extract preprocesses them (docs/inputs.md)
        self._name = repr(split)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], {k: int(v[i]) for k, v in self.labels.items()}

    def __repr__(self) -> str:
        return self._name


def text_search_data(kind: str, reference, attributes):
    """(prompts, labels {attribute: codes, −1 = not named}, label_names) for the text-side search: the reference
    images' full SynthSocial captions (each names gender, ethnicity and age), else the bias prompts of
    `prompt_sets("real")` (each names one class of one attribute)."""
    from workbench.data import prompt_sets
    from workbench.evaluation import synthsocial_captions

    if kind == "synthsocial":
        labels = dataset_labels(reference)
        return (synthsocial_captions(labels, "full"), {a: labels[a] for a in attributes},
                {a: list(reference.label_names[a]) for a in attributes})
    bias = prompt_sets("real").bias
    prompts, labels, names = [], {a: [] for a in attributes if a in bias}, {}
    for attribute in labels:
        names[attribute] = list(bias[attribute])
        for code, cls in enumerate(bias[attribute]):
            for p in bias[attribute][cls]:
                prompts.append(p)
                for a in labels:
                    labels[a].append(code if a == attribute else -1)
    return prompts, {a: torch.tensor(v) for a, v in labels.items()}, names


def _text_training_data(kind: str, seed: int) -> list[str]:
    from workbench.data import SynthSocial, prompt_sets

    if kind == "synthsocial":
        train = SynthSocial("train", n=N_TEXT_TRAIN_SYNTH)
        return train.sample_captions(range(len(train)), seed)
    sets = prompt_sets("real")
    prompts = [*sets.queries, *(p for ps in sets.paraphrases.values() for p in ps), *sets.diverse,
               *(p for classes in sets.bias.values() for ps in classes.values() for p in ps)]
    return list(dict.fromkeys(prompts))


# ---------------------------------------------------------------------------------------------- SAEs
def _last_site(model, tower: str) -> str:
    n_layers = (model.visual if tower == "image" else model.text).cfg.n_layers
    return f"{'text.' if tower == 'text' else ''}blocks.{n_layers - 1}.hook_resid_post"


def _given_sae(model, path, tower: str, flag: str) -> str:
    """Check a user's SAE folder against the model and the tower's last block; its resolved folder."""
    from workbench.saes import load_sae, read_sae_config, resolve_sae_path

    site = _last_site(model, tower)
    folder = resolve_sae_path(path).resolve()
    recorded = (read_sae_config(folder).get("metadata") or {}).get("hook_name")
    if recorded is not None and recorded != site:
        raise ValueError(f"{flag} {str(path)!r}: this SAE was trained at {recorded!r}; DebiasLens's {tower} side needs "
                         f"an SAE on the last {tower} block, {site!r}")
    try:
        load_sae(folder, model=model, site=site)  # fingerprint and width checked here
    except ValueError as err:
        raise ValueError(f"{flag} {str(path)!r}: {err}") from None
    return str(folder)


def _train_here(model, data, tower: str, out: Path, steps: int, seed: int, progress: bool) -> tuple[str, dict]:
    """Train a DebiasLens SAE (Matryoshka BatchTopK, k 20, ×2, aux-K 1.0: the shipped image-resid-last recipe) at
    the tower's last block on every token, seeded, with one torch thread (the same SAE on any machine with the
    same torch build); save it under out/saes/{tower}. (folder, facts for summary.json)"""
    from workbench.saes import activation_store, save_sae, train_sae
    from workbench.saes.command import reconstruction_stats

    site = _last_site(model, tower)
    store = activation_store(model, data, site, position="all", progress=progress)  # one extraction pass
    rows = store[site].reshape(-1, store[site].shape[-1]).float()
    batch_size = min(1024, len(rows))  # a small reference set holds fewer rows than one batch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        sae = train_sae(model, store, site, preset="debiaslens", position="all", expansion=2, aux_coefficient=1.0,
                        steps=steps, batch_size=batch_size, seed=seed, progress=progress)
        cpu = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    folder = out / "saes" / tower
    save_sae(sae, folder, model=model, site=site)
    stats = reconstruction_stats(sae, rows)  # on its training rows
    return str(folder.resolve()), {"source": "trained", "site": site, "steps": steps, "batch_size": batch_size,
                                   "seed": seed, "d_sae": int(sae.cfg.d_sae), "cpu_seconds": round(cpu, 1),
                                   "training_data": repr(data) if tower == "image" else f"{len(data)} prompts",
                                   **{f"train_{k}": round(v, 4) for k, v in stats.items()}}


def image_side_sae(model, sae, reference, out, steps, seed, progress):
    """(folder, facts) of the image-side SAE at the last image block: `sae` (checked), the shipped
    `synthsocial/image-resid-last` for the embedded model, else one trained here on `reference` into out/saes/."""
    from workbench.saes import read_sae_config, resolve_sae_path

    if sae is not None:
        return _given_sae(model, sae, "image", "--sae"), {"source": "given", "site": _last_site(model, "image")}
    shipped = "synthsocial/image-resid-last"
    meta = read_sae_config(shipped).get("metadata") or {}
    if meta.get("workbench_model_fingerprint") == model.fingerprint():
        return str(resolve_sae_path(shipped).resolve()), {"source": f"shipped {shipped}", "site": meta["hook_name"]}
    return _train_here(model, reference, "image", out, steps, seed, progress)


def text_side_sae(model, sae, kind, out, steps, seed, progress):
    """(folder, facts) of the text-side SAE at the last text block: `sae` (checked), else one trained here (seeded,
    one thread) on SynthSocial train captions ("synthsocial") or the real prompt sets, into out/saes/."""
    if sae is not None:
        return _given_sae(model, sae, "text", "--text-sae"), {"source": "given", "site": _last_site(model, "text")}
    return _train_here(model, _text_training_data(kind, seed), "text", out, steps, seed, progress)


# ---------------------------------------------------------------------------------------------- report
def _sweep_name(tag: str, a: float, alpha: float) -> str:
    """The variant of the α sweep at α = a: the baseline at 0, the main variant at `alpha`."""
    return "baseline" if a == 0 else f"debiaslens_{tag}" if a == alpha else f"debiaslens_{tag}_a{a:g}"


def _sweep_table(metrics: dict, intervals: dict, groups, alphas, alpha, tags):
    """One row per (tower tag, α): bias (mean MaxSkew over groups, occupations and stereotypes; uniform and prior
    targets), zero-shot and worst-group accuracy and mAP with intervals; α = 0 is the baseline. `metrics` /
    `intervals`: {variant: {metric: value / [lo, hi]}}."""
    import pandas as pd

    rows = []
    for tower in tags:
        for a in alphas:
            name = _sweep_name(tower, a, alpha)
            if name not in metrics:
                continue
            row = {"tower": tower, "alpha": a, "variant": name}
            for s in BIAS_SETS:
                row[f"maxskew_{s}"] = bias_score(metrics[name], groups, s)
                row[f"maxskew_prior_{s}"] = bias_score(metrics[name], groups, s, prior=True)
            for m in ("zero_shot_accuracy", "worst_group_accuracy", "map"):
                if m in metrics[name]:
                    row[m] = metrics[name][m]
                    row[f"{m}_lo"], row[f"{m}_hi"] = intervals[name][m]
            rows.append(row)
    return pd.DataFrame(rows)


def _target(result, baseline: dict, metrics: dict, groups, name: str, control: Optional[str]) -> Optional[dict]:
    """The issue's target for one variant: mean MaxSkew lower, zero-shot accuracy down ≤ 2 points; with the
    per-metric paired differences and whether each is beyond noise."""
    if name not in metrics:
        return None
    changes = {}
    for s in BIAS_SETS:
        for g in groups:
            for key in (f"{g}_maxskew_{s}", f"{g}_maxskew_prior_{s}"):
                if key in metrics[name]:
                    c = result.compare(name, "baseline", key)
                    changes[key] = {"diff": c["diff"], "lo": c["lo"], "hi": c["hi"], "beyond_noise": c["beyond_noise"]}
    before, after = bias_score(baseline, groups), bias_score(metrics[name], groups)
    zs = metrics[name].get("zero_shot_accuracy")
    zs_drop = None if zs is None else baseline["zero_shot_accuracy"] - zs
    holds = (before is not None and after is not None and after < before
             and (zs_drop is None or zs_drop <= BEST_ZERO_SHOT_DROP + 1e-12))
    return {"maxskew_occupations_before": before, "maxskew_occupations_after": after,
            "maxskew_occupations_control": None if control not in metrics else bias_score(metrics[control], groups),
            "zero_shot_drop": zs_drop, "holds": bool(holds),
            "maxskew_cut_beyond_noise": [k for k, c in changes.items() if c["beyond_noise"] and c["diff"] < 0],
            "maxskew_rise_beyond_noise": [k for k, c in changes.items() if c["beyond_noise"] and c["diff"] > 0],
            "changes": changes}


def _save_spec(specs_dir: Path, name: str, variant) -> object:
    if isinstance(variant, list):
        paths = []
        for spec in variant:
            tower = spec.edits[0].tower
            spec.save(specs_dir / f"{name}.{tower}.json")
            paths.append(f"specs/{name}.{tower}.json")
        return paths
    variant.save(specs_dir / f"{name}.json")
    return f"specs/{name}.json"


# ---------------------------------------------------------------------------------------------- the run
def run_debiaslens(out_dir, *, model=None, model_name: str = "synthsocial", pretrained: Optional[str] = None,
                   checkpoint: Optional[str] = None, device: str = "cpu", data: str = "synthsocial",
                   attribute: str = "all", tower: str = "both", tau: float = 1.0, top_n: int = 1,
                   alpha: float = 0.6, alphas=None, gamma: float = 0.0, sae=None, text_sae=None,
                   sae_steps: int = SAE_STEPS, n_images: Optional[int] = None, seed: int = 0, n_boot: int = 1000,
                   batch_size: int = 128, progress: bool = True) -> dict:
    """Run DebiasLens end to end and write the report into `out_dir` (see the module docstring).

    attribute: "all" (the union of the gender, ethnicity and age neurons the data has labels for) or one of them.
    tower: "image", "text" or "both" (variants debiaslens_i, debiaslens_t, debiaslens_it).
    tau, top_n: the search (`find_social_neurons`); alpha: the blend of the main variants; alphas: the sweep
    (default `ALPHAS`, α = 0 being the baseline); gamma: the value the selected latents are set to.
    sae / text_sae: SAE folders at the last image / text block (default: shipped or trained here, `sae_steps`).
    Returns the summary dict (also written as summary.json).
    """
    from workbench.evaluation import evaluate_variants
    from workbench.files import check_writable_dir, write_json_atomic, write_text_atomic
    from workbench.method_report import (lowest_within_budget, model_ref, parse_data, thumbnail, write_figure,
                                         write_tables)
    from workbench.methods.debiaslens import (
        ALPHAS,
        ATTRIBUTES,
        TOWER_TAGS,
        alpha_sweep_variants,
        check_alpha,
        check_gamma,
        check_tau,
        check_top_n,
        debiaslens_variants,
        find_social_neurons,
        reconstruction_control,
    )
    from workbench.viz.debiaslens import plot_alpha_sweep, plot_social_neurons

    start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}

    def lap(phase: str) -> None:
        timings[phase] = round(time.perf_counter() - start - sum(timings.values()), 2)

    # every argument is checked before any work, and the output folder first of all
    out = check_writable_dir(out_dir, "debiaslens output folder")
    kind, folder = parse_data(data)
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
    tau, top_n, alpha, gamma = check_tau(tau), check_top_n(top_n), check_alpha(alpha), check_gamma(gamma)
    alphas = sorted({check_alpha(a) for a in (ALPHAS if alphas is None else alphas)} | {alpha})
    if isinstance(sae_steps, bool) or not isinstance(sae_steps, int) or sae_steps < 1:
        raise ValueError(f"sae_steps must be a positive integer, got {sae_steps!r}")
    if n_images is not None and (isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 4):
        raise ValueError(f"n_images must be an integer ≥ 4, got {n_images!r}")
    if model is None:
        from workbench.models import load_clip

        model = load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    reference, gallery, spurious, target, queries = _datasets(kind, folder, seed, n_images)
    keys = reference[0][1]
    ref_labels = dataset_labels(reference)
    # an attribute with one group in the reference set (e.g. a single age bin) has nothing to compare
    available = [a for a in ATTRIBUTES if a in keys and len(torch.unique(ref_labels[a])) >= 2]
    if attribute == "all":
        if not available:
            raise ValueError(f"the {kind} data has no label among {list(ATTRIBUTES)} with two or more groups in "
                             f"the reference set; it has {sorted(keys)}")
        attributes = tuple(available)
    elif attribute not in keys:
        raise ValueError(f"unknown attribute {attribute!r}: the {kind} data has the labels {sorted(keys)}; choose "
                         f"--attribute from {available} or 'all' (their union)")
    elif len(torch.unique(ref_labels[attribute])) < 2:
        raise ValueError(f"--attribute {attribute!r} has a single group in the reference set; the search compares "
                         "groups (use more images, or another attribute)")
    else:
        attributes = (attribute,)
    towers = ("image", "text") if tower == "both" else (tower,)
    sae_paths, sae_info = {}, {}
    if "image" in towers:
        sae_paths["image"], sae_info["image"] = image_side_sae(model, sae, reference, out, sae_steps, seed, progress)
    if "text" in towers:
        sae_paths["text"], sae_info["text"] = text_side_sae(model, text_sae, kind, out, sae_steps, seed, progress)
    lap("load")

    found = {}
    if "image" in towers:
        found["image"] = find_social_neurons(model, sae_paths["image"], reference, attributes=attributes, tau=tau,
                                             top_n=top_n, batch_size=batch_size, progress=progress)
    if "text" in towers:
        prompts, labels, names = text_search_data(kind, reference, attributes)
        found["text"] = find_social_neurons(model, sae_paths["text"], prompts, labels=labels, label_names=names,
                                            attributes=[a for a in attributes if a in labels], tau=tau, top_n=top_n,
                                            batch_size=batch_size, progress=progress)
    pick = None if attribute == "all" else attribute
    variants = debiaslens_variants(model, image=found.get("image"), text=found.get("text"), alpha=alpha, gamma=gamma,
                                   attribute=pick)
    # the main variants are the sweep's points at α
    sweep = alpha_sweep_variants(model, image=found.get("image"), text=found.get("text"),
                                 alphas=[a for a in alphas if a != alpha], gamma=gamma, attribute=pick)
    # controls: the same SAE and α with no latent silenced (the reconstruction error alone)
    controls = {f"control_recon_{TOWER_TAGS[t]}": reconstruction_control(model, n, alpha=alpha)
                for t, n in found.items()}
    main_variants = {**variants, **controls}
    lap("find")

    from workbench.data import prompt_sets

    sets = prompt_sets("synthsocial" if kind == "synthsocial" else "real")
    groups = tuple(available)  # the evaluation's protected attributes: those with ≥ 2 groups (as the search)
    eval_kwargs = {"bias_queries": {"occupations": list(sets.occupations), "stereotypes": list(sets.stereotypes)}}
    if kind != "synthsocial":
        eval_kwargs["word_lists"] = {"adjectives": list(sets.adjectives), "occupations": list(sets.occupations)}
    if queries is not None:
        eval_kwargs["queries"] = queries
    # SynthSocial renders images on demand: render each gallery once (`tensors()`), not once per variant
    images = _in_memory(gallery)
    names_of = getattr(gallery, "label_names", None)
    # the main variants and the controls: every metric; test_spurious's worst-group accuracy joined in
    result = evaluate_variants(model, images, main_variants, target=target, groups=groups, n_boot=n_boot, seed=seed,
                               batch_size=batch_size, progress=progress, label_names=names_of, **eval_kwargs)
    if spurious is not None:
        worst = evaluate_variants(model, _in_memory(spurious), main_variants, target="target", groups=(),
                                  worst_group="spurious", word_lists={}, captions=False, n_boot=n_boot, seed=seed,
                                  batch_size=batch_size, progress=progress, label_names=spurious.label_names)
        result = result.join(worst, metrics=["worst_group_accuracy"])
    # the rest of the α sweep: bias and utility only (no caption retrieval or word lists: the text-side variants
    # would re-encode every caption), on the same gallery, queries and bootstrap seed
    swept = None
    if sweep:
        swept = evaluate_variants(model, images, sweep, target=target, groups=groups, n_boot=n_boot, seed=seed,
                                  batch_size=batch_size, progress=progress, label_names=names_of, captions=False,
                                  **{**eval_kwargs, "word_lists": {}})
    lap("evaluate")

    specs_dir = out / "specs"
    specs_dir.mkdir(exist_ok=True)
    spec_paths = {name: _save_spec(specs_dir, name, v) for name, v in {**main_variants, **sweep}.items()}
    title = f"DebiasLens ({', '.join(towers)}; {attribute}) on {data}"
    metrics, intervals = write_tables(out, result, title, note=f"τ = {tau:g}, top_n = {top_n}, α = {alpha:g}, "
                                      f"γ = {gamma:g}; control_recon_*: the same SAE and α with no latent silenced. "
                                      "The rest of the α sweep: alpha_sweep.csv.")
    sweep_metrics, sweep_intervals = {}, {}
    if swept is not None:
        t = swept.table
        sweep_metrics = {v: dict(zip(g["metric"], g["value"])) for v, g in t.groupby("variant", sort=False)}
        sweep_intervals = {v: {m: [lo, hi] for m, lo, hi in zip(g["metric"], g["lo"], g["hi"])}
                           for v, g in t.groupby("variant", sort=False)}
    for t, neurons in found.items():
        write_text_atomic(out / f"neurons_{t}.csv", neurons.table.to_csv(index=False, float_format="%.6g"))
    tags = [tag for tag in ("i", "t", "it") if f"debiaslens_{tag}" in variants]
    sweep_frame = _sweep_table({**sweep_metrics, **metrics}, {**sweep_intervals, **intervals}, groups, alphas, alpha,
                               tags)
    write_text_atomic(out / "alpha_sweep.csv", sweep_frame.to_csv(index=False, float_format="%.6g"))

    figures = out / "figures"
    for t, neurons in found.items():
        top = neurons.top_items(TOP_IMAGES)
        examples = {}
        for latent, rows in top.groupby("latent", sort=False):
            idx = rows["index"].tolist()
            examples[int(latent)] = ([thumbnail(reference, i, size=64) for i in idx] if t == "image"
                                     else [prompts[i] for i in idx])
        write_figure(figures, f"neurons_{t}", plot_social_neurons(
            neurons, examples, title=f"{t} side: selected latents at {neurons.site} (τ = {tau:g}), their top "
                                     f"{'images' if t == 'image' else 'prompts'} and mean activation by group"))
    if len(sweep_frame):
        utility = next((m for m in ("zero_shot_accuracy", "map") if m in sweep_frame.columns), None)
        write_figure(figures, "alpha_sweep", plot_alpha_sweep(
            sweep_frame, utility=utility, title=f"α sweep: bias (mean MaxSkew over {', '.join(groups)}) vs utility"))

    lap("write")
    baseline = metrics["baseline"]
    names = [v for v in result.variants if v != "baseline"]
    sweep_names = [v for v in sweep_metrics if v != "baseline"]
    every = {**sweep_metrics, **metrics}
    candidates = {v: every[v] for v in [*names, *sweep_names] if v.startswith("debiaslens_")}
    best = lowest_within_budget(baseline, candidates, lambda m: bias_score(m, groups),
                                {"zero_shot_accuracy": BEST_ZERO_SHOT_DROP})
    if best is not None and bias_score(candidates[best], groups) >= (bias_score(baseline, groups) or 0.0):
        best = None  # nothing lowers bias within the utility budget
    summary = {
        "method": "debiaslens", "model": model_ref(model), "data": data, "attribute": attribute,
        "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "timings": timings,
        "baseline": baseline,
        "variants": [{"name": v, "metrics": metrics[v], "intervals": intervals[v], "spec": spec_paths.get(v),
                      "path": result.paths.get(v)} for v in names]
        + [{"name": v, "metrics": sweep_metrics[v], "intervals": sweep_intervals[v], "spec": spec_paths.get(v),
            "path": swept.paths.get(v), "sweep": True} for v in sweep_names],
        "best": best,
        "target": {f"debiaslens_{tag}": _target(result, baseline, metrics, groups, f"debiaslens_{tag}",
                                                f"control_recon_{tag}") for tag in tags},
        "alpha_sweep": [{k: None if isinstance(v, float) and v != v else v for k, v in r.items()}  # NaN → null
                        for r in sweep_frame.to_dict("records")],
        "settings": {"tower": tower, "tau": tau, "top_n": top_n, "alpha": alpha, "alphas": alphas, "gamma": gamma,
                     "groups": list(groups), "attributes": list(attributes), "sae_steps": sae_steps, "seed": seed,
                     "n_boot": n_boot},
        "saes": {t: {"path": sae_paths[t], **sae_info[t]} for t in sae_paths},
        "neurons": {t: n.summary() for t, n in found.items()},
        "reference": repr(reference), "gallery": repr(gallery), "spurious": repr(spurious) if spurious else None,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- command line
def _alphas_arg(text: Optional[str]):
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers in [0, 1] (e.g. 0,0.5,1), got {text!r}") from None


def cmd_debiaslens(args) -> int:
    """`workbench debiaslens`: run_debiaslens with the parsed arguments; prints where the report is and the target."""
    summary = run_debiaslens(args.out, model_name=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                             device=args.device, data=args.data, attribute=args.attribute, tower=args.tower,
                             tau=args.tau, top_n=args.top_n, alpha=args.alpha, alphas=_alphas_arg(args.alphas),
                             gamma=args.gamma, sae=args.sae,
                             text_sae=args.text_sae, sae_steps=args.sae_steps, n_images=args.n_images,
                             seed=args.seed, n_boot=args.n_boot, progress=not args.quiet)
    lines = []
    for name, t in summary["target"].items():
        if t is None:
            continue
        control = t["maxskew_occupations_control"]
        lines.append(f"{name}: mean MaxSkew {t['maxskew_occupations_before']:.4f} → "
                     f"{t['maxskew_occupations_after']:.4f}"
                     + ("" if control is None else f" (reconstruction-only control {control:.4f})")
                     + ("" if t["zero_shot_drop"] is None else f", zero-shot {-100 * t['zero_shot_drop']:+.1f} pts")
                     + f", target {'met' if t['holds'] else 'not met'}")
    union = {t: n["union"] for t, n in summary["neurons"].items()}
    print(f"wrote {Path(args.out) / 'summary.json'} ({len(summary['variants'])} variants, {summary['seconds']:.0f} s); "
          f"selected latents {union}; best: {summary['best']}")
    for line in lines:
        print("  " + line)
    return 0


def add_parser(sub) -> None:
    """Register `workbench debiaslens` on the console script's subparsers."""
    from workbench.method_report import add_model_args

    p = sub.add_parser("debiaslens", help="DebiasLens: social neurons on SAEs, silenced at inference; evaluate, report "
                                          "(docs/debiaslens.md)")
    add_model_args(p)
    p.add_argument("--data", default="synthsocial", help="synthsocial | fairface:DIR | utkface:DIR | sispi:DIR | "
                   "celeba:DIR | waterbirds:DIR (a local folder, split in a reference and a gallery half)")
    p.add_argument("--attribute", default="all", help="all (the union of gender, ethnicity and age neurons; default) "
                   "or one of them")
    p.add_argument("--tower", choices=TOWERS, default="both", help="where to intervene (default: both, which also "
                   "evaluates each side alone)")
    p.add_argument("--tau", type=float, default=1.0, help="a social neuron fires on at least this share of its "
                   "group's inputs (default 1.0)")
    p.add_argument("--top-n", type=int, default=1, help="latents selected per group (default 1: the top one)")
    p.add_argument("--alpha", type=float, default=0.6, help="blend h' = α·decode(z) + (1 − α)·h (default 0.6)")
    p.add_argument("--alphas", default=None, help="the α sweep, comma-separated (default 0,0.2,0.4,0.5,0.6,0.8,1; "
                   "0 is the baseline)")
    p.add_argument("--gamma", type=float, default=0.0, help="value the selected latents are set to (default 0)")
    p.add_argument("--sae", default=None, help="image SAE folder at the last image block (default: the shipped one "
                   "for the embedded model, else trained here)")
    p.add_argument("--text-sae", default=None, help="text SAE folder at the last text block (default: trained here)")
    p.add_argument("--sae-steps", type=int, default=SAE_STEPS, help="steps of an SAE trained here (× 1024 rows)")
    p.add_argument("--n-images", type=int, default=None, help="cap on reference and gallery sizes")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="report folder (checked to be writable before any work)")
    p.set_defaults(func=cmd_debiaslens)
