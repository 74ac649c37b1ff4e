"""Retrieval fairness: how the demographic groups of retrieved items are distributed.

Every function ranks items per query (:func:`workbench.metrics.retrieval.rank`, ties to the lower
index) and looks at the group labels in ranking order. Inputs:

- ``similarity``: ``[n_queries, n_items]`` scores, or ``[n_items]`` for one query. Instead of
  scores you may pass ``ranking=`` (item indices best-first, ``[n_queries, n_ranked]``, e.g. the
  output of ``rank`` or of an approximate-nearest-neighbour search) with ``similarity=None``.
- ``groups``: int ``[n_items]``, the group code (0..G-1) of each item in the pool.
- ``n_groups``: G, the number of classes of the attribute. Default: ``len(prior)`` when a prior
  array is given, else ``groups.max() + 1``. Pass it when some class may be absent from the pool.
  A pool whose labels hold a single group raises unless ``n_groups`` (or a prior array) is given:
  there is nothing to infer G from, and any ranking of it would score as perfectly fair. So does
  ``prior="pool"`` on such a pool (the target would equal every ranking's mix), and G = 1.
- ``prior``: the target distribution Q over the G classes: ``"uniform"`` (1/G each), ``"pool"``
  (the class mix of ``groups``, i.e. of the evaluated pool) or an explicit array ``[G]``.

Scalars are averaged over queries; ``return_per_query=True`` returns a DataFrame instead.
Logarithms are natural unless stated. Terms with p_a = 0 are skipped in KL and entropy
(0 · log 0 = 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.metrics.retrieval import _check_k, _int_labels, _per_query_frame, _scores_2d, _to_numpy, rank

if TYPE_CHECKING:  # pandas is imported where used: it costs ~0.4 s at import time
    import pandas as pd

__all__ = [
    "ndkl",
    "ndkl_chance",
    "kl_divergence_at_k",
    "skew_table",
    "max_skew_at_k",
    "min_skew_at_k",
    "normalized_entropy_at_k",
    "bias_at_k",
]


# ----------------------------------------------------------------------------------------------
# Shared plumbing
# ----------------------------------------------------------------------------------------------


def _pool_groups(groups: Any, n_groups: int | None, prior: Any, metric: str) -> tuple[np.ndarray, int]:
    """Validate item group codes; returns (int64 ``[n_items]``, G).

    G is inferred (``len(prior)`` for an array prior, else ``groups.max() + 1``) only when the pool holds
    at least two groups: from a pool of one group nothing can be inferred, and every ranking of it would
    look perfectly fair (NDKL 0, MaxSkew 0), so that raises instead of reporting 0.
    """
    g = _int_labels(groups, "groups")
    if g.size == 0:
        raise ValueError("groups is empty; need one group code per item in the pool")
    present = np.unique(g)
    if n_groups is None:
        if isinstance(prior, str) and present.size == 1:
            raise ValueError(
                f"{metric}: only one group is present in the labels (every item of the pool has group code "
                f"{int(present[0])}), so the number of groups cannot be inferred and any ranking would score as "
                "perfectly fair; pass n_groups= (the number of groups in the population, e.g. n_groups=2 for "
                "binary gender), or a prior array with one entry per group")
        n_groups = len(prior) if not isinstance(prior, str) else int(g.max()) + 1
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 1:
        raise ValueError(f"n_groups must be a positive int, got {n_groups!r}")
    if n_groups < 2:
        raise ValueError(f"{metric}: n_groups is 1 (from n_groups= or a prior of length 1); with a single group "
                         "every ranking is trivially fair: pass the number of groups in the population (>= 2)")
    if g.max() >= n_groups:
        raise ValueError(f"groups contains code {int(g.max())} but n_groups={n_groups}; codes must be "
                         f"0..{n_groups - 1} (pass a larger n_groups or a prior with one entry per class)")
    if isinstance(prior, str) and prior == "pool" and present.size == 1:
        raise ValueError(
            f"{metric}: only one group is present in the labels (group code {int(present[0])}), so "
            "prior='pool' puts all its mass on that group and every ranking matches it (the metric would be 0 "
            "whatever the ranking); use prior='uniform' or an explicit prior array over the n_groups groups")
    return g, int(n_groups)


def _target(prior: Any, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """The target distribution Q ``[G]``; classes present in the pool must have Q > 0."""
    if isinstance(prior, str):
        if prior == "uniform":
            return np.full(n_groups, 1.0 / n_groups)
        if prior == "pool":
            return np.bincount(groups, minlength=n_groups) / groups.size
        raise ValueError(f"prior must be 'uniform', 'pool' or an array of {n_groups} probabilities, got {prior!r}")
    q = _to_numpy(prior, "prior").astype(np.float64)
    if q.shape != (n_groups,):
        raise ValueError(f"prior has shape {q.shape} but there are {n_groups} classes; "
                         "pass one probability per class")
    if not np.isfinite(q).all() or (q < 0).any():
        raise ValueError(f"prior must hold finite non-negative probabilities, got {q.tolist()}")
    if not np.isclose(q.sum(), 1.0, atol=1e-6):
        raise ValueError(f"prior sums to {q.sum():.6g}, not 1; divide it by its sum")
    present = np.bincount(groups, minlength=n_groups) > 0
    bad = np.flatnonzero(present & (q == 0))
    if bad.size:
        raise ValueError(f"prior gives zero probability to class(es) {bad.tolist()}, which occur in the pool; "
                         "KL and skew would be infinite")
    return q


def _ranking(similarity: Any, ranking: Any, n_items: int, k: int | None) -> np.ndarray:
    """Validated item indices best-first, int64 ``[n_queries, k]`` (k=None: the whole ranking)."""
    if (similarity is None) == (ranking is None):
        raise ValueError("pass exactly one of similarity (scores) or ranking= (item indices best-first)")
    if similarity is not None:
        s = _scores_2d(similarity)
        if s.shape[1] != n_items:
            raise ValueError(f"similarity has shape {s.shape} but groups has {n_items} entries; "
                             "need similarity [n_queries, n_items] with one group per item")
        return rank(s, k)
    r = _to_numpy(ranking, "ranking")
    if r.ndim == 1:
        r = r[None, :]
    if r.ndim != 2 or r.shape[1] == 0 or not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranking must be integer item indices [n_queries, n_ranked], got shape {r.shape} "
                         f"and dtype {r.dtype}")
    if r.min() < 0 or r.max() >= n_items:
        raise ValueError(f"ranking holds indices outside 0..{n_items - 1} (the pool given by groups)")
    srt = np.sort(r, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise ValueError("ranking lists an item twice for some query; each row must hold distinct items")
    if k is not None:
        r = r[:, : _check_k(k, r.shape[1], "ranked items")]
    return r.astype(np.int64, copy=False)


def _ranked_groups(similarity: Any, ranking: Any, groups: np.ndarray, k: int | None) -> np.ndarray:
    """Group codes in ranking order, int64 ``[n_queries, k]`` (k=None: the whole ranking)."""
    return groups[_ranking(similarity, ranking, groups.size, k)]


def _counts(ranked: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-query class counts ``[n_queries, G]`` from group codes ``[n_queries, k]``."""
    n_q = ranked.shape[0]
    flat = (np.arange(n_q)[:, None] * n_groups + ranked).ravel()
    return np.bincount(flat, minlength=n_q * n_groups).reshape(n_q, n_groups)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) along the last axis, natural log, terms with p = 0 skipped. p: [..., G], q: [G]."""
    pos = p > 0
    ratio = np.where(pos, p, 1.0) / np.where(pos, q, 1.0)  # q > 0 wherever p > 0 (checked in _target)
    return (np.where(pos, p * np.log(ratio), 0.0)).sum(axis=-1)


def _result(values: np.ndarray, column: str, return_per_query: bool):
    return _per_query_frame(values, column) if return_per_query else float(values.mean())


# ----------------------------------------------------------------------------------------------
# NDKL
# ----------------------------------------------------------------------------------------------


def _relevant(relevant_mask: Any, n_items: int, n_queries: int | None = None) -> np.ndarray:
    """Validated bool ``[n_queries, n_items]`` relevance mask (a 1-D mask is one query)."""
    mask = _to_numpy(relevant_mask, "relevant_mask")
    mask = mask[None, :] if mask.ndim == 1 else mask
    expected = (mask.shape[0] if n_queries is None else n_queries, n_items)
    if mask.shape != expected:
        raise ValueError(f"relevant_mask has shape {mask.shape}; expected [n_queries, n_items] = {expected}")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError("relevant_mask must be boolean (or 0/1)")
    return mask.astype(bool, copy=False)


def _ndkl_one(seq: np.ndarray, q: np.ndarray) -> float:
    """NDKL of one ranked group sequence ``[m]`` against the target ``q`` ``[G]``."""
    i = np.arange(1, seq.size + 1, dtype=np.float64)
    onehot = np.zeros((seq.size, q.size))
    onehot[np.arange(seq.size), seq] = 1.0
    p_top_i = np.cumsum(onehot, axis=0) / i[:, None]  # class mix of the top-i items, [m, G]
    w = 1.0 / np.log2(i + 1.0)
    return float((w * _kl(p_top_i, q)).sum() / w.sum())


def ndkl(
    similarity: Any,
    groups: Any,
    *,
    k: int | None = None,
    prior: Any = "uniform",
    n_groups: int | None = None,
    relevant_mask: Any = None,
    ranking: Any = None,
    return_per_query: bool = False,
):
    """Normalized discounted KL divergence (Geyik et al. 2019), averaged over queries.

    NDKL = (1/Z) Σ_{i=1..n} KL(P_top-i ‖ Q) / log2(i + 1),  Z = Σ_{i=1..n} 1/log2(i + 1),

    P_top-i = class mix of the first i ranked items, KL with the natural log and p = 0 terms
    skipped. 0 when every prefix matches Q; ln G when all n items share one class and Q is uniform.

    SISPI protocol (expert heads): pass ``relevant_mask[q, i] = item i shows query q's
    profession``; the ranked list is then the query's relevant items only, in ranking order.

    Args:
        similarity: ``[n_queries, n_items]`` scores (or None with ``ranking=``).
        groups: int ``[n_items]`` group codes.
        k: n, the number of ranked (relevant) items to use; default all of them.
        prior: target Q: "uniform" (default), "pool" or an array ``[G]``.
        n_groups: G (see module docstring).
        relevant_mask: optional bool ``[n_queries, n_items]``; only these items enter, order kept.
        ranking: item indices best-first ``[n_queries, n_ranked]``, instead of ``similarity``.
        return_per_query: return a DataFrame ``query, ndkl`` instead of the mean.
    """
    g, n_groups = _pool_groups(groups, n_groups, prior, "ndkl")
    q = _target(prior, g, n_groups)
    if relevant_mask is None:
        ranked = _ranked_groups(similarity, ranking, g, k)
        values = np.array([_ndkl_one(row, q) for row in ranked])
        return _result(values, "ndkl", return_per_query)

    order = _ranking(similarity, ranking, g.size, None)
    mask = _relevant(relevant_mask, g.size, order.shape[0])
    values = np.empty(order.shape[0])
    for qi, row in enumerate(order):
        kept = row[mask[qi, row]]  # the query's relevant items, still in ranking order
        if kept.size == 0:
            raise ValueError(f"query {qi} has no relevant item in its ranking; NDKL is undefined for it")
        if k is not None:
            kept = kept[: _check_k(k, kept.size, f"relevant items of query {qi}")]
        values[qi] = _ndkl_one(g[kept], q)
    return _result(values, "ndkl", return_per_query)


def _ndkl_chance_one(counts: np.ndarray, n: int, q: np.ndarray) -> float:
    """Expected NDKL of the first n items of a uniformly random order of a pool with class counts ``[G]``.

    The top-i count of class g is hypergeometric (pool m, K_g successes, i draws), and KL is a sum over
    classes, so E[KL(P_top-i ‖ Q)] = Σ_g Σ_c Hyp(c; m, K_g, i) · (c/i) ln(c / (i q_g)): exact, no sampling.
    """
    from scipy.stats import hypergeom

    m = int(counts.sum())
    i = np.arange(1, n + 1, dtype=np.float64)
    expected_kl = np.zeros(n)
    for kg, qg in zip(counts, q):
        if kg == 0:
            continue
        c = np.arange(1, kg + 1, dtype=np.float64)  # c = 0 contributes nothing
        pmf = hypergeom.pmf(c[None, :], m, kg, i[:, None])  # [n, K_g]
        p = c[None, :] / i[:, None]
        expected_kl += (pmf * p * np.log(p / qg)).sum(axis=1)
    w = 1.0 / np.log2(i + 1.0)
    return float((w * expected_kl).sum() / w.sum())


def ndkl_chance(
    groups: Any,
    *,
    k: int | None = None,
    prior: Any = "uniform",
    n_groups: int | None = None,
    relevant_mask: Any = None,
    return_per_query: bool = False,
):
    """The NDKL a uniformly random ranking scores in expectation: the chance level to read `ndkl` against.

    NDKL is not 0 for an unbiased ranker: the first few items of any ranking are one class or two, and
    the 1/log2(i + 1) weights put much of the score there. On 256 relevant items split 128/128 a random
    order scores about 0.034, on 128 items about 0.057, so a measured NDKL only says something beyond
    that level, and a debiasing method cannot cut it below it (except by interleaving the groups).
    Computed exactly from hypergeometric top-i counts (no sampling); depends only on the group counts.

    Args: as `ndkl` (no scores needed). ``relevant_mask`` ``[n_queries, n_items]``: each query's ranked
    list is its relevant items (SISPI protocol); without it there is one list, the whole pool.
    Returns the mean over queries (or a DataFrame ``query, ndkl_chance``).
    """
    g, n_groups = _pool_groups(groups, n_groups, prior, "ndkl_chance")
    q = _target(prior, g, n_groups)
    masks = np.ones((1, g.size), dtype=bool) if relevant_mask is None else _relevant(relevant_mask, g.size)
    cache: dict[tuple, float] = {}  # queries with the same class counts share one value
    values = np.empty(masks.shape[0])
    for qi, mask in enumerate(masks):
        counts = np.bincount(g[mask], minlength=n_groups)
        m = int(counts.sum())
        if m == 0:
            raise ValueError(f"query {qi} has no relevant item; NDKL is undefined for it")
        n = m if k is None else _check_k(k, m, f"relevant items of query {qi}")
        key = (tuple(counts.tolist()), n)
        if key not in cache:
            cache[key] = _ndkl_chance_one(counts, n, q)
        values[qi] = cache[key]
    return _result(values, "ndkl_chance", return_per_query)


# ----------------------------------------------------------------------------------------------
# Top-k distribution metrics
# ----------------------------------------------------------------------------------------------


def _topk_mix(similarity, groups, k, prior, n_groups, ranking, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(p_ret ``[n_queries, G]`` class mix of the top k, target ``[G]``)."""
    if k is None:
        raise TypeError("k is required: the number of top-ranked items to evaluate")
    g, n_groups = _pool_groups(groups, n_groups, prior, metric)
    q = _target(prior, g, n_groups)
    counts = _counts(_ranked_groups(similarity, ranking, g, k), n_groups)
    return counts / counts.sum(axis=1, keepdims=True), q


