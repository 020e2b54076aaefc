import collections
from functools import lru_cache

import numpy as np
import pytest

from spiral.planners.symbolic import PlanningError, SymbolicPlanner, valid_layouts
from spiral.types import Observation, Plan, SubAction
from spiral.world import domain as d
from spiral.world.goals import Goal, parse_goal
from spiral.world.tasks import sample_task

PLANNER = SymbolicPlanner()


@lru_cache(maxsize=1)
def tasks(n=200):
    return tuple(sample_task(seed) for seed in range(n))


@lru_cache(maxsize=1)
def graph():
    """The whole state graph, built only from the domain's own applicable_actions/apply."""
    start = d.State.make(dict(zip(d.BLOCKS, d.SLOTS)))
    index, states, adj = {start: 0}, [start], []
    i = 0
    while i < len(states):
        nbrs = []
        for a in d.applicable_actions(states[i]):
            t = d.apply(states[i], a)
            if t not in index:
                index[t] = len(states)
                states.append(t)
            nbrs.append(index[t])
        adj.append(nbrs)
        i += 1
    preds = [frozenset(s.predicates()) for s in states]
    return index, states, adj, preds


def holds(k, lit):
    preds = graph()[3][k]
    return lit[4:] not in preds if lit.startswith("not ") else lit in preds


def bfs_distance(state, literals):
    """Brute-force shortest distance to any state where all literals hold (None if none)."""
    index, _, adj, _ = graph()
    src = index[state]
    if all(holds(src, p) for p in literals):
        return 0
    dist = {src: 0}
    queue = collections.deque([src])
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                if all(holds(v, p) for p in literals):
                    return dist[v]
                queue.append(v)
    return None


def run(state, actions):
    for a in actions:
        state = d.apply(state, a)
    return state


def S(box_open=False, lamp_on=False, **loc):
    base = {"red_block": "left", "green_block": "center", "blue_block": "right", "yellow_block": "far_right"}
    base.update({f"{k}_block": v for k, v in loc.items()})
    return d.State.make(base, box_open=box_open, lamp_on=lamp_on)


def test_state_space_matches_the_domain():
    assert len(graph()[1]) == 4 * valid_layouts()


def test_plans_are_valid_and_optimal_per_stage_on_sampled_tasks():
    for t in tasks():
        stages = PLANNER.solve_stages(t.state, t.goal)
        assert sum(map(len, stages)) == t.length
        state = t.state
        for target, actions in zip(t.goal.targets(), stages):
            assert len(actions) == bfs_distance(state, target), (t.id, t.goal.text, target)
            state = run(state, actions)  # raises if a precondition fails
            assert all(state.holds(p) for p in target), (t.id, target)  # each stage in order
        assert t.goal.satisfied(state)


def test_optimal_on_random_literal_goals_including_negations():
    """The heuristic must stay admissible for every literal kind, not only sampled goals."""
    pool = ([f"at({b}, {s})" for b in d.BLOCKS for s in d.SLOTS]
            + [f"on({a}, {b})" for a in d.BLOCKS for b in d.BLOCKS if a != b]
            + [f"in({b}, box)" for b in d.BLOCKS] + ["open(box)", "on(lamp)"]
            + [f"clear({b})" for b in d.BLOCKS] + [f"free({s})" for s in d.SLOTS])
    pool += ["not " + p for p in pool]
    rng = np.random.default_rng(3)
    _, states, _, _ = graph()
    solved = 0
    for _ in range(120):
        state = states[int(rng.integers(len(states)))]
        lits = [pool[int(j)] for j in rng.choice(len(pool), int(rng.integers(1, 5)), replace=False)]
        goal = Goal("", (tuple(lits),))
        want = bfs_distance(state, goal.final())
        if want is None:
            with pytest.raises(PlanningError):
                PLANNER.solve(state, goal)
            continue
        plan = PLANNER.solve(state, goal)
        assert len(plan) == want, (state, lits)
        assert goal.satisfied(run(state, plan))
        solved += 1
    assert solved > 60


def test_search_effort_is_small_on_sampled_tasks():
    """Latency is benchmarked in benchmarks/planner_latency.py; here a load-independent proxy."""
    worst = 0
    for t in tasks():
        PLANNER.solve(t.state, t.goal)
        worst = max(worst, PLANNER.stats.expanded)
    assert worst < 500


def test_plan_returns_subactions_with_conditions():
    s = S()
    plan = PLANNER.plan("put the red block in the box and close it", s)
    assert isinstance(plan, Plan) and plan.goal == "put the red block in the box and close it"
    assert [st.text for st in plan.steps] == ["open the box", "move the red block into the box", "close the box"]
    assert [st.id for st in plan.steps] == [0, 1, 2]
    assert plan.steps[1].verb == "move" and plan.steps[1].objects == ["red_block", "box"]
    assert plan.steps[1].preconditions == ["clear(red_block)", "not in(red_block, box)", "open(box)"]
    assert "in(red_block, box)" in plan.steps[1].postconditions
    assert "optimal A* plan, 3 actions" in plan.rationale
    # the same plan from a state dict and from an Observation
    assert PLANNER.plan("put the red block in the box and close it", s.to_dict()).steps == plan.steps
    assert PLANNER.plan("put the red block in the box and close it", Observation(state=s.to_dict())).steps == plan.steps
    with pytest.raises(ValueError, match="symbolic state"):
        PLANNER.plan("open the box", Observation())


