"""Projection baselines (Chuang et al., "Debiasing vision-language models via biased prompts"), as Edits on the
text embedding (docs/sem.md, "Baselines").

    edits = orth_proj(model, prompts, "gender")          # project out the span of the spurious prompts
    edits = orth_cali(model, prompts, "gender")          # calibrated: P = P0 (I + λ M)⁻¹
    projection_variants(model, prompts, "gender")        # {"orth_proj": [...], "orth_cali": [...]}

Orth-Proj: the spurious prompts S ("a photo of a male person", "a photo of a female person": one per bias class)
are L2-normalised; P0 = I − V Vᵀ with V an orthonormal basis of their span (the authors' TruncatedSVD with as
many components as prompts); t' = P0 t.
Orth-Cali: candidate prompts name the query with each class ("a photo of a male doctor", "a photo of a female
doctor"); M = mean over pairs (i, j) of the same query of (z_i − z_j)(z_i − z_j)ᵀ (normalised embeddings),
G = λ M + I (λ = 1000), P = P0 G⁻¹, t' = P t.

Both are linear maps, so applying them to the unnormalised embedding and normalising afterwards equals the
authors' normalise → map → normalise. Both are `project_out` Edits on `text.hook_text_embed`: P0 as one edit per
basis vector (scale 1), G⁻¹ = I − Σ_i λσ_i / (1 + λσ_i) u_i u_iᵀ (M = Σ σ_i u_i u_iᵀ) as one edit per
eigenvector with that scale, applied first. The authors calibrate per query set; here one P is fitted on the
calibration queries (default: the occupation and stereotype queries) and applied to every prompt.

Prompts are derived from `PromptSets.bias[attribute]`: a class's prompt with its person noun ("man", "woman",
"person") replaced by "person" (spurious) or by the query's subject (candidates), keeping only prompts that still
name the class (so "a photo of a man" → "a photo of a person" is dropped).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch

from .registry import register_method
from .sem import select_classes

__all__ = ["orth_proj", "orth_cali", "projection_variants", "spurious_prompts", "candidate_prompts",
           "projection_basis", "calibration_matrix", "LAMBDA", "SITE"]

SITE = "text.hook_text_embed"
LAMBDA = 1000.0  # the authors' λ for Orth-Cali
_PERSON = ("man", "woman", "person")
_QUERY_PREFIXES = ("a photo of an ", "a photo of a ")


def _substitute(prompt: str, subject: str) -> Optional[str]:
    """The prompt with its first person noun replaced by `subject` (articles fixed); None without one."""
    from workbench.data.captions import with_articles

    words = prompt.split()
    for i, w in enumerate(words):
        if w in _PERSON:
            return with_articles(" ".join(words[:i] + [subject] + words[i + 1:]))
    return None


def _class_prompts(prompts, attribute: str, classes: Optional[Sequence[str]]) -> dict[str, list[str]]:
    if attribute not in prompts.bias:
        raise ValueError(f"the prompt sets have no bias prompts for {attribute!r}; they have {sorted(prompts.bias)}")
    return select_classes(prompts.bias[attribute], classes, attribute)


def _naming(bias: Mapping[str, Sequence[str]], subject: str, attribute: str) -> dict[str, str]:
    """One prompt per class: its first bias prompt that, with the person noun replaced by `subject`, no other
    class produces (so it still names the class)."""
    filled = {c: [s for s in (_substitute(p, subject) for p in ps) if s is not None] for c, ps in bias.items()}
    out = {}
    for c, options in filled.items():
        others = {s for o, opts in filled.items() if o != c for s in opts}
        named = [s for s in options if s not in others]
        if not named:
            raise ValueError(f"no bias prompt of {attribute!r} class {c!r} names the class once its person noun "
                             f"(man/woman/person) is replaced; pass the prompts explicitly")
        out[c] = named[0]
    return out


def spurious_prompts(prompts, attribute: str, classes: Optional[Sequence[str]] = None) -> list[str]:
    """One spurious prompt per bias class, e.g. ["a photo of a male person", "a photo of a female person"]."""
    return list(_naming(_class_prompts(prompts, attribute, classes), "person", attribute).values())


def _subject(query: str) -> str:
    for prefix in _QUERY_PREFIXES:
        if query.startswith(prefix):
            return query[len(prefix):]
    raise ValueError(f"cannot derive calibration prompts from the query {query!r}: it is not of the form 'a photo "
                     "of a <subject>'; pass candidates=[[prompt per class] per query]")


def candidate_prompts(prompts, attribute: str, queries: Sequence[str],
                      classes: Optional[Sequence[str]] = None) -> list[list[str]]:
    """Per query, one prompt per bias class naming both, e.g. ["a photo of a male doctor", "a photo of a female
    doctor"] for "a photo of a doctor"."""
    bias = _class_prompts(prompts, attribute, classes)
    return [list(_naming(bias, _subject(q), attribute).values()) for q in queries]


@torch.no_grad()
def _normalized(model, prompts: Sequence[str]) -> torch.Tensor:
    return model.encode_text(list(prompts), normalize=True).double().cpu()


def projection_basis(embeddings: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis [r, d] of the span of the rows of `embeddings` [n, d] (float64; directions with a
    singular value below rtol × the largest are dropped)."""
    _, s, vh = torch.linalg.svd(embeddings.double(), full_matrices=False)
    return vh[s > rtol * s.max()]


def calibration_matrix(candidates: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """M = mean over pairs (i, j) of (z_i − z_j)(z_i − z_j)ᵀ, [d, d] float64 (candidates [n, d])."""
    if not pairs:
        raise ValueError("Orth-Cali needs at least one pair of candidate prompts")
    diff = torch.stack([candidates[i] - candidates[j] for i, j in pairs]).double()
    return diff.T @ diff / len(pairs)


def _direction_edits(vectors, scales) -> list:
    from workbench.primitives import Edit

    return [Edit(target="direction", op="project_out", hook=SITE, tower="text", value=v.float(), scale=float(s))
            for v, s in zip(vectors, scales)]


@register_method("orth_proj")
def orth_proj(model, prompts, attribute: str = "gender", *, classes: Optional[Sequence[str]] = None,
              spurious: Optional[Sequence[str]] = None) -> list:
    """Orth-Proj as Edits: project the span of the spurious prompts out of the text embedding.

    spurious: the prompts (default `spurious_prompts(prompts, attribute, classes)`)."""
    spurious = list(spurious) if spurious is not None else spurious_prompts(prompts, attribute, classes)
    basis = projection_basis(_normalized(model, spurious))
    return _direction_edits(basis, [1.0] * len(basis))


@register_method("orth_cali")
def orth_cali(model, prompts, attribute: str = "gender", *, classes: Optional[Sequence[str]] = None,
              queries: Optional[Sequence[str]] = None, candidates: Optional[Sequence[Sequence[str]]] = None,
              spurious: Optional[Sequence[str]] = None, lam: float = LAMBDA, rtol: float = 1e-9) -> list:
    """Orth-Cali as Edits: G⁻¹ (one project_out per eigenvector of M, scale λσ/(1 + λσ)), then P0.

    queries: the calibration queries (default occupations + stereotypes of `prompts`); candidates: per query,
    one prompt per class (default `candidate_prompts`); lam: λ (the authors' 1000)."""
    if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam > 0):
        raise ValueError(f"lam must be a positive number (the authors use 1000), got {lam!r}")
    if candidates is None:
        queries = list(queries) if queries is not None else [*prompts.occupations, *prompts.stereotypes]
        candidates = candidate_prompts(prompts, attribute, queries, classes)
    flat, pairs = [], []
    for group in candidates:
        start = len(flat)
        flat.extend(group)
        pairs += [(start + j, start + k) for j in range(len(group)) for k in range(j + 1, len(group))]
    M = calibration_matrix(_normalized(model, flat), pairs)
    sigma, u = torch.linalg.eigh(M)
    keep = sigma > rtol * sigma.max()
    sigma, u = sigma[keep], u[:, keep].T
    calibrate = _direction_edits(u, lam * sigma / (1 + lam * sigma))
    return calibrate + orth_proj(model, prompts, attribute, classes=classes, spurious=spurious)


def projection_variants(model, prompts, attribute: str = "gender", *, classes: Optional[Sequence[str]] = None,
                        calibrated: bool = True) -> dict[str, list]:
    """{"orth_proj": Edits, "orth_cali": Edits} for `evaluate_variants` (project_out on text.hook_text_embed)."""
    out = {"orth_proj": orth_proj(model, prompts, attribute, classes=classes)}
    if calibrated:
        out["orth_cali"] = orth_cali(model, prompts, attribute, classes=classes)
    return out
