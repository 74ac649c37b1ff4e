"""SEM — Sparse Embedding Modulation: debias text embeddings in the latent space of an SAE (docs/sem.md).

    sem = SEM.fit(model, "synthsocial/text-embed", prompt_sets("synthsocial"), attribute="gender")
    t = sem.debias(["a photo of a nurse"], variant="sem_bi")       # [1, d_embed], unnormalised
    sem.latent_table()                                               # s_b and the diverse median per latent
    sem.to_spec("sem_b").save("specs/sem_b.json")                   # SEMb as an InterventionSpec

Z(·) are the SAE latents of the *unnormalised* text embedding (`text.hook_text_embed`). Reference sets: the
diverse prompts D (`PromptSets.diverse`), each query's paraphrases P_q (`PromptSets.paraphrases`, with the query
itself, as in the authors' prompt files) and the bias prompts B_b of each class b of the attribute
(`PromptSets.bias[attribute]`). With rank_S(v)[j] = |{s ∈ S : Z(s)[j] < v[j]}| / |S| (strict) and medians taken
as torch's lower median (the authors' code):

    s_c = rank_D(Z(q))                 (SEMb)      s_c = rank_D(median_{P_q} Z)    (SEMi, SEMbi)
    s_b = max_b min(rank_D(m_b), rank_{B_¬b}(m_b)),  m_b = median_{B_b} Z,  B_¬b = the other classes' prompts
    M   = s_c²                         (SEMi, in [0, 1])
    M   = (1 + s_c − s_b)²             (SEMb, SEMbi, in [0, 4])
    z'  = M ⊙ z_in + (1 − M) ⊙ median_D Z,   z_in = Z(q) (SEMb, SEMbi) or median_{P_q} Z (SEMi)
    t'  = decode(z')                   (no error term)

Encoding: `encode="sae"` (default) uses the SAE's own encode — for the shipped top-k SAE the top 64 of 512
latents — and `encode="relu"` the paper's inference encode, ReLU of the pre-activations without the top-k.
On the shipped text SAE the top-k encode reconstructs the prompt sets better (explained variance 0.981 vs 0.934
with ReLU: the SAE was trained with the top-k), and only it exports: a spec's SAE pass calls the SAE's encode.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .registry import register_method

__all__ = ["SEM", "VARIANTS", "ENCODINGS", "SITE", "percentile_rank", "lower_median", "bias_sensitivity",
           "modulation", "sem_variants", "relu_latents"]

SITE = "text.hook_text_embed"
VARIANTS = ("sem_i", "sem_b", "sem_bi")
ENCODINGS = ("sae", "relu")


# ---------------------------------------------------------------------------------------------- the formulas
def percentile_rank(reference: Tensor, values: Tensor) -> Tensor:
    """rank_S(v)[j] = |{s ∈ S : s[j] < v[j]}| / |S| (strict <): reference [n, d], values [m, d] → [m, d]."""
    counts = (reference.unsqueeze(0) < values.unsqueeze(1)).sum(dim=1)
    return counts.float() / reference.shape[0]


def lower_median(x: Tensor) -> Tensor:
    """Per-coordinate median over rows, [n, d] → [d]; for an even n the lower of the two middle values
    (torch.median, as the authors' code)."""
    return x.median(dim=0).values


def bias_sensitivity(diverse: Tensor, classes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """s_b = max_b min(rank_D(m_b), rank_{B_¬b}(m_b)) with m_b the median latent of class b.

    diverse [|D|, d]; classes: one [n_b, d] latent matrix per bias class (≥ 2). Returns (s_b [d] in [0, 1],
    per-class scores [n_classes, d] = min(general, specific) before the max)."""
    per_class = []
    for b, own in enumerate(classes):
        median = lower_median(own)[None]
        others = torch.cat([c for i, c in enumerate(classes) if i != b])
        general = percentile_rank(diverse, median)[0]
        specific = percentile_rank(others, median)[0]
        per_class.append(torch.minimum(general, specific))
    per_class_t = torch.stack(per_class)
    s_b = torch.zeros(diverse.shape[1], dtype=torch.float32, device=diverse.device)
    for scores in per_class:  # max over classes, initialised at 0
        s_b = torch.maximum(s_b, scores)
    return s_b, per_class_t


def modulation(s_c: Tensor, s_b: Optional[Tensor] = None) -> Tensor:
    """M = s_c² without a bias score (SEMi), (1 + s_c − s_b)² with one (SEMb, SEMbi)."""
    return s_c ** 2 if s_b is None else (1 + s_c - s_b) ** 2


def relu_latents(sae, x: Tensor) -> Tensor:
    """ReLU of the SAE's pre-activations (its encode without the top-k), in the units its decode expects.

    For a top-k SAE the top-k entries equal `sae.encode(x)`; for a ReLU ("standard") SAE this is its encode."""
    arch = sae.cfg.architecture() if callable(getattr(sae.cfg, "architecture", None)) else None
    if arch not in ("topk", "standard"):
        raise ValueError(f"encode='relu' reads the pre-activations of a top-k or standard (ReLU) SAE; this SAE is "
                         f"{arch!r}: use encode='sae' (its own encode)")
    pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        pre = pre * sae.W_dec.norm(dim=-1)  # what the top-k encode does before selecting, undone by decode
    return pre.relu()


# ---------------------------------------------------------------------------------------------- the fitted method
def select_classes(bias: Mapping[str, Sequence[str]], classes: Optional[Sequence[str]], attribute) -> dict:
    """{class: prompts} restricted to `classes` (all of them when None); at least 2 classes, each present."""
    if classes is None:
        return dict(bias)
    missing = [c for c in classes if c not in bias]
    if missing or len(classes) < 2:
        raise ValueError(f"classes must name at least 2 of the {attribute!r} classes {list(bias)}, got "
                         f"{list(classes)}")
    return {c: bias[c] for c in classes}


def _prompt_list(prompts, what: str) -> list[str]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"{what} must be a non-empty list of prompt strings, got {prompts!r:.80}")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"{what} has a prompt that is not a non-empty string: {bad[0]!r}")
    return list(prompts)


