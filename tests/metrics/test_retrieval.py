"""Tests for workbench.metrics.retrieval: rank, Recall@K, mAP, NDCG."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, ndcg_score

import workbench.metrics.retrieval as retrieval
from workbench.metrics.retrieval import (
    first_relevant_rank,
    mean_average_precision,
    ndcg,
    rank,
    recall_at_k,
    recall_table,
    relevance_from_labels,
)

# ---------------------------------------------------------------------------- rank


def test_rank_orders_best_first_and_breaks_ties_by_lower_index():
    sim = np.array([[0.1, 0.5, 0.5, 0.2], [3.0, 1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(rank(sim), [[1, 2, 3, 0], [0, 2, 1, 3]])
    np.testing.assert_array_equal(rank(sim, k=2), [[1, 2], [0, 2]])


def test_rank_one_query_and_torch_input():
    np.testing.assert_array_equal(rank(np.array([0.2, 0.9, -1.0])), [1, 0, 2])
    t = torch.tensor([[0.2, 0.9, -1.0]], dtype=torch.bfloat16)
    np.testing.assert_array_equal(rank(t), [[1, 0, 2]])


def test_rank_chunked_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 5, size=(7, 11)).astype(float)  # many ties
    expected = np.argsort(-sim, axis=1, kind="stable")
    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 20)  # two rows per chunk
    np.testing.assert_array_equal(rank(sim), expected)


def test_rank_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN.*query 0, item 1"):
        rank(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="k=5 is larger than the pool of 3"):
        rank(np.zeros((2, 3)), k=5)
    with pytest.raises(ValueError, match="got shape"):
        rank(np.zeros((2, 3, 4)))


def test_relevance_from_labels():
    rel = relevance_from_labels(np.array([0, 2]), np.array([2, 0, 0, 1]))
    np.testing.assert_array_equal(rel, [[False, True, True, False], [True, False, False, False]])


# ---------------------------------------------------------------------------- first relevant rank


def test_first_relevant_rank_by_hand():
    sim = np.array([[0.9, 0.1, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3]])
    rel = np.array([[0, 0, 0, 1], [0, 0, 1, 1]], dtype=bool)
    # query 0: order 0, 2, 3, 1 -> item 3 sits at position 2 (tie with item 2 goes to item 2)
    # query 1: all tied -> order 0, 1, 2, 3 -> first relevant item (2) at position 2
    np.testing.assert_array_equal(first_relevant_rank(sim, rel), [2, 2])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_first_relevant_rank_matches_full_ranking(seed):
    rng = np.random.default_rng(seed)
    sim = rng.integers(-2, 3, size=(4, 9)).astype(float)
    sim[rng.random(sim.shape) < 0.1] = -np.inf
    rel = rng.random((4, 9)) < 0.3
    rel[np.arange(4), rng.integers(0, 9, 4)] = True
    order = rank(sim)
    expected = [np.flatnonzero(rel[q][order[q]])[0] for q in range(4)]
    np.testing.assert_array_equal(first_relevant_rank(sim, rel), expected)


# ---------------------------------------------------------------------------- Recall@K

# 5 captions, 3 images; captions 0,1 -> image 0; 2,3 -> image 1; 4 -> image 2.
CAPTION_TO_IMAGE = np.array([0, 0, 1, 1, 2])
TEXT_IMAGE_SIM = np.array([
    [0.9, 0.1, 0.0],   # image 0 first
    [0.2, 0.8, 0.1],   # image 0 second
    [0.3, 0.2, 0.5],   # image 1 third
    [0.1, 0.7, 0.6],   # image 1 first
    [0.5, 0.4, 0.45],  # image 2 second
])


def test_text_to_image_recall_by_hand():
    # positions of the true image: 0, 1, 2, 0, 1
    assert recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 1) == pytest.approx(2 / 5)
    assert recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 2) == pytest.approx(4 / 5)
    assert recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 3) == pytest.approx(1.0)


def test_image_to_text_recall_by_hand():
    # image 0 column: captions ordered 0, 4, 2, 1, 3 -> its caption 0 at position 0
    # image 1 column: ordered 1, 3, 4, 2, 0 -> its caption 3 at position 1
    # image 2 column: ordered 3, 2, 4, 1, 0 -> its caption 4 at position 2
    kw = dict(direction="image_to_text")
    assert recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 1, **kw) == pytest.approx(1 / 3)
    assert recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 2, **kw) == pytest.approx(2 / 3)
    assert recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 3, **kw) == pytest.approx(1.0)


def test_recall_table_lists_both_directions():
    table = recall_table(torch.tensor(TEXT_IMAGE_SIM), CAPTION_TO_IMAGE, ks=(1, 2))
    assert list(table.columns) == ["direction", "k", "recall"]
    got = {(r.direction, r.k): r.recall for r in table.itertuples()}
    assert got == pytest.approx({("text_to_image", 1): 0.4, ("text_to_image", 2): 0.8,
                                 ("image_to_text", 1): 1 / 3, ("image_to_text", 2): 2 / 3})


def test_recall_errors_are_specific():
    with pytest.raises(ValueError, match=r"caption_to_image has shape \(5,\) but similarity has shape \(3, 5\)"):
        recall_at_k(TEXT_IMAGE_SIM.T, CAPTION_TO_IMAGE, 1)
    with pytest.raises(ValueError, match="image 2 but similarity has only 2 image columns"):
        recall_at_k(TEXT_IMAGE_SIM[:, :2], CAPTION_TO_IMAGE, 1)
    with pytest.raises(ValueError, match="1 image.*no caption.*image 2"):
        recall_at_k(TEXT_IMAGE_SIM[:4], CAPTION_TO_IMAGE[:4], 1, direction="image_to_text")
    with pytest.raises(ValueError, match="k=4 is larger than the pool of 3 images"):
        recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 4)
    with pytest.raises(ValueError, match="direction must be one of"):
        recall_at_k(TEXT_IMAGE_SIM, CAPTION_TO_IMAGE, 1, direction="t2i")


# ---------------------------------------------------------------------------- mAP


def test_average_precision_by_hand():
    sim = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    rel = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    ap0 = (1 / 1 + 2 / 3) / 2  # hits at positions 1 and 3
    ap1 = (1 / 2 + 2 / 4) / 2  # hits at positions 2 and 4
    assert mean_average_precision(sim, rel) == pytest.approx((ap0 + ap1) / 2)
    per_query = mean_average_precision(sim, rel, return_per_query=True)
    assert list(per_query.columns) == ["query", "average_precision"]
    np.testing.assert_allclose(per_query["average_precision"], [ap0, ap1])
    assert mean_average_precision(sim[0], rel[0]) == pytest.approx(ap0)  # 1-D: one query


def test_average_precision_matches_sklearn_on_random_scores():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(6, 40))
    rel = rng.random((6, 40)) < 0.25
    rel[:, 0] = True
    expected = [average_precision_score(rel[q], sim[q]) for q in range(6)]
    per_query = mean_average_precision(sim, rel, return_per_query=True)
    np.testing.assert_allclose(per_query["average_precision"], expected, rtol=1e-12)


def test_average_precision_rejects_bad_relevance():
    sim = np.zeros((2, 3))
    with pytest.raises(ValueError, match="1 query/queries have no relevant item.*query 1"):
        mean_average_precision(sim, np.array([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="binary"):
        mean_average_precision(sim, np.array([[2, 0, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match=r"relevant has shape \(1, 3\) but similarity has shape \(1, 4\)"):
        mean_average_precision(np.zeros(4), np.array([1, 0, 0]))


# ---------------------------------------------------------------------------- NDCG


def test_ndcg_by_hand():
    sim = np.array([0.9, 0.8, 0.7, 0.6])
    rel = np.array([1, 0, 1, 0])
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg(sim, rel) == pytest.approx(dcg / idcg)
    assert ndcg(sim, rel, k=2) == pytest.approx(1.0 / idcg)
    assert ndcg(sim, rel[::-1].copy(), k=1) == pytest.approx(0.0)  # best item irrelevant


@pytest.mark.parametrize("k", [None, 1, 5, 30])
def test_ndcg_matches_sklearn_on_random_scores(k):
    rng = np.random.default_rng(2)
    sim = rng.normal(size=(5, 30))
    gains = rng.integers(0, 3, size=(5, 30)).astype(float)  # graded relevance
    gains[:, 3] = 1.0
    per_query = ndcg(sim, gains, k=k, return_per_query=True)["ndcg"].to_numpy()
    expected = [ndcg_score(gains[q:q + 1], sim[q:q + 1], k=k) for q in range(5)]
    np.testing.assert_allclose(per_query, expected, rtol=1e-12)
    assert ndcg(sim, gains, k=k) == pytest.approx(ndcg_score(gains, sim, k=k))
