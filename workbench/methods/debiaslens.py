"""DebiasLens: find the SAE latents ("social neurons") that fire for one group only, and silence them at
inference time (docs/debiaslens.md, docs/methods.md).

    from workbench.saes import load_sae
    neurons = find_social_neurons(model, "synthsocial/image-resid-last", SynthSocial("test_balanced", seed=1))
    neurons                      # SocialNeurons(...): what was found per attribute and group
    neurons.table                # attribute, group, latent, frequency, mean_activation, ..., exclusive, selected
    spec = debiaslens_spec(model, neurons, alpha=0.6)           # an InterventionSpec (sae_latent edits, the SAE, α)
    variants = debiaslens_variants(model, image=neurons, text=text_neurons)   # for evaluate_variants

1. Latents. The SAE is spliced at its site (a block's `hook_resid_post`, every token) with the error term, and
   `{site}.hook_sae_acts_post` is extracted in one pass (`workbench.activations.extract` / `extract_text`,
   position "all"). An input's activation of latent j is its **mean over tokens**: every token of an image
   (CLS and patches, as the authors' code mean-pools SAE activations); for a prompt, the tokens it occupies
   (start token to EOT) — the padding after EOT has a length set by the context size, not by the prompt.
2. Search, per attribute and group g (S_g = the inputs of group g, a_j(x) the pooled activation):
       freq_g[j] = |{x ∈ S_g : a_j(x) > 0}| / |S_g|
       E_g = {j : freq_g[j] ≥ τ}                     (τ = 1.0: "consistently activated")
       N_g = E_g minus E_g' for every other group g' of the attribute
       j*_g = argmax_{j ∈ N_g} mean_{x ∈ S_g} a_j(x)  (top_n > 1: the top_n of N_g)
   The selected latents of an attribute are its groups' j*_g; the union across attributes is what the
   intervention silences by default.
3. Intervention, at the SAE's site: z = encode(h); z_j = γ (0) for the selected j; h' = α·decode(z) + (1 − α)·h
   (α = 0.6). As `sae_latent` edits (op "zero", or "set" to γ) in an `InterventionSpec` that records the SAE's
   folder and α, so `apply(model, spec)` re-applies it exactly. On the text tower the causal mask stays (the
   hooked tower keeps it; the authors' re-implemented block drops it).

`debiaslens(...)` (registered as method "debiaslens") runs steps 1–3 for one SAE.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .registry import register_method

__all__ = ["SocialNeurons", "social_neurons", "latent_activations", "find_social_neurons", "debiaslens_edits",
           "debiaslens_spec", "reconstruction_control", "debiaslens_variants", "alpha_sweep_variants", "debiaslens",
           "ATTRIBUTES", "ALPHA", "ALPHAS", "TOWER_TAGS"]

ATTRIBUTES = ("gender", "ethnicity", "age")
ALPHA = 0.6  # the authors' default blend
ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)  # the authors' sweep
TOWER_TAGS = {"image": "i", "text": "t"}
TABLE_COLUMNS = ["attribute", "group", "latent", "frequency", "mean_activation", "other_frequency",
                 "other_mean_activation", "exclusive", "selected"]


# ============================================================================================== checks
def check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < float(tau) <= 1:
        raise ValueError(f"tau must be a fraction in (0, 1] (a latent must fire on at least this share of a group's "
                         f"inputs), got {tau!r}")
    return float(tau)


def check_top_n(top_n) -> int:
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be a positive integer (latents selected per group), got {top_n!r}")
    return top_n


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= float(alpha) <= 1:
        raise ValueError(f"alpha must be in [0, 1] (h' = α·decode(z) + (1 − α)·h; 0 leaves the model unchanged, "
                         f"1 replaces h by the edited reconstruction), got {alpha!r}")
    return float(alpha)


def check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not torch.isfinite(torch.tensor(float(gamma))):
        raise ValueError(f"gamma must be a finite number (the value the selected latents are set to), got {gamma!r}")
    return float(gamma)


def _check_attributes(attributes, available: Sequence[str]) -> tuple[str, ...]:
    if isinstance(attributes, str):
        attributes = (attributes,)
    attributes = tuple(attributes)
    if not attributes:
        raise ValueError(f"attributes is empty; choose from {sorted(available)}")
    unknown = [a for a in attributes if a not in available]
    if unknown:
        raise ValueError(f"unknown attribute {unknown[0]!r}: the labels have {sorted(available)}; choose the "
                         f"protected attributes from them (e.g. {list(a for a in ATTRIBUTES if a in available)})")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes repeat: {list(attributes)}")
    return attributes


# ============================================================================================== result
@dataclass
class SocialNeurons:
    """What the social-neuron search found on one SAE.

    table: tidy DataFrame, one row per (attribute, group, latent) with latent ∈ E_g (it fires on ≥ τ of the
        group's inputs): frequency (share of the group's inputs it fires on), mean_activation (its mean over
        them), other_frequency / other_mean_activation (the same over the attribute's other groups),
        exclusive (latent ∈ N_g), selected (among the group's top_n exclusive latents by mean activation).
    selected: {attribute: [latents]} (j*_g of every group, in group order, no repeats).
    acts [n, d_sae]: the pooled latents of every input; labels {attribute: codes [n]} (−1: not labelled);
    label_names {attribute: group names}; site, tower, sae_path (the SAE's folder, for specs; None for an SAE
    given as an object), tau, top_n, pooling (how tokens were pooled), data (what was searched).
    """

    table: Any
    selected: dict
    acts: Tensor
    labels: dict
    label_names: dict
    site: Optional[str] = None
    tower: str = "image"
    sae_path: Optional[str] = None
    tau: float = 1.0
    top_n: int = 1
    pooling: str = "mean over tokens"
    data: str = ""

    @property
    def attributes(self) -> list[str]:
        return list(self.selected)

    def latents(self, attribute: Optional[str] = None) -> list[int]:
        """The selected latents of `attribute`, or (None, "all", "union") the union across attributes, sorted."""
        if attribute in (None, "all", "union"):
            return sorted({j for latents in self.selected.values() for j in latents})
        if attribute not in self.selected:
            raise ValueError(f"no attribute {attribute!r} in this search; it covers {self.attributes} (or 'all' for "
                             "their union)")
        return sorted(self.selected[attribute])

    def group_activations(self, latents: Optional[Sequence[int]] = None):
        """Tidy DataFrame: attribute, group, latent, n, mean_activation, frequency of `latents` (default the
        union) on every group of every attribute (the "activation by group" figure's data)."""
        import pandas as pd

        latents = self.latents() if latents is None else [int(j) for j in latents]
        rows = []
        for attribute in self.attributes:
            codes = self.labels[attribute]
            names = self.label_names.get(attribute)
            for g in sorted(c for c in torch.unique(codes).tolist() if c >= 0):
                a = self.acts[codes == g][:, latents]
                for j, mean, freq in zip(latents, a.double().mean(0).tolist(), (a > 0).double().mean(0).tolist()):
                    rows.append({"attribute": attribute, "group": _name(names, g), "latent": j, "n": len(a),
                                 "mean_activation": mean, "frequency": freq})
        return pd.DataFrame(rows, columns=["attribute", "group", "latent", "n", "mean_activation", "frequency"])

    def top_items(self, k: int = 8, latents: Optional[Sequence[int]] = None):
        """The k inputs activating each latent most (`LatentStats.top_k` on the pooled latents): latent, rank,
        index (the input's row in the searched data), value."""
        from workbench.saes import LatentStats

        latents = self.latents() if latents is None else list(latents)
        if not latents:
            import pandas as pd

            return pd.DataFrame(columns=["latent", "rank", "index", "value"])
        return LatentStats(self.acts).top_k(k, latents=latents)

    def plot(self, examples: Optional[Mapping[int, Sequence]] = None, title: Optional[str] = None):
        """`workbench.viz.debiaslens.plot_social_neurons`: each selected latent's mean activation by group, beside
        its top inputs when `examples` gives them ({latent: images [3, h, w] or prompts})."""
        from workbench.viz.debiaslens import plot_social_neurons

        return plot_social_neurons(self, examples or {}, title=title)

    def summary(self) -> dict:
        """JSON-ready: site, tower, τ, top_n, pooling, sizes, and per attribute and group |E_g|, |N_g| and the
        selected latents."""
        t = self.table
        groups = {}
        for attribute in self.attributes:
            names = self.label_names.get(attribute)
            codes = self.labels[attribute]
            per = {}
            for g in sorted(c for c in torch.unique(codes).tolist() if c >= 0):
                name = _name(names, g)
                rows = t[(t["attribute"] == attribute) & (t["group"] == name)]
                per[str(name)] = {"n": int((codes == g).sum()), "consistent": int(len(rows)),
                                  "exclusive": int(rows["exclusive"].sum()),
                                  "selected": [int(j) for j in rows[rows["selected"]]["latent"]]}
            groups[attribute] = per
        return {"site": self.site, "tower": self.tower, "sae": self.sae_path, "tau": self.tau, "top_n": self.top_n,
                "pooling": self.pooling, "n_inputs": int(self.acts.shape[0]), "d_sae": int(self.acts.shape[1]),
                "data": self.data, "groups": groups, "selected": {a: list(v) for a, v in self.selected.items()},
                "union": self.latents()}

    def __repr__(self) -> str:
        found = "; ".join(f"{a}: {self.selected[a] or 'none'}" for a in self.attributes)
        return (f"SocialNeurons(site={self.site!r}, tower={self.tower!r}, tau={self.tau:g}, top_n={self.top_n}, "
                f"n={self.acts.shape[0]}, d_sae={self.acts.shape[1]}, selected {{{found}}}, union={self.latents()})")


def _name(names, code: int):
    return names[code] if names is not None and 0 <= code < len(names) else code


# ============================================================================================== search
def social_neurons(acts: Tensor, labels: Mapping[str, Tensor], attributes: Optional[Sequence[str]] = None,
                   tau: float = 1.0, top_n: int = 1, label_names: Optional[Mapping[str, Sequence[str]]] = None,
                   **info) -> SocialNeurons:
    """The social-neuron search on pooled latents `acts` [n, d_sae] (≥ 0, one row per input).

    labels: {attribute: group codes [n]}; a code < 0 leaves the input out of that attribute (e.g. a prompt
    labelled for gender only). Each attribute needs ≥ 2 groups. attributes: default those of `ATTRIBUTES`
    present in `labels`. tau ∈ (0, 1]; top_n ≥ 1. `info` fills the other `SocialNeurons` fields (site, tower,
    sae_path, pooling, data). Definitions: the module docstring.
    """
    import pandas as pd

    if not isinstance(acts, Tensor) or acts.ndim != 2 or acts.shape[0] == 0 or acts.shape[1] == 0:
        raise ValueError(f"acts must be a non-empty tensor [n, d_sae] of pooled latents, got "
                         f"{getattr(acts, 'shape', type(acts).__name__)}")
    if not acts.is_floating_point() or not bool(torch.isfinite(acts).all()):
        raise ValueError("acts must be finite floating-point latents")
    tau, top_n = check_tau(tau), check_top_n(top_n)
    n = acts.shape[0]
    labels = {k: torch.as_tensor(v).long().cpu() for k, v in labels.items()}
    if attributes is None:
        attributes = [a for a in ATTRIBUTES if a in labels]
        if not attributes:
            raise ValueError(f"none of {list(ATTRIBUTES)} is in the labels ({sorted(labels)}); pass attributes=...")
    attributes = _check_attributes(attributes, list(labels))
    acts = acts.detach().float().cpu()
    names = {k: list(v) for k, v in (label_names or {}).items()}
    rows, selected = [], {}
    for attribute in attributes:
        codes = labels[attribute]
        if tuple(codes.shape) != (n,):
            raise ValueError(f"labels[{attribute!r}] has shape {tuple(codes.shape)}, expected ({n},): one per input")
        groups = sorted(c for c in torch.unique(codes).tolist() if c >= 0)
        if len(groups) < 2:
            raise ValueError(f"attribute {attribute!r} has {len(groups)} group(s) among the inputs; the search "
                             "compares groups, so it needs at least 2")
        fires = acts > 0
        freq = torch.stack([fires[codes == g].double().mean(0) for g in groups])  # [groups, d_sae]
        mean = torch.stack([acts[codes == g].double().mean(0) for g in groups])
        consistent = freq >= tau  # E_g as a mask, one row per group
        chosen = []
        for i, g in enumerate(groups):
            others = [k for k in range(len(groups)) if k != i]
            exclusive = consistent[i] & ~consistent[others].any(0)  # N_g
            candidates = exclusive.nonzero().flatten()
            # top_n of N_g by mean activation on g; ties keep the lower latent first (a stable sort)
            order = torch.sort(mean[i, candidates], descending=True, stable=True).indices[:top_n]
            picks = set(candidates[order].tolist())
            other_rows = acts[(codes >= 0) & (codes != g)]
            other_freq = (other_rows > 0).double().mean(0)
            other_mean = other_rows.double().mean(0)
            members = consistent[i].nonzero().flatten()
            members = members[torch.sort(mean[i, members], descending=True, stable=True).indices]
            for j in members.tolist():  # E_g, highest mean activation first
                rows.append({"attribute": attribute, "group": _name(names.get(attribute), g), "latent": j,
                             "frequency": float(freq[i, j]), "mean_activation": float(mean[i, j]),
                             "other_frequency": float(other_freq[j]), "other_mean_activation": float(other_mean[j]),
                             "exclusive": bool(exclusive[j]), "selected": j in picks})
            chosen += [int(j) for j in candidates[order].tolist() if j not in chosen]
        selected[attribute] = chosen
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return SocialNeurons(table=table, selected=selected, acts=acts, labels={a: labels[a] for a in attributes},
                         label_names={a: names[a] for a in attributes if a in names}, tau=tau, top_n=top_n, **info)


def _resolve_sae(model, sae, site: Optional[str]):
    """(sae_lens SAE, its folder or None, site) from a path / shipped name (loaded with `load_sae`, checked
    against the model and site) or an SAE object."""
    from workbench.models.splice import sae_site
    from workbench.saes import load_sae, resolve_sae_path

    if isinstance(sae, (str, os.PathLike)):
        path = resolve_sae_path(sae).resolve()
        sae = load_sae(path, model=model, site=site)
        return sae, str(path), sae_site(sae, site)
    for attr in ("encode", "decode", "cfg"):
        if not hasattr(sae, attr):
            raise TypeError(f"sae must be a saved SAE's folder, a shipped name (e.g. 'synthsocial/image-resid-last') "
                            f"or a sae_lens SAE, got {type(sae).__name__}")
    return sae, None, sae_site(sae, site)


def _text_lengths(model, prompts: Sequence[str]) -> Tensor:
    """Tokens each prompt occupies, start token to EOT inclusive: [n]."""
    from workbench.models.hook_names import pooled_index

    return pooled_index(model, "text", model.tokenize(list(prompts)).cpu()).cpu().long() + 1


@torch.no_grad()
def latent_activations(model, sae, data, site: Optional[str] = None, batch_size: int = 64,
                       progress: bool = True) -> tuple[Tensor, dict, dict]:
    """One extraction pass of the SAE's latents, mean-pooled over tokens: (acts [n, d_sae], labels {key: [n]},
    label names). `sae` is spliced at `site` (default its recorded one) with the error term for the pass.

    data: an image dataset (as `extract` takes it) for image sites, a list of prompts for text sites (no labels
    then: pass them to `social_neurons`). Pooling: every token of an image; a prompt's own tokens (start to EOT).
    """
    from workbench.activations import extract, extract_text
    from workbench.models.splice import sae_site
    from workbench.saes import latent_hook

    site = sae_site(sae, site)
    hook = latent_hook(site)
    text = site.startswith("text.")
    if text and (isinstance(data, str) or not isinstance(data, Sequence) or not all(isinstance(p, str) for p in data)):
        raise TypeError(f"{site!r} is a text-tower site: pass the inputs as a list of prompts")
    if not text and isinstance(data, Sequence) and data and all(isinstance(p, str) for p in data):
        raise TypeError(f"{site!r} is an image-tower site but the data is a list of prompts; pass an image dataset")
    if site in model.spliced_saes():
        raise ValueError(f"an SAE is already spliced at {site!r}; remove it first (model.remove_saes({site!r}))")
    run = extract_text if text else extract
    with model.saes((sae, site), use_error_term=True):
        store = run(model, data, [hook], batch_size=batch_size, position="all", progress=progress)
    z = store[hook].float()  # [n, pos, d_sae]
    if z.ndim != 3:
        raise ValueError(f"{site!r} has no token axis (latents {list(z.shape)}); DebiasLens's search runs on a "
                         "block's residual stream (e.g. 'blocks.11.hook_resid_post')")
    if text:
        lengths = _text_lengths(model, data)
        mask = (torch.arange(z.shape[1])[None, :] < lengths[:, None]).float()  # [n, pos]
        acts = (z * mask[..., None]).sum(1) / lengths[:, None].float()
    else:
        acts = z.mean(1)
    labels = {k: torch.as_tensor(v).long() for k, v in (store.labels or {}).items()}
    return acts, labels, dict(store.label_names or {})


def find_social_neurons(model, sae, data, attributes: Optional[Sequence[str]] = None, tau: float = 1.0,
                        top_n: int = 1, labels: Optional[Mapping[str, Sequence[int]]] = None,
                        label_names: Optional[Mapping[str, Sequence[str]]] = None, site: Optional[str] = None,
                        batch_size: int = 64, progress: bool = True) -> SocialNeurons:
    """Extract the SAE's mean-pooled latents over `data` (`latent_activations`) and run `social_neurons`.

    sae: a saved SAE's folder or a shipped name (e.g. "synthsocial/image-resid-last"; loaded with `load_sae`,
        checked against the model and site; its folder goes into specs), or a sae_lens SAE object.
    data: a labelled image dataset, or a list of prompts with `labels` {attribute: codes} (−1: not labelled).
    tau, top_n: see `social_neurons`; checked before the extraction pass.
    """
    tau, top_n = check_tau(tau), check_top_n(top_n)
    sae, path, site = _resolve_sae(model, sae, site)
    text = site.startswith("text.")
    if text and labels is None:
        raise ValueError("prompts carry no labels: pass labels={attribute: [code per prompt]} (−1 where a prompt "
                         "does not name the attribute)")
    if attributes is not None:  # checked before the pass, not after
        if labels is not None:
            keys = labels
        else:
            item = data[0] if hasattr(data, "__getitem__") and len(data) else None
            keys = item[1] if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping) else {}
        _check_attributes(attributes, list(keys))
    acts, found, names = latent_activations(model, sae, data, site=site, batch_size=batch_size, progress=progress)
    if labels is not None:
        found = {k: torch.as_tensor(v).long() for k, v in labels.items()}
    if label_names is not None:
        names = dict(label_names)
    if label_names is None and not names:
        names = dict(getattr(data, "label_names", {}) or {})
    pooling = ("mean over the prompt's tokens (start token to EOT; padding excluded)" if text
               else "mean over all tokens (CLS and patches)")
    described = f"{len(data)} prompts" if text else repr(data)
    return social_neurons(acts, found, attributes, tau=tau, top_n=top_n, label_names=names, site=site,
                          tower="text" if text else "image", sae_path=path, pooling=pooling, data=described)


# ============================================================================================== intervention
def debiaslens_edits(latents: Sequence[int], site: str, gamma: float = 0.0):
    """The intervention as edits: one `sae_latent` edit on the SAE at `site`, every token, setting `latents` to γ
    (op "zero" for γ = 0, else "set")."""
    from workbench.models.hook_names import hook_tower
    from workbench.primitives import ablate_latents

    gamma = check_gamma(gamma)
    latents = [int(j) for j in latents]
    if not latents:
        raise ValueError("no latents to silence: the search selected none (try a lower tau, or another attribute)")
    tower = hook_tower(site)
    if gamma == 0.0:
        return ablate_latents(latents, op="zero", hook=site, position="all", tower=tower)
    return ablate_latents(latents, op="set", value=gamma, hook=site, position="all", tower=tower)


def debiaslens_spec(model, neurons: SocialNeurons, alpha: float = ALPHA, gamma: float = 0.0,
                    attribute: Optional[str] = None, sae_path: Union[None, str, os.PathLike] = None, **provenance):
    """An `InterventionSpec` silencing the selected latents of `neurons` (`attribute`, default the union) with
    blend α: sae_latent edits at the SAE's site, the SAE's folder (`sae_path`, default `neurons.sae_path`) and α.
    `apply(model, spec)` runs it (the SAE as a separate pass at its site, not spliced)."""
    from workbench.primitives import InterventionSpec

    alpha = check_alpha(alpha)
    path = sae_path if sae_path is not None else neurons.sae_path
    if path is None:
        raise ValueError("the spec must name the SAE's folder: pass sae_path=..., or search with the SAE given as a "
                         "folder or shipped name (save an SAE object first with workbench.saes.save_sae)")
    edits = debiaslens_edits(neurons.latents(attribute), neurons.site, gamma)
    fields = {"dataset": neurons.data, "attribute": attribute or "all", "tau": neurons.tau, "top_n": neurons.top_n,
              "gamma": float(gamma), **provenance}
    return InterventionSpec.from_edits(model, edits, sae=Path(path).resolve(), alpha=alpha, method="debiaslens",
                                       **fields)


def reconstruction_control(model, neurons: SocialNeurons, alpha: float = ALPHA, **provenance):
    """The control for `debiaslens_spec`: the same SAE, site and blend α with no latent changed (one latent scaled
    by 1), i.e. h' = α·decode(encode(h)) + (1 − α)·h. What it does to the metrics is the SAE's reconstruction
    error alone; the difference to the DebiasLens variant is the effect of silencing the latents."""
    from workbench.primitives import InterventionSpec, ablate_latents

    alpha = check_alpha(alpha)
    if neurons.sae_path is None:
        raise ValueError("the spec must name the SAE's folder: search with the SAE given as a folder or shipped name")
    from workbench.models.hook_names import hook_tower

    edits = ablate_latents([0], op="scale", factor=1.0, hook=neurons.site, position="all",
                           tower=hook_tower(neurons.site))
    return InterventionSpec.from_edits(model, edits, sae=Path(neurons.sae_path).resolve(), alpha=alpha,
                                       method="debiaslens", dataset=neurons.data, control="reconstruction_only",
                                       **provenance)


def _tower_specs(model, image, text, alpha, gamma, attribute) -> dict:
    specs = {}
    for tower, neurons in (("image", image), ("text", text)):
        if neurons is None:
            continue
        if neurons.tower != tower:
            raise ValueError(f"{tower}=... needs a search on the {tower} tower; this one ran at {neurons.site!r} "
                             f"({neurons.tower} tower)")
        if neurons.latents(attribute):
            specs[tower] = debiaslens_spec(model, neurons, alpha=alpha, gamma=gamma, attribute=attribute)
    return specs


def debiaslens_variants(model, image: Optional[SocialNeurons] = None, text: Optional[SocialNeurons] = None,
                        alpha: float = ALPHA, gamma: float = 0.0, attribute: Optional[str] = None,
                        suffix: str = "") -> dict:
    """{name: variant} for `evaluate_variants`: "debiaslens_i" (image side), "debiaslens_t" (text side) and
    "debiaslens_it" (both: a list of the two specs) at blend α, each silencing `attribute`'s selected latents
    (default the union). A tower whose search selected nothing gets no variant (nor does "_it")."""
    specs = _tower_specs(model, image, text, check_alpha(alpha), gamma, attribute)
    out = {f"debiaslens_{TOWER_TAGS[t]}{suffix}": spec for t, spec in specs.items()}
    if len(specs) == 2:
        out[f"debiaslens_it{suffix}"] = [specs["image"], specs["text"]]
    return out


def alpha_sweep_variants(model, image: Optional[SocialNeurons] = None, text: Optional[SocialNeurons] = None,
                         alphas: Sequence[float] = ALPHAS, gamma: float = 0.0, attribute: Optional[str] = None) -> dict:
    """`debiaslens_variants` at every α of `alphas` except 0 (the unedited model: the baseline), named
    "debiaslens_{i,t,it}_a{α}" (e.g. "debiaslens_i_a0.6")."""
    alphas = [check_alpha(a) for a in alphas]
    out = {}
    for a in alphas:
        if a > 0:
            out.update(debiaslens_variants(model, image, text, alpha=a, gamma=gamma, attribute=attribute,
                                           suffix=f"_a{a:g}"))
    return out


@register_method("debiaslens")
def debiaslens(model, sae, data, attributes: Optional[Sequence[str]] = None, tau: float = 1.0, top_n: int = 1,
               alpha: float = ALPHA, gamma: float = 0.0, labels=None, label_names=None, batch_size: int = 64,
               progress: bool = True):
    """DebiasLens on one SAE end to end: `find_social_neurons`, then the spec silencing the union of the
    selected latents at blend α. Returns (SocialNeurons, InterventionSpec or None when nothing was selected)."""
    alpha = check_alpha(alpha)
    neurons = find_social_neurons(model, sae, data, attributes=attributes, tau=tau, top_n=top_n, labels=labels,
                                  label_names=label_names, batch_size=batch_size, progress=progress)
    spec = debiaslens_spec(model, neurons, alpha=alpha, gamma=gamma) if neurons.latents() else None
    return neurons, spec