def _check_variant(variant) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown SEM variant {variant!r}; choose one of {list(VARIANTS)} (sem_i: paraphrases only, "
                         "sem_b: bias prompts only, sem_bi: both)")
    return variant


@dataclass(eq=False)
class SEM:
    """A fitted SEM: the reference latents of one model and SAE, ready to debias queries.

    Build with `SEM.fit`. Fields: model (the HookedCLIP), sae (sae_lens SAE at `text.hook_text_embed`),
    sae_path (its folder, for `to_spec`; None if unknown), encode ("sae" | "relu"), attribute and classes (the
    bias classes, None without bias prompts), diverse_latents [|D|, d_sae], diverse_median [d_sae],
    bias_score s_b [d_sae] and class_scores [n_classes, d_sae] (None without bias prompts), paraphrases
    {query: prompts}, diverse (the prompts D).
    """

    model: Any
    sae: Any
    encode: str
    diverse: list
    diverse_latents: Tensor
    diverse_median: Tensor
    paraphrases: dict
    attribute: Optional[str] = None
    classes: Optional[list] = None
    bias_score: Optional[Tensor] = None
    class_scores: Optional[Tensor] = None
    sae_path: Optional[str] = None
    batch_size: int = 256
    _cache: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        bias = f"attribute={self.attribute!r} classes={self.classes}" if self.classes else "no bias prompts"
        return (f"SEM(model={getattr(self.model, 'name', '?')!r}, d_sae={self.diverse_latents.shape[1]}, "
                f"encode={self.encode!r}, |D|={len(self.diverse)}, {bias}, "
                f"{len(self.paraphrases)} queries with paraphrases, sae_path={self.sae_path!r})")

    # ------------------------------------------------------------------ fitting
    @classmethod
    @torch.no_grad()
    def fit(cls, model, sae, prompts, attribute: Optional[str] = "gender", *, classes: Optional[Sequence[str]] = None,
            bias: Optional[Mapping[str, Sequence[str]]] = None, encode: str = "sae", batch_size: int = 256) -> "SEM":
        """Encode the reference prompts once and compute the bias sensitivity s_b.

        sae: a sae_lens SAE at `text.hook_text_embed`, a saved SAE folder or a shipped name
            ("synthsocial/text-embed"); a folder or name is what `to_spec` records.
        prompts: a `workbench.data.PromptSets` (diverse prompts, paraphrases and bias prompts).
        attribute: the bias attribute, a key of `prompts.bias` ("gender", "ethnicity", "scene" ...); None for
            SEMi only. classes: a subset of its classes (e.g. ("kitchen", "field") of "scene"), default all.
        bias: {class: prompts} instead of `prompts.bias[attribute]` (e.g. background prompts for Waterbirds).
        encode: "sae" (the SAE's own encode) or "relu" (ReLU of the pre-activations, the paper's inference).
        """
        from workbench.saes import load_sae, resolve_sae_path

        if encode not in ENCODINGS:
            raise ValueError(f"encode must be one of {list(ENCODINGS)} ('sae': the SAE's own encode, 'relu': ReLU of "
                             f"its pre-activations), got {encode!r}")
        if getattr(model, "text", None) is None:
            raise ValueError("SEM debiases text embeddings: the model needs a text tower (a HookedCLIP)")
        for name in ("diverse", "paraphrases", "bias"):
            if not hasattr(prompts, name):
                raise TypeError(f"prompts must be a workbench.data.PromptSets (e.g. prompt_sets('synthsocial')), got "
                                f"{type(prompts).__name__}")
        sae_path = None
        if isinstance(sae, (str, os.PathLike)):
            sae_path = str(resolve_sae_path(sae))
            sae = load_sae(sae, model)
        for attr in ("encode", "decode", "cfg"):
            if not hasattr(sae, attr):
                raise TypeError(f"sae must be a sae_lens SAE, a saved SAE folder or a shipped name, got "
                                f"{type(sae).__name__}")
        site = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
        if site is not None and site != SITE:
            raise ValueError(f"SEM modulates the text embedding: the SAE must be trained at {SITE!r}, this one reads "
                             f"{site!r} (load_sae('synthsocial/text-embed') or train one there)")
        width = model.text.cfg.d_embed if hasattr(model.text.cfg, "d_embed") else None
        d_in = int(sae.cfg.d_in)
        if width is not None and width != d_in:
            raise ValueError(f"the SAE reads vectors of size {d_in} but the model's text embeddings have size {width}")
        if bias is not None and attribute is None:
            raise ValueError("bias prompts were given without an attribute name; pass attribute='...' too")
        if attribute is not None and bias is None:
            if attribute not in prompts.bias:
                raise ValueError(f"the prompt sets have no bias prompts for {attribute!r}; they have "
                                 f"{sorted(prompts.bias)} (or pass bias={{class: prompts}})")
            bias = prompts.bias[attribute]
        sem = cls(model=model, sae=sae, encode=encode, diverse=_prompt_list(prompts.diverse, "diverse prompts"),
                  diverse_latents=torch.empty(0), diverse_median=torch.empty(0),
                  paraphrases={q: list(p) for q, p in prompts.paraphrases.items()}, attribute=attribute,
                  sae_path=sae_path, batch_size=batch_size)
        sem.diverse_latents = sem.latents(sem.diverse)
        sem.diverse_median = lower_median(sem.diverse_latents)
        if bias is not None:
            if not isinstance(bias, Mapping) or len(bias) < 2:
                raise ValueError(f"bias prompts must be {{class: prompts}} with at least 2 classes, got {bias!r:.80}")
            bias = select_classes(bias, classes, attribute)
            sem.classes = list(bias)
            latents = [sem.latents(_prompt_list(p, f"bias prompts of {c!r}")) for c, p in bias.items()]
            sem.bias_score, sem.class_scores = bias_sensitivity(sem.diverse_latents, latents)
        elif classes is not None:
            raise ValueError("classes selects bias classes; give an attribute too")
        return sem

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> Tensor:
        """Unnormalised text embeddings [n, d_embed] (the model's `encode_text`, batched)."""
        prompts = list(prompts)
        out = [self.model.encode_text(prompts[i:i + self.batch_size], normalize=False).float()
               for i in range(0, len(prompts), self.batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def to_latents(self, embeddings: Tensor) -> Tensor:
        """Z of unnormalised text embeddings [n, d_embed] → [n, d_sae] with this SEM's encoding."""
        x = embeddings.to(self.sae.W_dec.device, self.sae.W_dec.dtype)
        return self.sae.encode(x) if self.encode == "sae" else relu_latents(self.sae, x)

    def latents(self, prompts: Sequence[str]) -> Tensor:
        """Z(prompts) [n, d_sae]."""
        return self.to_latents(self.embed(prompts))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """t' = decode(z') [n, d_embed], no error term."""
        return self.sae.decode(latents).float()

    def paraphrase_sets(self, queries: Sequence[str], paraphrases: Optional[Mapping[str, Sequence[str]]] = None,
                        missing: str = "raise") -> list[list[str]]:
        """P_q for every query: the query and its paraphrases. missing="query": a query without paraphrases
        uses itself alone; "raise": a ValueError naming it."""
        table = self.paraphrases if paraphrases is None else paraphrases
        if missing not in ("raise", "query"):
            raise ValueError(f"missing must be 'raise' or 'query', got {missing!r}")
        out = []
        for q in queries:
            if q not in table and missing == "raise":
                raise ValueError(f"no paraphrases for the query {q!r}: SEMi and SEMbi need each query's paraphrases "
                                 "(PromptSets.paraphrases); pass paraphrases={query: [...]}, or missing='query' to "
                                 "use the query alone, or use sem_b")
            out.append([q, *[p for p in table.get(q, ()) if p != q]])
        return out

    def _paraphrase_medians(self, sets: list[list[str]]) -> Tensor:
        flat = [p for s in sets for p in s]
        z = self.latents(flat)
        medians, i = [], 0
        for s in sets:
            medians.append(lower_median(z[i:i + len(s)]))
            i += len(s)
        return torch.stack(medians)

    def _need_bias(self, variant: str) -> None:
        if self.bias_score is None:
            raise ValueError(f"{variant} needs bias prompts: fit with attribute=... (a key of PromptSets.bias) or "
                             "bias={class: prompts}; sem_i needs none")

    # ------------------------------------------------------------------ debiasing
    @torch.no_grad()
    def scores(self, queries: Sequence[str], variant: str = "sem_bi",
               paraphrases: Optional[Mapping[str, Sequence[str]]] = None, missing: str = "raise") -> dict[str, Tensor]:
        """{"z_in", "s_c", "M", "z_out"} [n, d_sae] for the queries under `variant` (the pieces `debias` uses)."""
        from workbench.primitives import apply_op

        variant = _check_variant(variant)
        queries = _prompt_list(queries, "queries")
        if variant != "sem_i":
            self._need_bias(variant)
        m = self.diverse_median
        if variant == "sem_b":
            z_in = self.latents(queries)
            s_c = percentile_rank(self.diverse_latents, z_in)
            # the exported op itself, so the API and an applied spec agree bit for bit
            z_out = apply_op(z_in, "rank_modulate", torch.cat([self.bias_score[None], self.diverse_latents]),
                             reference=m)
            return {"z_in": z_in, "s_c": s_c, "M": modulation(s_c, self.bias_score), "z_out": z_out}
        medians = self._paraphrase_medians(self.paraphrase_sets(queries, paraphrases, missing))
        s_c = percentile_rank(self.diverse_latents, medians)
        if variant == "sem_i":
            z_in, M = medians, modulation(s_c)
        else:
            z_in, M = self.latents(queries), modulation(s_c, self.bias_score)
        return {"z_in": z_in, "s_c": s_c, "M": M, "z_out": z_in * M + (1 - M) * m}

    def debias(self, queries: Sequence[str], variant: str = "sem_bi",
               paraphrases: Optional[Mapping[str, Sequence[str]]] = None, missing: str = "raise") -> Tensor:
        """Debiased text embeddings [n, d_embed] (unnormalised; normalise for retrieval as with any embedding).

        variant: "sem_i" (paraphrases only: z_in and s_c from the paraphrase median; an API call, not a spec,
        because it needs each query's paraphrases), "sem_b" (bias prompts only; exportable) or "sem_bi" (both:
        s_c from the paraphrase median, z_in the query's own latents).
        paraphrases: {query: prompts} overriding the fitted `PromptSets.paraphrases`; missing: what to do with a
        query that has none ("raise", or "query": the query alone).
        """
        return self.decode(self.scores(queries, variant, paraphrases, missing)["z_out"])

    def text_override(self, variant: str, missing: str = "raise", description: str = ""):
        """The variant as a `workbench.evaluation.TextOverride` for `evaluate_variants` (every prompt the runner
        encodes is replaced by its debiased embedding)."""
        from workbench.evaluation import TextOverride

        variant = _check_variant(variant)
        return TextOverride(lambda prompts: self.debias(list(prompts), variant, missing=missing),
                            description=description or f"SEM {variant} ({self.encode} encode)")

    # ------------------------------------------------------------------ inspection
    def latent_table(self):
        """Tidy table, one row per latent: latent, diverse_median, s_b (NaN without bias prompts) and
        s_b_{class} (min(general, specific) of each class)."""
        import pandas as pd

        d = self.diverse_latents.shape[1]
        table = {"latent": range(d), "diverse_median": self.diverse_median.cpu().numpy()}
        if self.bias_score is not None:
            table["s_b"] = self.bias_score.cpu().numpy()
            for c, row in zip(self.classes, self.class_scores):
                table[f"s_b_{c}"] = row.cpu().numpy()
        else:
            table["s_b"] = float("nan")
        return pd.DataFrame(table)

    def query_table(self, queries: Sequence[str], variant: str = "sem_bi", missing: str = "raise"):
        """Tidy table, one row per (query, latent): query, latent, z_in, s_c, s_b, M, z_out."""
        import numpy as np
        import pandas as pd

        queries = _prompt_list(queries, "queries")
        parts = self.scores(queries, variant, missing=missing)
        n, d = parts["s_c"].shape
        s_b = (self.bias_score if self.bias_score is not None and variant != "sem_i"
               else torch.full((d,), float("nan")))
        return pd.DataFrame({
            "query": np.repeat(queries, d), "latent": np.tile(np.arange(d), n),
            **{k: parts[k].cpu().numpy().ravel() for k in ("z_in", "s_c")},
            "s_b": np.tile(s_b.cpu().numpy(), n),
            **{k: parts[k].cpu().numpy().ravel() for k in ("M", "z_out")},
        })

    # ------------------------------------------------------------------ export
    def edit(self, variant: str = "sem_b"):
        """SEMb's modulation as one `rank_modulate` Edit on the SAE latents at `text.hook_text_embed`: value
        [1 + |D|, d_sae] = [s_b; Z(D)], reference = median_D. The content score is the latents' own rank at
        apply time."""
        from workbench.primitives import Edit

        variant = _check_variant(variant)
        if variant == "sem_i":
            raise ValueError("SEMi cannot be exported: its latents and content score are the median over each "
                             "query's paraphrases, which a spec applied to arbitrary prompts does not have. Use "
                             "SEM.debias(queries, 'sem_i') (or sem.text_override('sem_i') in evaluate_variants), or "
                             "export 'sem_b'")
        self._need_bias(variant)
        if self.encode != "sae":
            raise ValueError("only encode='sae' exports: a spec's SAE pass uses the SAE's own encode, and this SEM "
                             f"was fitted with encode={self.encode!r}; refit with encode='sae' or use SEM.debias")
        return Edit(target="sae_latent", op="rank_modulate", hook=SITE, tower="text",
                    value=torch.cat([self.bias_score[None], self.diverse_latents]).cpu(),
                    reference=self.diverse_median.cpu())

    def to_spec(self, variant: str = "sem_b", sae_path: Union[None, str, os.PathLike] = None, **provenance):
        """SEMb or SEMbi as an `InterventionSpec` on `text.hook_text_embed` (one `rank_modulate` edit).

        A spec sees only the prompt it is applied to, so the content score is the query's own rank against D:
        the exported "sem_bi" is SEMb's formula (recorded as provenance content_score="query"); the paraphrase
        median is an API-only step (`debias(..., "sem_bi")`). SEMi raises: it needs paraphrases.
        sae_path: the SAE's folder (default: the one `fit` loaded it from)."""
        from workbench.primitives import InterventionSpec

        edit = self.edit(variant)
        path = sae_path if sae_path is not None else self.sae_path
        if path is None:
            raise ValueError("the spec must name the SAE's folder: fit with sae=<folder or shipped name>, or pass "
                             "sae_path=... (save it first with workbench.saes.save_sae)")
        fields = {"variant": variant, "content_score": "query", "encode": self.encode,
                  "bias_classes": ",".join(self.classes or []), "n_diverse": len(self.diverse), **provenance}
        return InterventionSpec.from_edits(self.model, [edit], sae=Path(path), method="sem",
                                           attribute=self.attribute, **fields)


@register_method("sem")
def sem(model, sae, prompts, attribute: Optional[str] = "gender", **kwargs) -> SEM:
    """`SEM.fit` under the method registry's name "sem" (specs record provenance method="sem")."""
    return SEM.fit(model, sae, prompts, attribute, **kwargs)


def sem_variants(model, sae, prompts, attribute: Optional[str] = "gender", *, classes=None, bias=None,
                 encode: str = "sae", missing: str = "raise", export: bool = True, batch_size: int = 256) -> dict:
    """{name: variant} for `workbench.evaluation.evaluate_variants`: "sem_i" and "sem_bi" as `TextOverride`s
    (they need paraphrases, an API call), "sem_b" as an `InterventionSpec` when it can be exported (`export`,
    encode="sae" and an SAE folder or shipped name), else a `TextOverride`. `missing`: see `SEM.debias`."""
    fitted = SEM.fit(model, sae, prompts, attribute, classes=classes, bias=bias, encode=encode,
                     batch_size=batch_size)
    out = {"sem_i": fitted.text_override("sem_i", missing)}
    if fitted.bias_score is not None:
        if export and encode == "sae" and fitted.sae_path is not None:
            out["sem_b"] = fitted.to_spec("sem_b")
        else:
            out["sem_b"] = fitted.text_override("sem_b", missing)
        out["sem_bi"] = fitted.text_override("sem_bi", missing)
    return out
