"""SEM's disentanglement score: how much of a bias attribute leaks through a profession probe (docs/sem.md).

    result = disentanglement_score(X, profession, gender)         # X [n, d]: embeddings or SAE latents
    result.D, result.D_std                                        # 1 − E, its propagated error
    table = compare_features(model, sae, prompt_sets("synthsocial"), ("gender", "ethnicity"))

Sequential probing, 5-fold (StratifiedKFold on the profession, shuffled, seed 42), each probe a standardised
L2 logistic regression (`workbench.probes.LinearProbes`: scikit-learn's StandardScaler + LogisticRegression(C=1),
max_iter 1000):

1. a profession probe; 2. a bias probe → acc_b; 3. a probe for the bias on the profession probe's logits
(train logits → fit, test logits → score) → acc_{b|P}.

With chance = 1 / #bias classes and accuracies averaged over the folds: E = (acc_{b|P} − chance) / (acc_b −
chance), D = 1 − E (D = 0 when either difference is ≤ 0), σ_E = E·sqrt((σ_A/A)² + (σ_B/B)²) with σ the standard
deviation over folds (numpy's, ddof 0) of the numerator A and denominator B. D near 1: the profession probe's
logits carry little of the bias (disentangled); near 0: as much as the features themselves.

The prompts: every occupation query of the prompt sets, its paraphrase templates, and each bias class named in
it ("a friendly male doctor"), so profession and bias are crossed and balanced.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .baselines import candidate_prompts

__all__ = ["disentanglement_score", "disentanglement_prompts", "compare_features", "DisentanglementResult",
           "N_SPLITS", "SEED", "MAX_ITER"]

N_SPLITS, SEED, MAX_ITER = 5, 42, 1000


@dataclass
class DisentanglementResult:
    """acc_main, acc_b, acc_b_given_main: (mean, std) over folds; chance; E, D, D_std (= σ_E) by the authors'
    rule (0 when a difference is ≤ 0); E_raw = (acc_b_given_main − chance) / (acc_b − chance) without that rule
    (negative when the logits predict the bias *below* chance: no leakage, which the rule reports as D = 0);
    folds: tidy table, one row per fold (fold, acc_main, acc_b, acc_b_given_main)."""

    acc_main: tuple
    acc_b: tuple
    acc_b_given_main: tuple
    chance: float
    E: float
    D: float
    D_std: float
    E_raw: float
    folds: Any

    def __repr__(self) -> str:
        return (f"DisentanglementResult(D={self.D:.3f} ± {self.D_std:.3f}, acc_b={self.acc_b[0]:.3f}, "
                f"acc_b|P={self.acc_b_given_main[0]:.3f}, chance={self.chance:.3f}, acc_main={self.acc_main[0]:.3f})")

    def to_dict(self) -> dict:
        return {"D": self.D, "D_std": self.D_std, "E": self.E, "E_raw": self.E_raw, "chance": self.chance,
                "acc_b": list(self.acc_b), "acc_b_given_main": list(self.acc_b_given_main),
                "acc_main": list(self.acc_main)}


def _score(acc_b: tuple, acc_seq: tuple, chance: float) -> tuple[float, float, float]:
    """(E, D, σ) from fold means and standard deviations, as the authors' plot script."""
    a, b = acc_seq[0] - chance, acc_b[0] - chance
    if b <= 0 or a <= 0:
        return 0.0, 0.0, 0.0
    E = a / b
    sigma = abs(E) * math.sqrt((acc_seq[1] / a) ** 2 + (acc_b[1] / b) ** 2)
    return E, 1.0 - E, sigma


def _probe(max_iter: int, seed: int):
    from workbench.probes import LinearProbes

    return LinearProbes(standardize=True, max_iter=max_iter, seed=seed)


