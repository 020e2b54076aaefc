"""tabletop-v2: four length classes of 50 (xlong = 9–12 steps), towers up to four blocks, scene-relative goals,
everyday phrasings that read back as the intended goal; its own reserved seed range that training never draws."""

from __future__ import annotations

import collections
import io
from functools import lru_cache

import numpy as np

from spiral.bench import seeds
from spiral.bench import suite_v2 as V
from spiral.bench.make_suite import dumps, make_suite
from spiral.bench.suite import LENGTH_CLASSES, PHRASINGS, load_suite
from spiral.planners.symbolic import SymbolicPlanner
from spiral.world.goals import parse_goal
from spiral.world.tasks import sample_state, sample_task


@lru_cache(maxsize=1)
def v2():
    return load_suite("tabletop-v2")  # full validation: every goal parses and plans to its n_steps


def test_v2_is_balanced_over_four_length_classes():
    s = v2()
    assert len(s.cases) == 200 and not s.errors
    for cls in ("short", "medium", "long", "xlong"):
        cases = [c for c in s.cases if c.length_class == cls]
        lo, hi = LENGTH_CLASSES[cls]
        assert len(cases) == 50 and {c.n_steps for c in cases} == set(range(lo, hi + 1)), cls
    assert LENGTH_CLASSES["xlong"] == (9, 12)
    assert all("multi-stage" in c.tags for c in s.cases if c.length_class == "xlong")


def test_v2_has_tall_towers_scene_relative_goals_and_everyday_phrasings():
    s, planner = v2(), SymbolicPlanner()
    heights = collections.Counter()
    for c in s.cases:
        state = sample_state(np.random.default_rng(c.scene))
        heights[V.tower_height(planner.resolve(parse_goal(c.goal), state))] += 1
    assert heights[4] >= 10 and heights[3] >= 10 and max(heights) == 4  # up to the domain's four blocks
    assert sum("tower" in c.tags for c in s.cases) == heights[3] + heights[4]
    relative = [c for c in s.cases if "scene-relative" in c.tags]
    assert len(relative) >= 40 and all(parse_goal(c.goal).is_relative for c in relative)
    used = collections.Counter(p for c in s.cases for p in c.phrasing)
    assert set(used) <= set(PHRASINGS)
    for construction in ("filler", "declarative", "pick-place", "tower", "possessive", "swap", "next-to",
                         "coordination", "group-pronoun", "numbered", "toggle", "before-after"):
        assert used[construction] >= 8, (construction, used[construction])


def test_v2_is_what_the_recipe_makes_and_every_text_reads_as_its_goal():
    """The committed file equals a fresh build; the build itself re-parses every text and checks it means the
    intended goal (suite_v2.means), so a grammar change that breaks a wording fails here."""
    s = v2()
    assert dumps(make_suite("tabletop-v2")) == s.path.read_text()
    planner = SymbolicPlanner()
    case = next(c for c in s.cases if "tower" in c.tags)
    state = sample_state(np.random.default_rng(case.scene))
    goal = planner.resolve(parse_goal(case.goal), state)
    assert V.means(case.goal, goal, state, planner)
    assert not V.means("toggle the lamp", goal, state, planner)  # another goal does not read as this one


def test_v2_scenes_are_held_out_from_training_data():
    s = v2()
    assert all(c.scene in seeds.SUITE_V2 and seeds.is_reserved(c.scene) for c in s.cases)
    others = [seeds.SUITE_V1, seeds.SUITE_SMOKE, seeds.PLANNER_QUESTIONS, seeds.SUITE_DEV, seeds.TESTS]
    assert all(not set(range(r.start, r.stop)) & set(seeds.SUITE_V2) for r in others)
    v1 = load_suite("tabletop-v1", check_plans=False)
    assert not {c.scene for c in s.cases} & {c.scene for c in v1.cases}
    # a task seed whose first scene draw lands in tabletop-v2's range: the sampler must draw again
    seed = next(k for k in range(200_000) if _first_scene(k) in seeds.SUITE_V2)
    task = sample_task(seed)
    assert not seeds.is_reserved(task.scene_seed) and task.scene_seed != _first_scene(seed)


def _first_scene(seed: int, min_steps: int = 1, max_steps: int = 8) -> int:
    rng = np.random.default_rng(seed)  # the draws sample_task makes before its first scene
    rng.integers(min_steps, max_steps + 1)
    return int(rng.integers(0, 2**31 - 1))


def test_v2_runs_end_to_end_in_the_bench_with_the_xlong_class(tmp_path):
    """One case per class (round-robin --limit) through the runner: the xlong case plans 9+ steps, is scored,
    and shows up in the summary tables, the by-step-index table and the end-of-run table."""
    from pathlib import Path

    from spiral.bench.cli import summary_table
    from spiral.bench.runner import BenchConfig, run_bench

    oracle = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"
    res = run_bench(BenchConfig(suite="tabletop-v2", out=str(tmp_path / "b"), modes=["plan_only"], config=str(oracle),
                                judge="truth", limit=4, overrides=["output.report=false", "output.segment_videos=false",
                                                                   "generator.options.failure_rate=0.0"]),
                    progress=False)
    assert not res["errors"] and [c["length_class"] for c in res["cases"]] == ["short", "medium", "long", "xlong"]
    xl = res["cases"][-1]
    assert xl["executed_steps"] == xl["n_steps"] >= 9 and xl["metrics"]["task_completion"] == 1.0
    assert xl["metrics"]["faithful_task_completion"] == 1.0
    md = (tmp_path / "b" / "summary.md").read_text()
    assert "| plan_only | xlong | 1 | 1.00 [" in md and "## Step success by step index (xlong cases)" in md
    assert len(res["summary"]["plan_only"]["xlong_step_success_by_index"]) == 12
    from rich.console import Console

    con = Console(width=200, record=True, file=io.StringIO())
    con.print(summary_table(res))
    assert "│ xlong" in con.export_text()
