"""Ranking helpers and retrieval utility metrics: Recall@K, AP / mAP, NDCG@k.

Conventions shared by every module in ``workbench.metrics``:

- ``similarity`` is ``[n_queries, n_items]``, higher = better match; a 1-D ``[n_items]`` array is
  one query. torch tensors and numpy arrays are both accepted and converted once, here.
- :func:`rank` orders items best-first and breaks ties by the lower item index (stable sort), so
  every metric sees the same order for the same scores. (scikit-learn instead treats tied scores
  as one threshold; the two agree whenever scores are distinct.)
- Scalars come back as Python floats; per-query breakdowns as tidy pandas DataFrames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pandas is imported where used: it costs ~0.4 s at import time
    import pandas as pd

__all__ = [
    "rank",
    "relevance_from_labels",
    "first_relevant_rank",
    "recall_at_k",
    "recall_table",
    "mean_average_precision",
    "ndcg",
]

# Rows of a [n_queries, n_items] score matrix sorted per chunk: bounds the argsort temporaries
# (~8 bytes x this many elements) whatever the size of the pool.
_CHUNK_ELEMENTS = 1 << 22

_DIRECTIONS = ("text_to_image", "image_to_text")


# ----------------------------------------------------------------------------------------------
# Input conversion (also used by fairness.py and classification.py)
# ----------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a torch tensor, numpy array or nested sequence to a numpy array (no copy if possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor; avoids importing torch here
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()  # numpy has no bfloat16
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from err


def _scores_2d(similarity: Any, name: str = "similarity") -> np.ndarray:
    """Validate scores; returns float ``[n_queries, n_items]`` (float32 kept, else float64; 1-D = one query)."""
    s = _to_numpy(similarity, name)
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number):
        raise TypeError(f"{name} must hold real numbers, got dtype {s.dtype}")
    if np.iscomplexobj(s):
        raise TypeError(f"{name} must hold real numbers, got complex dtype {s.dtype}")
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2:
        raise ValueError(f"{name} must be [n_queries, n_items] (or [n_items] for one query), got shape {s.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {s.shape}); need at least one query and one item")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)  # float32 stays float32: halves memory on big pools
    nan = np.isnan(s)
    if nan.any():
        r, c = np.argwhere(nan)[0]
        raise ValueError(f"{name} contains {int(nan.sum())} NaN value(s) (first at query {r}, item {c}); "
                         "fix the embeddings or mask items with a large negative score instead")
    return s


def _int_labels(labels: Any, name: str, n: int | None = None) -> np.ndarray:
    """Validate a 1-D array of non-negative integer codes and return it as int64 ``[n]``."""
    a = _to_numpy(labels, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries but {n} were expected")
    if a.dtype == bool:
        a = a.astype(np.int64)
    elif np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise ValueError(f"{name} contains NaN; every entry needs a label")
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer codes, got non-integer floats")
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer codes 0..C-1, got dtype {a.dtype}; "
                        "convert labels with pandas.factorize or np.unique(..., return_inverse=True)")
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must be non-negative integer codes, got {int(a.min())}")
    return a


def _check_k(k: Any, n: int, what: str = "items", name: str = "k") -> int:
    """Validate a cut-off ``k`` against a pool of ``n`` elements."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"{name}={k} is larger than the pool of {n} {what}; pass {name} <= {n}")
    return int(k)


def _relevance_2d(relevant: Any, shape: tuple[int, int], *, binary: bool) -> np.ndarray:
    """Validate a relevance matrix against the similarity shape.

    Returns ``[n_queries, n_items]``: bool when ``binary`` (memory: the image-to-text matrix of a
    caption benchmark has ~10^8 entries), float64 gains otherwise.
    """
    r = _to_numpy(relevant, "relevant")
    if r.ndim == 1:
        r = r[None, :]
    if r.shape != shape:
        raise ValueError(f"relevant has shape {r.shape} but similarity has shape {shape}; "
                         "they must match (one relevance per query-item pair)")
    if r.dtype != bool and not np.issubdtype(r.dtype, np.number):
        raise TypeError(f"relevant must be boolean or numeric, got dtype {r.dtype}")
    if r.dtype != bool:
        if np.isnan(r).any():
            raise ValueError("relevant contains NaN")
        if (r < 0).any():
            raise ValueError("relevant must be non-negative (gains)")
        if binary and not np.isin(r, (0, 1)).all():
            raise ValueError("relevant must be binary (bool or 0/1) for this metric")
    r = r.astype(bool if binary else np.float64, copy=False)
    empty = np.flatnonzero(~r.any(axis=1))
    if empty.size:
        raise ValueError(f"{empty.size} query/queries have no relevant item (first: query {empty[0]}); "
                         "the metric is undefined for them, drop them before calling")
    return r


