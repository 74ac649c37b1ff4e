"""What the method commands share: the "best variant within the utility budget" rule."""
from workbench.method_report import UTILITY_BUDGET, lowest_within_budget

BASE = {"ndkl": 0.10, "map": 0.90, "zero_shot_accuracy": 0.95}
BUDGETS = {"map": UTILITY_BUDGET, "zero_shot_accuracy": UTILITY_BUDGET}


def test_lowest_score_among_variants_within_the_budget():
    variants = {
        "costly_map": {"ndkl": 0.01, "map": 0.85, "zero_shot_accuracy": 0.95},   # mAP −0.05: out
        "costly_zs": {"ndkl": 0.02, "map": 0.90, "zero_shot_accuracy": 0.92},    # −3 points: out
        "at_budget": {"ndkl": 0.05, "map": 0.88, "zero_shot_accuracy": 0.93},    # exactly −0.02 on both: in
        "no_score": {"map": 0.90, "zero_shot_accuracy": 0.95},                   # no ndkl: skipped
        "worse": {"ndkl": 0.20, "map": 0.90, "zero_shot_accuracy": 0.95},
    }
    assert lowest_within_budget(BASE, variants, "ndkl", BUDGETS) == "at_budget"
    assert lowest_within_budget(BASE, {"x": variants["costly_map"]}, "ndkl", BUDGETS) is None
    # only the budgets named are checked; a metric the variant lacks is not checked
    assert lowest_within_budget(BASE, variants, "ndkl", {"zero_shot_accuracy": UTILITY_BUDGET}) == "costly_map"
    assert lowest_within_budget(BASE, {"a": {"ndkl": 0.3}, "b": {"ndkl": 0.2}}, "ndkl", BUDGETS) == "b"


def test_score_function_and_ties():
    variants = {"a": {"x": 1.0, "y": 3.0}, "b": {"x": 2.0, "y": 2.0}, "c": {"x": 2.0, "y": 2.0}, "d": {"x": 9.0}}
    score = lambda m: m["x"] + m["y"] if "y" in m else None  # noqa: E731
    assert lowest_within_budget({}, variants, score, {}) == "a"  # a ties with b and c on 4.0: the first wins
    assert lowest_within_budget({}, {k: variants[k] for k in "bcd"}, score, {}) == "b"