def disentanglement_score(features, main, bias, *, n_splits: int = N_SPLITS, seed: int = SEED,
                          max_iter: int = MAX_ITER) -> DisentanglementResult:
    """The sequential-probing disentanglement score of `features` [n, d] for the bias labels `bias` [n] given
    the main task labels `main` [n] (e.g. profession). See the module docstring."""
    import pandas as pd
    import torch
    from sklearn.model_selection import StratifiedKFold

    X = torch.as_tensor(np.asarray(features, dtype=np.float32) if not isinstance(features, torch.Tensor)
                        else features.detach().float().cpu())
    if X.ndim != 2:
        raise ValueError(f"features must be a matrix [n, d], got shape {tuple(X.shape)}")
    y_main, y_bias = np.asarray(main), np.asarray(bias)
    n = X.shape[0]
    for name, y in (("main", y_main), ("bias", y_bias)):
        if y.shape != (n,):
            raise ValueError(f"{name} labels have shape {y.shape}, expected ({n},): one per row of features")
        if len(np.unique(y)) < 2:
            raise ValueError(f"{name} labels have a single class; the probes need at least 2")
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer ≥ 2, got {n_splits!r}")
    fewest = np.unique(y_main, return_counts=True)[1].min()
    if fewest < n_splits:
        raise ValueError(f"the rarest main class has {fewest} rows, fewer than n_splits={n_splits}: every fold "
                         "needs each class once (more prompts per class, or fewer splits)")
    if not torch.isfinite(X).all():
        raise ValueError("features contain NaN or inf")
    from workbench.probes.threads import map_tasks

    def fold(task):
        # one unit per probe: the folds are the parallel work (the probes' thread policy: one intra-op thread
        # per worker; a single probe on many intra-op threads stalls when another process holds a core)
        k, (train, test) = task
        x_train, x_test = X[train][:, None], X[test][:, None]  # one unit
        main_probe = _probe(max_iter, seed).fit(x_train, y_main[train])
        bias_probe = _probe(max_iter, seed).fit(x_train, y_bias[train])
        logits_train = np.asarray(main_probe.decision_function(x_train))[:, 0]
        logits_test = np.asarray(main_probe.decision_function(x_test))[:, 0]
        if logits_train.ndim == 1:  # binary main task: one logit
            logits_train, logits_test = logits_train[:, None], logits_test[:, None]
        seq = torch.as_tensor(logits_train, dtype=torch.float32)[:, None]
        seq_probe = _probe(max_iter, seed).fit(seq, y_bias[train])
        return {"fold": k,
                "acc_main": float(main_probe.score(x_test, y_main[test])[0]),
                "acc_b": float(bias_probe.score(x_test, y_bias[test])[0]),
                "acc_b_given_main": float(seq_probe.score(
                    torch.as_tensor(logits_test, dtype=torch.float32)[:, None], y_bias[test])[0])}

    splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(n), y_main)
    rows = map_tasks(fold, list(enumerate(splits)), "cpu")
    table = pd.DataFrame(rows)
    stats = {k: (float(table[k].mean()), float(np.std(table[k].to_numpy()))) for k in
             ("acc_main", "acc_b", "acc_b_given_main")}
    chance = 1.0 / len(np.unique(y_bias))
    E, D, sigma = _score(stats["acc_b"], stats["acc_b_given_main"], chance)
    denominator = stats["acc_b"][0] - chance
    E_raw = (stats["acc_b_given_main"][0] - chance) / denominator if denominator > 0 else float("nan")
    return DisentanglementResult(stats["acc_main"], stats["acc_b"], stats["acc_b_given_main"], chance, E, D, sigma,
                                 E_raw, table)


def _replace_subject(template: str, subject: str, new: str) -> Optional[str]:
    from workbench.data.captions import with_articles

    words, sub = template.split(), subject.split()
    for i in range(len(words) - len(sub) + 1):
        if words[i:i + len(sub)] == sub:
            return with_articles(" ".join(words[:i] + new.split() + words[i + len(sub):]))
    return None


def disentanglement_prompts(prompts, attribute: str, classes: Optional[Sequence[str]] = None):
    """(texts, main codes [n], bias codes [n], occupation names, class names): every occupation query and its
    paraphrase templates with each bias class named in the subject ("a friendly male doctor")."""
    queries = list(prompts.occupations)
    named = candidate_prompts(prompts, attribute, queries, classes)
    class_names = list(classes) if classes is not None else list(prompts.bias[attribute])
    texts, main, bias = [], [], []
    for p, (query, per_class) in enumerate(zip(queries, named)):
        subject = query.split(" ", 4)[-1]  # "a photo of a doctor" → "doctor"
        templates = [query, *prompts.paraphrases.get(query, ())]
        for b, prompt in enumerate(per_class):
            new_subject = prompt.split(" ", 4)[-1]  # "a photo of a male doctor" → "male doctor"
            for t in templates:
                text = _replace_subject(t, subject, new_subject)
                if text is not None and text not in texts:
                    texts.append(text)
                    main.append(p)
                    bias.append(b)
    names = [q.split(" ", 4)[-1] for q in queries]
    return texts, np.array(main), np.array(bias), names, class_names


def compare_features(model, sae, prompts, attributes: Sequence[str] = ("gender", "ethnicity"), *,
                     encodings: Sequence[str] = ("sae",), n_splits: int = N_SPLITS, seed: int = SEED,
                     max_iter: int = MAX_ITER, progress: bool = True):
    """Disentanglement of dense text embeddings (unnormalised `text.hook_text_embed`) vs SAE latents, per
    attribute: a tidy table (attribute, features, n, D, D_std, E, E_raw, acc_b, acc_b_given_main, acc_main,
    chance).

    sae: a sae_lens SAE at the text embedding, a folder or a shipped name; encodings: "sae" (its own encode)
    and/or "relu" (ReLU of its pre-activations, the paper's)."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from .sem import SEM

    rows = []
    jobs = [(a, f) for a in attributes for f in ("dense", *encodings)]
    bar = tqdm(total=len(jobs), desc="disentanglement", unit="probe set", disable=not progress)
    fitted = {}
    for attribute in attributes:
        texts, main, bias, _, _ = disentanglement_prompts(prompts, attribute)
        for features in ("dense", *encodings):
            enc = "sae" if features == "dense" else features
            if enc not in fitted:
                fitted[enc] = SEM.fit(model, sae, prompts, attribute=None, encode=enc)
            sem = fitted[enc]
            with torch.no_grad():
                emb = sem.embed(texts)
                X = emb if features == "dense" else sem.to_latents(emb)
            r = disentanglement_score(X, main, bias, n_splits=n_splits, seed=seed, max_iter=max_iter)
            rows.append({"attribute": attribute, "features": "dense" if features == "dense" else f"sae_{features}",
                         "n": len(texts), "D": r.D, "D_std": r.D_std, "E": r.E, "E_raw": r.E_raw, "acc_b": r.acc_b[0],
                         "acc_b_given_main": r.acc_b_given_main[0], "acc_main": r.acc_main[0], "chance": r.chance})
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows)