def _row_chunks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _per_query_frame(values: np.ndarray, column: str) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({"query": np.arange(len(values)), column: values})


# ----------------------------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------------------------


def rank(similarity: Any, k: int | None = None) -> np.ndarray:
    """Item indices ordered best-first for each query.

    Args:
        similarity: ``[n_queries, n_items]`` scores (or ``[n_items]`` for one query).
        k: keep only the first ``k`` positions (default: all items).

    Returns:
        int64 ``[n_queries, k or n_items]`` (``[k or n_items]`` for 1-D input). Ties are broken
        by the lower item index, so the result is deterministic.
    """
    one_query = _to_numpy(similarity, "similarity").ndim == 1
    s = _scores_2d(similarity)
    n_q, n_items = s.shape
    k = n_items if k is None else _check_k(k, n_items)
    out = np.empty((n_q, k), dtype=np.int64)
    for rows in _row_chunks(n_q, n_items):
        out[rows] = np.argsort(-s[rows], axis=1, kind="stable")[:, :k]
    return out[0] if one_query else out


def relevance_from_labels(query_labels: Any, item_labels: Any) -> np.ndarray:
    """Binary relevance ``relevant[q, i] = (query_labels[q] == item_labels[i])``.

    E.g. SISPI: the query for profession p is relevant to every image of profession p.

    Returns:
        bool ``[n_queries, n_items]``.
    """
    q = _to_numpy(query_labels, "query_labels")
    it = _to_numpy(item_labels, "item_labels")
    if q.ndim != 1 or it.ndim != 1:
        raise ValueError(f"query_labels and item_labels must be 1-D, got shapes {q.shape} and {it.shape}")
    return q[:, None] == it[None, :]


def first_relevant_rank(similarity: Any, relevant: Any) -> np.ndarray:
    """0-based position of the best-ranked relevant item for each query.

    Position of item j = #items with a higher score + #items with an equal score and a lower
    index (the :func:`rank` order), computed without a full sort.

    Args:
        similarity: ``[n_queries, n_items]`` scores.
        relevant: binary ``[n_queries, n_items]``; every query needs at least one relevant item.

    Returns:
        int64 ``[n_queries]``.
    """
    s = _scores_2d(similarity)
    rel = _relevance_2d(relevant, s.shape, binary=True)
    out = np.empty(s.shape[0], dtype=np.int64)
    for rows in _row_chunks(*s.shape):
        sc, rc = s[rows], rel[rows]
        best = np.where(rc, sc, -np.inf).max(axis=1, keepdims=True)
        # lowest-index relevant item among those with the best score
        best_idx = np.argmax(rc & (sc == best), axis=1)[:, None]
        before = np.arange(sc.shape[1])[None, :] < best_idx
        out[rows] = (sc > best).sum(axis=1) + ((sc == best) & before).sum(axis=1)
    return out


# ----------------------------------------------------------------------------------------------
# Recall@K
# ----------------------------------------------------------------------------------------------


