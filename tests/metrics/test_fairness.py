"""Tests for workbench.metrics.fairness: NDKL, KL@k, skew, normalized entropy, Bias@K."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.metrics.fairness import (
    bias_at_k,
    kl_divergence_at_k,
    max_skew_at_k,
    min_skew_at_k,
    ndkl,
    normalized_entropy_at_k,
    skew_table,
)
from workbench.metrics.retrieval import rank

LN2 = math.log(2)


def kl(p, q):
    """Reference KL for the hand examples: natural log, p = 0 terms dropped."""
    return sum(pa * math.log(pa / qa) for pa, qa in zip(p, q) if pa > 0)


def w(i):
    return 1 / math.log2(i + 1)


# ---------------------------------------------------------------------------- NDKL


def test_ndkl_four_items_by_hand():
    # scores rank items 0,1,2,3; their groups read 0,0,1,1 in ranking order; Q = (1/2, 1/2)
    sim = np.array([4.0, 3.0, 2.0, 1.0])
    groups = np.array([0, 0, 1, 1])
    kls = [kl([1, 0], [.5, .5]),            # top-1: all class 0 -> ln 2
           kl([1, 0], [.5, .5]),            # top-2
           kl([2 / 3, 1 / 3], [.5, .5]),    # top-3 = 2/3 ln(4/3) + 1/3 ln(2/3)
           kl([.5, .5], [.5, .5])]          # top-4 balanced -> 0
    expected = sum(kls[i - 1] * w(i) for i in range(1, 5)) / sum(w(i) for i in range(1, 5))
    assert expected == pytest.approx(0.452369, abs=1e-6)  # (2.5616 normaliser, worked on paper)
    assert ndkl(sim, groups) == pytest.approx(expected, rel=1e-12)
    # top-2 only: both prefixes are all class 0
    assert ndkl(sim, groups, k=2) == pytest.approx(LN2)


def test_ndkl_with_prior_by_hand():
    sim = np.array([4.0, 3.0, 2.0, 1.0])
    groups = np.array([0, 1, 0, 0])
    q = [0.75, 0.25]
    prefixes = [[1, 0], [.5, .5], [2 / 3, 1 / 3], [.75, .25]]
    expected = sum(kl(p, q) * w(i) for i, p in enumerate(prefixes, 1)) / sum(w(i) for i in range(1, 5))
    assert ndkl(sim, groups, prior=np.array(q)) == pytest.approx(expected, rel=1e-12)
    # the pool is 3/4 class 0, so prior="pool" is the same target here
    assert ndkl(sim, groups, prior="pool") == pytest.approx(expected, rel=1e-12)


def test_ndkl_single_class_is_ln_g():
    groups = np.zeros(6, dtype=int)
    sim = np.linspace(0, 1, 6)
    assert ndkl(sim, groups, n_groups=2) == pytest.approx(LN2)
    assert ndkl(sim, groups, n_groups=3) == pytest.approx(math.log(3))


def test_ndkl_relevant_mask_keeps_only_relevant_items_in_order():
    # 7 items; query 0 is relevant to items 1, 3, 4, 6, ranked 6 > 4 > 3 > 1 with groups 0,0,1,1
    groups = np.array([1, 1, 0, 1, 0, 1, 0])
    sim = np.array([[0.9, 0.1, 0.8, 0.3, 0.5, 0.7, 0.6]])
    mask = np.zeros((1, 7), dtype=bool)
    mask[0, [1, 3, 4, 6]] = True
    assert ndkl(sim, groups, relevant_mask=mask) == pytest.approx(ndkl(np.array([4.0, 3, 2, 1]), [0, 0, 1, 1]))
    # with a ranking instead of scores, and a cut-off on the relevant list (first two are class 0)
    assert ndkl(None, groups, ranking=rank(sim), relevant_mask=mask, k=2) == pytest.approx(LN2)


def test_ndkl_averages_queries_and_reports_per_query():
    groups = np.array([0, 1])
    sim = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # every query: one of each -> same NDKL
    one = (LN2 * w(1) + 0.0 * w(2)) / (w(1) + w(2))
    table = ndkl(torch.tensor(sim), torch.tensor(groups), return_per_query=True)
    assert list(table.columns) == ["query", "ndkl"]
    np.testing.assert_allclose(table["ndkl"], [one, one, one])
    assert ndkl(sim, groups) == pytest.approx(one)


def test_ndkl_ranking_input_equals_similarity_input():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(3, 12))
    groups = rng.integers(0, 3, size=12)
    assert ndkl(None, groups, ranking=rank(sim)) == pytest.approx(ndkl(sim, groups))


def test_ndkl_input_errors():
    groups = np.array([0, 1, 0])
    with pytest.raises(ValueError, match=r"similarity has shape \(1, 4\) but groups has 3 entries"):
        ndkl(np.zeros(4), groups)
    with pytest.raises(ValueError, match="exactly one of similarity"):
        ndkl(np.zeros(3), groups, ranking=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="lists an item twice"):
        ndkl(None, groups, ranking=np.array([0, 0, 2]))
    with pytest.raises(ValueError, match="outside 0..2"):
        ndkl(None, groups, ranking=np.array([0, 5]))
    with pytest.raises(ValueError, match="code 2 but n_groups=2"):
        ndkl(np.zeros(3), np.array([0, 1, 2]), n_groups=2)
    with pytest.raises(ValueError, match="prior sums to 0.9"):
        ndkl(np.zeros(3), groups, prior=np.array([0.5, 0.4]))
    with pytest.raises(ValueError, match=r"prior has shape \(3,\) but there are 2 classes"):
        ndkl(np.zeros(3), groups, n_groups=2, prior=np.array([0.5, 0.25, 0.25]))
    with pytest.raises(ValueError, match="zero probability to class.*1"):
        ndkl(np.zeros(3), groups, prior=np.array([1.0, 0.0]))
    with pytest.raises(TypeError, match="integer codes.*factorize"):
        ndkl(np.zeros(3), np.array(["m", "f", "m"]))
    with pytest.raises(ValueError, match="NaN"):
        ndkl(np.array([0.0, np.nan, 1.0]), groups)
    with pytest.raises(ValueError, match="query 0 has no relevant item"):
        ndkl(np.zeros(3), groups, relevant_mask=np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="k=3 is larger than the pool of 2 relevant items of query 0"):
        ndkl(np.zeros(3), groups, relevant_mask=np.array([True, False, True]), k=3)


# ---------------------------------------------------------------------------- top-k metrics

# Two queries over 6 items; groups 0,1,0,1,0,0 (pool mix 2/3, 1/3).
POOL_GROUPS = np.array([0, 1, 0, 1, 0, 0])
SIM = np.array([
    [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # top-4 groups 0,1,0,1 -> (1/2, 1/2)
    [6.0, 1.0, 5.0, 2.0, 4.0, 3.0],  # top-4 groups 0,0,0,0 -> (1, 0)
])


def test_kl_at_k_by_hand_pool_prior():
    prior = [2 / 3, 1 / 3]
    per_query = [kl([.5, .5], prior), kl([1, 0], prior)]  # the second = ln(3/2)
    assert kl_divergence_at_k(SIM, POOL_GROUPS, 4) == pytest.approx(np.mean(per_query))
    table = kl_divergence_at_k(SIM, POOL_GROUPS, 4, return_per_query=True)
    np.testing.assert_allclose(table["kl"], per_query)
    assert kl_divergence_at_k(SIM, POOL_GROUPS, 4, prior="uniform") == pytest.approx((0 + LN2) / 2)


def test_max_and_min_skew_by_hand_uniform():
    # query 0: p = (1/2, 1/2) -> skews 0, 0
    # query 1: p = (1, 0 -> 1/4) -> skews ln 2, ln(1/4) - ln(1/2) = -ln 2
    assert max_skew_at_k(SIM, POOL_GROUPS, 4) == pytest.approx((0 + LN2) / 2)
    assert min_skew_at_k(SIM, POOL_GROUPS, 4) == pytest.approx((0 - LN2) / 2)


def test_skew_with_three_classes_and_pool_prior_by_hand():
    groups = np.array([0, 0, 0, 1, 2, 2, 2, 2])  # pool mix (3/8, 1/8, 4/8)
    sim = np.arange(8, 0, -1, dtype=float)       # top-4 groups 0,0,0,1 -> p = (3/4, 1/4, 0 -> 1/4)
    skews = [math.log(0.75 / (3 / 8)), math.log(0.25 / (1 / 8)), math.log(0.25 / (4 / 8))]
    assert max_skew_at_k(sim, groups, 4, prior="pool") == pytest.approx(max(skews))  # ln 2
    assert min_skew_at_k(sim, groups, 4, prior="pool") == pytest.approx(min(skews))  # -ln 2
    table = skew_table(sim, groups, 4, prior="pool")
    assert list(table.columns) == ["query", "group", "p_retrieved", "p_target", "skew"]
    np.testing.assert_allclose(table["p_retrieved"], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(table["p_target"], [3 / 8, 1 / 8, 4 / 8])
    np.testing.assert_allclose(table["skew"], skews)


def test_skew_ignores_classes_absent_from_pool_under_pool_prior():
    groups = np.array([0, 0, 1, 1])
    sim = np.array([4.0, 3, 2, 1])
    table = skew_table(sim, groups, 2, prior="pool", n_groups=3)
    assert np.isnan(table["skew"].iloc[2])
    assert max_skew_at_k(sim, groups, 2, prior="pool", n_groups=3) == pytest.approx(LN2)


def test_balanced_top_k_gives_zero_skew_kl_and_full_entropy():
    groups = np.array([0, 1, 2, 0, 1, 2])
    sim = np.arange(6, 0, -1, dtype=float)
    assert max_skew_at_k(sim, groups, 3) == 0.0
    assert min_skew_at_k(sim, groups, 3) == 0.0
    assert kl_divergence_at_k(sim, groups, 6, prior="uniform") == pytest.approx(0.0, abs=1e-15)
    assert normalized_entropy_at_k(sim, groups, 3) == pytest.approx(1.0)


def test_normalized_entropy_by_hand():
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # top-4 groups 0,0,0,1
    sim = np.arange(6, 0, -1, dtype=float)
    groups = np.array([0, 0, 1, 0, 1, 1])
    assert normalized_entropy_at_k(sim, groups, 4) == pytest.approx(h / math.log(2))  # 0.8113
    assert normalized_entropy_at_k(sim, groups, 4, n_groups=3) == pytest.approx(h / math.log(3))
    assert normalized_entropy_at_k(sim, np.zeros(6, int), 4, n_groups=2) == 0.0  # single class


def test_bias_at_k_by_hand():
    groups = np.array([0, 0, 1, 2, 0, 1])  # 2 = gender unknown
    sim = np.array([[6.0, 5, 4, 3, 2, 1],   # top-5: 0,0,1,2,0 -> N0=3, N1=1
                    [1.0, 2, 3, 4, 5, 6]])  # top-5: 1,0,2,1,0 -> N0=2, N1=2
    assert bias_at_k(sim, groups, 5) == pytest.approx(((3 - 1) / 5 + 0) / 2)
    assert bias_at_k(sim, groups, 5, denominator="pair") == pytest.approx(((3 - 1) / 4 + 0) / 2)
    assert bias_at_k(sim, groups, 5, classes=(1, 0), return_per_query=True)["bias"].tolist() == \
        pytest.approx([-0.4, 0.0])
    only_unknown_on_top = np.array([[1.0, 2, 3, 6, 5, 4]])  # top-1 is item 3, gender unknown
    assert bias_at_k(only_unknown_on_top, groups, 1, denominator="pair") == 0.0  # neither class in the top K: 0
    with pytest.raises(ValueError, match="denominator"):
        bias_at_k(sim, groups, 5, denominator="n")


ALL_METRICS = {  # name -> call on (sim, groups, **kwargs)
    "ndkl": lambda sim, g, **kw: ndkl(sim, g, **kw),
    "kl_divergence_at_k": lambda sim, g, **kw: kl_divergence_at_k(sim, g, 3, **kw),
    "skew_table": lambda sim, g, **kw: skew_table(sim, g, 3, **kw),
    "max_skew_at_k": lambda sim, g, **kw: max_skew_at_k(sim, g, 3, **kw),
    "min_skew_at_k": lambda sim, g, **kw: min_skew_at_k(sim, g, 3, **kw),
    "normalized_entropy_at_k": lambda sim, g, **kw: normalized_entropy_at_k(sim, g, 3, **kw),
}


@pytest.mark.parametrize("name", sorted(ALL_METRICS))
@pytest.mark.parametrize("code", [0, 1])
def test_single_group_pool_without_n_groups_raises_instead_of_reporting_fair(name, code):
    # every item female (code 1) or every item male (code 0): the old inference gave G = 1 or 2 from
    # max + 1, and NDKL / MaxSkew / KL of 0 ("fair") for any ranking
    sim, groups = np.linspace(1, 0, 6), np.full(6, code)
    metric = ALL_METRICS[name]
    with pytest.raises(ValueError, match=rf"{name}: only one group is present in the labels .*group code {code}.*"
                                         r"pass n_groups= \(the number of groups in the population"):
        metric(sim, groups, **({} if name == "normalized_entropy_at_k" else {"prior": "uniform"}))
    if name != "normalized_entropy_at_k":  # the pool prior of a single group is refused even with n_groups
        with pytest.raises(ValueError, match=rf"{name}: only one group is present.*prior='pool'.*prior='uniform'"):
            metric(sim, groups, prior="pool", n_groups=2)
    with pytest.raises(ValueError, match=rf"{name}: n_groups is 1.*>= 2"):
        metric(sim, np.zeros(6, int), n_groups=1)


def test_single_group_pool_with_n_groups_is_maximally_unfair():
    sim, groups = np.linspace(1, 0, 6), np.ones(6, int)  # all female, G = 2 given
    assert ndkl(sim, groups, n_groups=2) == pytest.approx(LN2)
    assert max_skew_at_k(sim, groups, 3, n_groups=2) == pytest.approx(LN2)  # ln(1 / (1/2))
    assert min_skew_at_k(sim, groups, 3, n_groups=2) == pytest.approx(math.log((1 / 3) / (1 / 2)))
    assert kl_divergence_at_k(sim, groups, 3, prior="uniform", n_groups=2) == pytest.approx(LN2)
    assert normalized_entropy_at_k(sim, groups, 3, n_groups=2) == 0.0
    # an array prior says how many groups there are, as n_groups does
    assert ndkl(sim, groups, prior=np.array([0.5, 0.5])) == pytest.approx(LN2)


def test_bias_at_k_needs_both_classes_in_the_pool():
    sim = np.linspace(1, 0, 5)
    with pytest.raises(ValueError, match=r"class\(es\) \[0\] of classes=\(0, 1\) do not occur in groups .*"
                                         r"holds only \[1, 2\].*pass classes= that both occur"):
        bias_at_k(sim, np.array([1, 1, 2, 1, 2]), 3)
    with pytest.raises(ValueError, match=r"class\(es\) \[0, 1\]"):
        bias_at_k(sim, np.full(5, 2), 3)


def test_top_k_metrics_require_k_within_pool():
    with pytest.raises(ValueError, match="k=7 is larger than the pool of 6 items"):
        max_skew_at_k(SIM, POOL_GROUPS, 7)
    with pytest.raises(ValueError, match="k=3 is larger than the pool of 2 ranked items"):
        kl_divergence_at_k(None, POOL_GROUPS, 3, ranking=np.array([[0, 1]]))


# ---------------------------------------------------------------------------- invariants

rankings = st.integers(0, 2**31 - 1).map(np.random.default_rng)


@settings(max_examples=40, deadline=None)
@given(rng=rankings, n_items=st.integers(2, 30), n_groups=st.integers(2, 4))
def test_ndkl_is_non_negative_and_bounded_by_single_class(rng, n_items, n_groups):
    groups = rng.integers(0, n_groups, size=n_items)
    sim = rng.normal(size=(2, n_items))
    value = ndkl(sim, groups, n_groups=n_groups)
    assert 0.0 <= value <= math.log(n_groups) + 1e-12


@settings(max_examples=40, deadline=None)
@given(rng=rankings, n_items=st.integers(2, 30))
def test_swapping_two_items_of_the_same_group_leaves_metrics_unchanged(rng, n_items):
    groups = rng.integers(0, 2, size=n_items)
    groups[:2] = 0  # at least two items of group 0 (the pool may hold no other group: n_groups is passed)
    same = np.flatnonzero(groups == 0)
    i, j = rng.choice(same, size=2, replace=False)
    sim = rng.normal(size=n_items)
    swapped = sim.copy()
    swapped[[i, j]] = sim[[j, i]]
    k = int(rng.integers(1, n_items + 1))
    assert ndkl(swapped, groups, n_groups=2) == pytest.approx(ndkl(sim, groups, n_groups=2), abs=1e-12)
    assert max_skew_at_k(swapped, groups, k, n_groups=2) == \
        pytest.approx(max_skew_at_k(sim, groups, k, n_groups=2), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(rng=rankings, n_items=st.integers(3, 30), n_groups=st.integers(2, 5))
def test_entropy_in_unit_interval_and_skews_straddle_zero(rng, n_items, n_groups):
    groups = rng.integers(0, n_groups, size=n_items)
    groups[:2] = [0, 1]  # two groups present (the pool prior of KL@k needs them)
    sim = rng.normal(size=(3, n_items))
    k = int(rng.integers(1, n_items + 1))
    assert 0.0 <= normalized_entropy_at_k(sim, groups, k, n_groups=n_groups) <= 1.0 + 1e-12
    assert max_skew_at_k(sim, groups, k, n_groups=n_groups) >= 0.0
    assert min_skew_at_k(sim, groups, k, n_groups=n_groups) <= 0.0
    assert kl_divergence_at_k(sim, groups, k, n_groups=n_groups) >= 0.0


# ----------------------------------------------------------------------------------------------
# ndkl_chance: the expected NDKL of a random ranking
# ----------------------------------------------------------------------------------------------


def test_ndkl_chance_equals_the_mean_over_every_permutation():
    """Exhaustive: a pool of 7 items in 3 classes, all 7! orders scored by `ndkl` itself."""
    import itertools

    from workbench.metrics import ndkl_chance

    groups = np.array([0, 0, 0, 1, 1, 2, 2])
    q = np.array([0.5, 0.3, 0.2])
    for k in (None, 4):
        scores = [ndkl(None, groups, ranking=np.array(p)[None], prior=q, k=k)
                  for p in itertools.permutations(range(groups.size))]
        assert ndkl_chance(groups, prior=q, k=k) == pytest.approx(np.mean(scores), rel=1e-10)


def test_ndkl_chance_matches_random_rankings_under_the_sispi_protocol():
    """Two queries with different relevant sets (64/64 and 30/10 of 2 classes): the per-query chance level
    agrees with the mean NDKL of 3,000 random score draws within 4 standard errors, and the two differ."""
    from workbench.metrics import ndkl_chance

    rng = np.random.default_rng(0)
    groups = np.r_[np.zeros(64, int), np.ones(64, int), np.zeros(30, int), np.ones(10, int)]
    mask = np.zeros((2, groups.size), bool)
    mask[0, :128], mask[1, 128:] = True, True
    chance = ndkl_chance(groups, relevant_mask=mask, return_per_query=True)["ndkl_chance"].to_numpy()
    draws = np.array([ndkl(rng.random((2, groups.size)), groups, relevant_mask=mask, return_per_query=True)
                      ["ndkl"].to_numpy() for _ in range(3000)])
    se = draws.std(axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - chance) < 4 * se), (draws.mean(axis=0), chance, se)
    assert chance[1] > chance[0] + 0.05  # an unbalanced pool's chance level against a uniform Q is higher
    assert ndkl_chance(groups, relevant_mask=mask) == pytest.approx(chance.mean())


def test_ndkl_chance_bad_input():
    from workbench.metrics import ndkl_chance

    with pytest.raises(ValueError, match="relevant_mask has shape"):
        ndkl_chance(np.array([0, 1, 0, 1]), relevant_mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="query 1 has no relevant item"):
        ndkl_chance(np.array([0, 1, 0, 1]), relevant_mask=np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool))
    with pytest.raises(ValueError, match="n_groups"):
        ndkl_chance(np.zeros(5, int))