def test_stacks_are_unstacked_and_ties_are_deterministic():
    s = S(red="green_block", blue="red_block", yellow="blue_block", green="center")
    plan = PLANNER.plan("put the green block in the box", s)
    assert len(plan.steps) == 5 and plan.steps[-1].text == "move the green block into the box"
    assert PLANNER.plan("put the green block in the box", s) == plan


def test_replan_from_a_perturbed_state_reaches_the_goal():
    rng = np.random.default_rng(0)
    checked = 0
    for t in tasks()[:120]:
        if t.length < 3:
            continue
        plan = PLANNER.plan(t.goal, t.state)
        k = len(plan.steps) // 2
        state = t.state
        for st in plan.steps[:k]:
            state = d.apply(state, d.Action(st.verb, tuple(st.objects)))
        # knock a clear block that is on the table to a random free slot
        movable = [b for b in d.BLOCKS if state.clear(b) and state.where(b) in d.SLOTS]
        free = [x for x in d.SLOTS if state.free(x)]
        if not movable or not free:
            continue
        state = state.with_loc(movable[int(rng.integers(len(movable)))], free[int(rng.integers(len(free)))])
        state.validate()
        new = PLANNER.replan(t.goal, state, history=plan.steps[:k])
        assert [st.id for st in new.steps] == list(range(k, k + len(new.steps)))
        assert "replanned" in new.rationale
        end = run(state, [d.Action(st.verb, tuple(st.objects)) for st in new.steps])
        assert t.goal.satisfied(end), (t.id, t.goal.text)
        checked += 1
    assert checked > 40


def test_replan_resumes_at_the_first_unfinished_stage():
    goal = parse_goal("open the box, then close it")
    s = S()
    plan = PLANNER.plan(goal, s)
    assert [st.verb for st in plan.steps] == ["open", "close"]
    opened = d.apply(s, d.Action.parse("open(box)"))
    assert [st.verb for st in PLANNER.replan(goal, opened, plan.steps[:1]).steps] == ["close"]
    assert PLANNER.replan(goal, s, plan.steps).steps == []  # both stages done
    assert [st.verb for st in PLANNER.replan(goal, s, []).steps] == ["open", "close"]  # nothing done yet
    # a block knocked out of the box after stage 1 is put back while doing stage 2
    goal = parse_goal("put red in the box, then turn on the lamp")
    s = S(box_open=True)
    plan = PLANNER.plan(goal, s)
    knocked = d.apply(s, d.Action.parse("move(red_block, box)")).with_loc("red_block", "far_left")
    steps = PLANNER.replan(goal, knocked, plan.steps[:1]).steps
    assert sorted(st.verb for st in steps) == ["move", "switch_on"]
    assert isinstance(steps[0], SubAction)


@pytest.mark.parametrize("literals,named,why", [
    (["in(red_block, box)", "at(red_block, left)"], ["in(red_block, box)", "at(red_block, left)"], "contradictory"),
    (["at(red_block, left)", "at(blue_block, left)", "open(box)"], ["at(red_block, left)", "at(blue_block, left)"],
     "share one support"),
    (["on(red_block, blue_block)", "on(green_block, blue_block)"], ["on(red_block, blue_block)"], "share one support"),
    (["on(red_block, blue_block)", "on(blue_block, red_block)"], ["on(blue_block, red_block)"], "cycle"),
    (["on(red_block, blue_block)", "in(blue_block, box)"], ["in(blue_block, box)"], "inside the box"),
    (["open(box)", "not open(box)"], ["open(box)", "not open(box)"], "contradictory"),
    (["at(red_block, box)"], ["at(red_block, box)"], "in(block, box)"),
])
def test_unreachable_goals_raise_planning_error(literals, named, why):
    with pytest.raises(PlanningError) as e:
        PLANNER.plan(Goal("", (tuple(literals),)), S())
    for lit in named:
        assert lit in str(e.value) and lit in e.value.literals
    assert why in str(e.value)


def test_contradiction_across_stages_names_the_stage():
    goal = parse_goal("move red to the left, then move blue to the left")
    with pytest.raises(PlanningError, match=r"stage 2 of 2.*at\(red_block, left\).*at\(blue_block, left\)"):
        PLANNER.plan(goal, S())
    # a later stage overriding the same fluent is fine
    assert len(PLANNER.plan("move red to the far left, then put it in the box", S()).steps) == 3