def _caption_relevance(s: np.ndarray, caption_to_image: Any, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """Query-major scores and binary relevance for one retrieval direction."""
    n_captions, n_images = s.shape
    c2i = _to_numpy(caption_to_image, "caption_to_image")
    if c2i.ndim != 1 or c2i.shape[0] != n_captions:
        raise ValueError(
            f"caption_to_image has shape {c2i.shape} but similarity has shape {s.shape} = "
            "[n_captions, n_images]; pass text_embeddings @ image_embeddings.T and one image index per caption")
    c2i = _int_labels(c2i, "caption_to_image")
    if c2i.max() >= n_images:
        raise ValueError(f"caption_to_image refers to image {int(c2i.max())} but similarity has only "
                         f"{n_images} image columns")
    if direction == "text_to_image":
        return s, c2i[:, None] == np.arange(n_images)[None, :]
    if direction == "image_to_text":
        rel = np.arange(n_images)[:, None] == c2i[None, :]
        orphan = np.flatnonzero(~rel.any(axis=1))
        if orphan.size:
            raise ValueError(f"{orphan.size} image(s) have no caption (first: image {orphan[0]}); "
                             "image-to-text recall is undefined for them, drop their columns")
        return s.T, rel
    raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")


def recall_at_k(similarity: Any, caption_to_image: Any, k: int, *, direction: str = "text_to_image") -> float:
    """Recall@K for caption retrieval (COCO / Flickr30K protocol).

    text_to_image: fraction of captions whose image is among the top K images.
    image_to_text: fraction of images with at least one of their captions among the top K captions.

    Args:
        similarity: ``[n_captions, n_images]`` = text_embeddings @ image_embeddings.T, for both
            directions (transpose an image-major matrix before calling). With one caption per
            image the orientation cannot be checked: make sure rows are captions.
        caption_to_image: int ``[n_captions]``, the image each caption describes.
        k: cut-off K.
        direction: "text_to_image" or "image_to_text".

    Returns:
        Recall@K in [0, 1].
    """
    s = _scores_2d(similarity)
    scores, rel = _caption_relevance(s, caption_to_image, direction)
    _check_k(k, scores.shape[1], "images" if direction == "text_to_image" else "captions")
    return float(np.mean(first_relevant_rank(scores, rel) < k))


def recall_table(similarity: Any, caption_to_image: Any, ks: Sequence[int] = (1, 5, 10)) -> pd.DataFrame:
    """Recall@K for both directions and several K, as a tidy table.

    Args: as :func:`recall_at_k`; ``ks`` lists the cut-offs.

    Returns:
        DataFrame with columns ``direction, k, recall`` (one row per direction and K).
    """
    import pandas as pd

    s = _scores_2d(similarity)
    rows = []
    for direction in _DIRECTIONS:
        scores, rel = _caption_relevance(s, caption_to_image, direction)
        first = first_relevant_rank(scores, rel)  # ranks once per direction, reused for every K
        for k in ks:
            _check_k(k, scores.shape[1], "images" if direction == "text_to_image" else "captions")
            rows.append({"direction": direction, "k": int(k), "recall": float(np.mean(first < k))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# AP / mAP and NDCG
# ----------------------------------------------------------------------------------------------


def mean_average_precision(similarity: Any, relevant: Any, *, return_per_query: bool = False):
    """Mean average precision over queries (binary relevance, full ranking).

    AP(q) = (1/R_q) Σ_{i=1..n} rel_i · Precision@i, with Precision@i = (1/i) Σ_{j≤i} rel_j, the
    ranking from :func:`rank` and R_q the number of relevant items; mAP = mean_q AP(q).

    Args:
        similarity: ``[n_queries, n_items]`` scores (``[n_items]`` = one query, giving its AP).
        relevant: binary ``[n_queries, n_items]``; every query needs a relevant item.
        return_per_query: return a DataFrame ``query, average_precision`` instead of the mean.

    Returns:
        mAP as a float, or the per-query DataFrame.
    """
    s = _scores_2d(similarity)
    rel = _relevance_2d(relevant, s.shape, binary=True)
    ap = np.empty(s.shape[0])
    positions = np.arange(1, s.shape[1] + 1, dtype=np.float64)
    for rows in _row_chunks(*s.shape):
        order = np.argsort(-s[rows], axis=1, kind="stable")
        hits = np.take_along_axis(rel[rows], order, axis=1).astype(np.float64)
        precision = np.cumsum(hits, axis=1) / positions
        ap[rows] = (hits * precision).sum(axis=1) / hits.sum(axis=1)
    if return_per_query:
        return _per_query_frame(ap, "average_precision")
    return float(ap.mean())


def ndcg(similarity: Any, relevant: Any, *, k: int | None = None, return_per_query: bool = False):
    """Normalised discounted cumulative gain at k, averaged over queries.

    DCG@k = Σ_{i=1..k} gain_i / log2(i + 1) with gain = relevance of the item at position i
    (binary relevance: gain 1 for a relevant item); NDCG@k = DCG@k / IDCG@k, IDCG@k being the DCG
    of the ideal ordering (relevances sorted descending). Matches ``sklearn.metrics.ndcg_score``
    when scores have no ties.

    Args:
        similarity: ``[n_queries, n_items]`` scores.
        relevant: ``[n_queries, n_items]`` non-negative gains (bool / 0-1 for binary relevance).
        k: cut-off (default: the full ranking).
        return_per_query: return a DataFrame ``query, ndcg`` instead of the mean.
    """
    s = _scores_2d(similarity)
    rel = _relevance_2d(relevant, s.shape, binary=False)
    k = s.shape[1] if k is None else _check_k(k, s.shape[1])
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    out = np.empty(s.shape[0])
    for rows in _row_chunks(*s.shape):
        order = np.argsort(-s[rows], axis=1, kind="stable")[:, :k]
        dcg = (np.take_along_axis(rel[rows], order, axis=1) * discount).sum(axis=1)
        ideal = -np.sort(-rel[rows], axis=1)[:, :k]
        out[rows] = dcg / (ideal * discount).sum(axis=1)
    if return_per_query:
        return _per_query_frame(out, "ndcg")
    return float(out.mean())
