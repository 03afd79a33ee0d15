"""The fewer-steps frontier: which rows form it, its curve in log cost, and where other rows stand against it."""

import math

import pytest

from flexgen.metrics.frontier import find_frontier, place
from tests.metrics_helpers import measured

DENSE = "ab" * 32


def at_steps(n_steps, cost, value, interval=None, **overrides):
    """A dense-model row sampled with `n_steps` steps costing `cost` GMACs per sample; `overrides` win."""
    fields = dict(method="baseline", model_variant="Latte (dense)", ckpt_sha256=DENSE, sampler="ddim", steps=n_steps,
                  gflops_per_sample=cost, value=value, interval=interval)
    return measured(**{**fields, **overrides})


def other(cost, value, interval=None, **overrides):
    """A row of another model (its own checkpoint), 25 steps unless `overrides` say otherwise."""
    fields = dict(model_variant="FlexDiT-Latte", method="flexdit", ckpt_sha256="cd" * 32)
    return at_steps(25, cost, value, interval, **{**fields, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Which rows form the frontier
# ---------------------------------------------------------------------------------------------------------------

def test_the_group_with_the_most_step_counts_is_the_frontier():
    two = [other(10.0, 5.0, steps=10), other(50.0, 3.0, steps=50)]
    three = [at_steps(3, 6.0, 30.0), at_steps(10, 20.0, 14.0), at_steps(50, 100.0, 8.0)]
    frontier = find_frontier(sorted(two + three, key=lambda r: r.value))
    assert frontier is not None
    assert frontier.steps == [3, 10, 50] and frontier.costs == [6.0, 20.0, 100.0]
    assert all(r.ckpt_sha256 == DENSE for r in frontier.rows) and len(frontier.rows) == 3


def test_a_tie_goes_to_the_group_whose_best_row_comes_first():
    dense = [at_steps(10, 20.0, 14.0), at_steps(50, 100.0, 8.0)]
    flex = [other(10.0, 5.0, steps=10), other(50.0, 3.0, steps=50)]
    rows = sorted(dense + flex, key=lambda r: r.value)             # best first: flex's 3.0 leads
    assert find_frontier(rows).name == "FlexDiT-Latte flexdit"
    assert find_frontier(list(reversed(rows))).name == "Latte (dense)"


@pytest.mark.parametrize("second", [
    dict(steps=10),                                    # one step count only
    dict(ckpt_sha256="ee" * 32),                       # another checkpoint
    dict(method="flexdit"),                            # another method
    dict(sampler="ddpm"),                              # another sampler
    dict(gflops_per_sample=None),                      # no cost per sample
    dict(extra={"floor": True}),                       # the floor is never a model
])
def test_no_frontier_without_two_step_counts_of_one_model(second):
    rows = [at_steps(10, 20.0, 14.0), at_steps(50, 100.0, 8.0, **second)]
    assert find_frontier(rows) is None


def test_rows_without_a_checkpoint_hash_form_no_frontier():
    assert find_frontier([at_steps(10, 20.0, 14.0, ckpt_sha256=""), at_steps(50, 100.0, 8.0, ckpt_sha256="")]) is None
    assert find_frontier([]) is None


def test_several_rows_at_one_step_count_give_one_point_the_best():
    rows = [at_steps(50, 100.0, 8.0), at_steps(10, 20.0, 14.0), at_steps(10, 20.0, 15.0, seeds=[1])]
    frontier = find_frontier(rows)
    assert frontier.steps == [10, 50] and [p.value for p in frontier.points] == [14.0, 8.0]
    assert len(frontier.rows) == 3


# ---------------------------------------------------------------------------------------------------------------
# The curve
# ---------------------------------------------------------------------------------------------------------------

def test_the_curve_is_linear_in_log_cost():
    frontier = find_frontier([at_steps(10, 10.0, 20.0, [18.0, 22.0]), at_steps(100, 1000.0, 10.0, [9.0, 11.0])])
    value, low, high = frontier.at(100.0)                   # halfway in log(cost): halfway in value
    assert (value, low, high) == pytest.approx((15.0, 13.5, 16.5))
    t = math.log(30.0 / 10.0) / math.log(100.0)
    assert frontier.at(30.0)[0] == pytest.approx(20.0 - 10.0 * t)
    assert frontier.at(10.0) == pytest.approx((20.0, 18.0, 22.0)) and frontier.at(1000.0)[0] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="outside"):
        frontier.at(5.0)


def test_the_curve_runs_through_points_sorted_by_cost():
    rows = [at_steps(50, 100.0, 8.0), at_steps(3, 6.0, 30.0), at_steps(10, 20.0, 14.0)]
    frontier = find_frontier(rows)
    assert frontier.costs == [6.0, 20.0, 100.0] and frontier.at(20.0)[0] == 14.0
    assert 14.0 > frontier.at(50.0)[0] > 8.0


def test_describe_names_the_model_sampler_steps_and_checkpoint():
    text = find_frontier([at_steps(3, 6.0, 30.0), at_steps(10, 20.0, 14.0), at_steps(50, 100.0, 8.0)]).describe()
    assert text.startswith("Frontier: Latte (dense) with ddim at 3, 10, 50 steps (ckpt abababababab…)")
    assert "above = better" in text


# ---------------------------------------------------------------------------------------------------------------
# Where a row stands
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def dense():
    """Lower is better: the curve is [18, 22] at cost 10 and [9, 11] at cost 1000, [13.5, 16.5] at cost 100."""
    return [at_steps(10, 10.0, 20.0, [18.0, 22.0]), at_steps(100, 1000.0, 10.0, [9.0, 11.0])]


def test_place_lower_is_better(dense):
    frontier = find_frontier(dense)
    assert place(other(100.0, 12.0, [11.0, 13.0]), frontier, higher_is_better=False) == "above"
    assert place(other(100.0, 12.0, [11.0, 13.5]), frontier, higher_is_better=False) == "on"      # touching
    assert place(other(100.0, 15.0, [14.0, 16.0]), frontier, higher_is_better=False) == "on"
    assert place(other(100.0, 18.0, [17.0, 19.0]), frontier, higher_is_better=False) == "below"
    assert place(other(100.0, 13.0), frontier, higher_is_better=False) == "above"                # a point
    assert place(other(100.0, 14.0), frontier, higher_is_better=False) == "on"


def test_place_higher_is_better(dense):
    frontier = find_frontier(dense)
    assert place(other(100.0, 12.0, [11.0, 13.0]), frontier, higher_is_better=True) == "below"
    assert place(other(100.0, 15.0, [14.0, 16.0]), frontier, higher_is_better=True) == "on"
    assert place(other(100.0, 18.0, [17.0, 19.0]), frontier, higher_is_better=True) == "above"


def test_place_outside_the_range_or_without_cost(dense):
    frontier = find_frontier(dense)
    assert place(other(5.0, 1.0), frontier, higher_is_better=False) == "–"
    assert place(other(2000.0, 1.0), frontier, higher_is_better=False) == "–"
    assert place(other(None, 1.0), frontier, higher_is_better=False) == "–"
    assert place(other(10.0, 1.0), frontier, higher_is_better=False) == "above"       # the ends are inside
    assert place(other(1000.0, 30.0), frontier, higher_is_better=False) == "below"
    assert place(other(100.0, 1.0), None, higher_is_better=False) == "–"


def test_frontier_rows_are_marked_and_the_floor_is_not_placed(dense):
    frontier = find_frontier(dense)
    assert [place(r, frontier, higher_is_better=False) for r in dense] == ["frontier", "frontier"]
    twin = at_steps(10, 10.0, 20.0, [18.0, 22.0])             # equal fields, but not a row of the table
    assert place(twin, frontier, higher_is_better=False) == "on"
    floor = measured(model_variant="real clips", method="floor", value=2.0, extra={"floor": True},
                     gflops_per_forward=None)
    assert place(floor, frontier, higher_is_better=False) == "–"
