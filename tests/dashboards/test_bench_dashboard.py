"""benchmarks/bench_dashboard.py's bookkeeping: toggles cycle through the keys, rows report median and p95 of the
state's own update times against the goal."""
import pytest

from benchmarks.bench_dashboard import rows, toggle_latencies


class FakeState:
    def __init__(self):
        self.on, self.calls, self.last_update_s = set(), [], 0.0

    def toggle(self, *key):
        self.calls.append(key)
        self.on ^= {key}
        self.last_update_s = 0.01 * len(self.calls)


def test_toggles_cycle_and_times_are_the_states():
    state = FakeState()
    wall, cpu = toggle_latencies(state, [(5, 0), (5, 1)], n=5, device="cpu")
    # untimed on/off, then (5, 0) on, (5, 1) on, (5, 0) off, (5, 1) off, (5, 0) on
    assert state.calls == [(5, 0)] * 3 + [(5, 1), (5, 0), (5, 1), (5, 0)]
    assert wall == pytest.approx([0.03, 0.04, 0.05, 0.06, 0.07]) and len(cpu) == 5
    median, p95 = rows("x", (wall, cpu), baseline=1.0, baseline_name="forward", goal_s=0.06, device="cpu",
                       dtype="float32")
    assert median["case"] == "x, median per toggle" and median["figure"] == pytest.approx(50.0)
    assert median["met"] is True and median["ratio"] == pytest.approx(20.0)
    assert p95["figure"] == pytest.approx(68.0) and p95["met"] is False and p95["goal"] == "< 60 ms"
    assert rows("y", (wall, cpu), 1.0, "forward", None, "cpu", "float32")[0]["met"] is None