def kl_divergence_at_k(
    similarity: Any,
    groups: Any,
    k: int,
    *,
    prior: Any = "pool",
    n_groups: int | None = None,
    ranking: Any = None,
    return_per_query: bool = False,
):
    """KL(p_ret ‖ p_prior) of the top-k retrieved items, averaged over queries (SEM: k = 500).

    KL = Σ_a p_ret(a) ln(p_ret(a) / p_prior(a)), terms with p_ret(a) = 0 skipped. By default
    p_prior is the class mix of the evaluated pool (``prior="pool"``).
    """
    p, q = _topk_mix(similarity, groups, k, prior, n_groups, ranking, "kl_divergence_at_k")
    return _result(_kl(p, q), "kl", return_per_query)


def _skews(p: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Skew_a = ln p_a − ln q_a ``[n_queries, G]`` with p_a = 0 → 1/k; NaN where q_a = 0."""
    p_filled = np.where(p > 0, p, 1.0 / k)
    with np.errstate(divide="ignore"):
        return np.where(q > 0, np.log(p_filled) - np.log(np.where(q > 0, q, 1.0)), np.nan)


def skew_table(
    similarity: Any,
    groups: Any,
    k: int,
    *,
    prior: Any = "uniform",
    n_groups: int | None = None,
    ranking: Any = None,
) -> pd.DataFrame:
    """Per-query, per-class Skew@k as a tidy table.

    Skew_a@k = ln p_a − ln q_a, p_a = share of class a in the top k (DebiasLens convention: a class
    absent from the top k gets p_a = 1/k instead of 0), q_a = target share. Classes with q_a = 0
    (absent from the pool under ``prior="pool"``) cannot be retrieved: their skew is NaN.

    Returns:
        DataFrame with columns ``query, group, p_retrieved, p_target, skew`` (p_retrieved is the
        raw share, before the 1/k replacement).
    """
    import pandas as pd

    p, q = _topk_mix(similarity, groups, k, prior, n_groups, ranking, "skew_table")
    n_q, n_g = p.shape
    return pd.DataFrame({
        "query": np.repeat(np.arange(n_q), n_g),
        "group": np.tile(np.arange(n_g), n_q),
        "p_retrieved": p.ravel(),
        "p_target": np.tile(q, n_q),
        "skew": _skews(p, q, k).ravel(),
    })


def max_skew_at_k(
    similarity: Any,
    groups: Any,
    k: int,
    *,
    prior: Any = "uniform",
    n_groups: int | None = None,
    ranking: Any = None,
    return_per_query: bool = False,
):
    """MaxSkew@k = max(0, max_a Skew_a@k), averaged over queries.

    Skew as in :func:`skew_table`. DebiasLens: q uniform (default), k = 1000 (500 for stereotype
    prompts). SEM: ``prior="pool"``, k = 500. 0 when the top k match the target exactly.
    """
    p, q = _topk_mix(similarity, groups, k, prior, n_groups, ranking, "max_skew_at_k")
    values = np.maximum(0.0, np.nanmax(_skews(p, q, k), axis=1))
    return _result(values, "max_skew", return_per_query)


def min_skew_at_k(
    similarity: Any,
    groups: Any,
    k: int,
    *,
    prior: Any = "uniform",
    n_groups: int | None = None,
    ranking: Any = None,
    return_per_query: bool = False,
):
    """MinSkew@k = min(0, min_a Skew_a@k), averaged over queries (≤ 0).

    The mirror of :func:`max_skew_at_k`, measuring the most under-represented class; same 1/k
    replacement for absent classes, so the floor is ln(1/k) − ln(max_a q_a).
    """
    p, q = _topk_mix(similarity, groups, k, prior, n_groups, ranking, "min_skew_at_k")
    values = np.minimum(0.0, np.nanmin(_skews(p, q, k), axis=1))
    return _result(values, "min_skew", return_per_query)


def normalized_entropy_at_k(
    similarity: Any,
    groups: Any,
    k: int,
    *,
    n_groups: int | None = None,
    ranking: Any = None,
    return_per_query: bool = False,
):
    """Normalized entropy H(p)/ln G of the class mix of the top k, averaged over queries.

    H(p) = −Σ_a p_a ln p_a over all G classes (absent classes count as p_a = 0, contributing 0),
    so 1 means perfectly balanced and 0 means a single class. Needs G ≥ 2.
    """
    p, _ = _topk_mix(similarity, groups, k, "uniform", n_groups, ranking, "normalized_entropy_at_k")
    n_g = p.shape[1]  # >= 2, checked in _pool_groups (ln G = 0 otherwise)
    logp = np.log(np.where(p > 0, p, 1.0))
    values = -(p * logp).sum(axis=1) / np.log(n_g)
    return _result(values, "normalized_entropy", return_per_query)


def bias_at_k(
    similarity: Any,
    groups: Any,
    k: int,
    *,
    classes: tuple[int, int] = (0, 1),
    denominator: str = "k",
    ranking: Any = None,
    return_per_query: bool = False,
):
    """Bias@K of Wang, Liu & Wang, "Are Gender-Neutral Queries Really Gender-Neutral?" (EMNLP 2021).

    For a neutral query, Bias@K = (N_a − N_b) / K, N_a and N_b being the numbers of top-K items in
    the two classes ``classes = (a, b)`` (the paper: a = male, b = female); averaged over queries.
    In [−1, 1]: positive = class a over-represented. Items of any other class (e.g. unknown
    gender) count in K but in neither N.

    ``denominator="pair"`` divides by N_a + N_b instead (0 when both are 0), which is what the
    authors' released code (``clip_coco.py``) computes; the two agree when every top-K item is
    in class a or b.
    """
    if denominator not in ("k", "pair"):
        raise ValueError(f"denominator must be 'k' or 'pair', got {denominator!r}")
    a, b = classes
    if a == b:
        raise ValueError(f"classes must name two different classes, got {classes}")
    g = _int_labels(groups, "groups")
    if g.size == 0:
        raise ValueError("groups is empty; need one group code per item in the pool")
    absent = [c for c in classes if not (g == c).any()]
    if absent:  # the value would then follow from the pool alone (0 or ±N/K), whatever the ranking
        raise ValueError(f"bias_at_k: class(es) {absent} of classes={tuple(classes)} do not occur in groups (the "
                         f"pool holds only {np.unique(g).tolist()}), so Bias@K cannot compare the two classes; "
                         "pass classes= that both occur in the pool, or evaluate a pool that contains both")
    ranked = _ranked_groups(similarity, ranking, g, k)
    n_a = (ranked == a).sum(axis=1).astype(np.float64)
    n_b = (ranked == b).sum(axis=1).astype(np.float64)
    if denominator == "k":
        values = (n_a - n_b) / ranked.shape[1]
    else:
        total = n_a + n_b
        values = np.divide(n_a - n_b, total, out=np.zeros_like(total), where=total > 0)
    return _result(values, "bias", return_per_query)
