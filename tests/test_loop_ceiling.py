"""benchmarks/loop_ceiling.py: which cases some plan can finish without the moves a generator cannot draw, and each
mode's completions counted on each side of that line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spiral.world.tasks import sample_state

SCENE = 10000007  # red and green in the closed box, blue far right, yellow in the centre


def test_a_goal_that_needs_an_undrawable_move_is_out_of_reach(bench_script):
    mod = bench_script("loop_ceiling")
    assert str(sample_state(np.random.default_rng(SCENE))).startswith("red@box green@box blue@far_right yellow@center")
    tiny = mod.undrawable_keys(mod.TINY_UNDRAWABLE)
    assert mod.reachable("put the yellow block in the box", SCENE, frozenset())
    assert not mod.reachable("put the yellow block in the box", SCENE, tiny)
    assert not mod.reachable("take the green block out of the box and put it on the red block", SCENE, tiny)
    assert mod.reachable("put the blue block in the box", SCENE, tiny)
    assert not mod.reachable("move the blue block to the far left", SCENE, mod.undrawable_keys("blue_block:far_left"))
    # only the named move is barred: yellow may still go onto blue, and blue into the box
    assert mod.reachable("put the yellow block on the blue block", SCENE, mod.undrawable_keys("yellow_block:box"))
    with pytest.raises(SystemExit, match="no move of the tabletop domain"):
        mod.undrawable_keys("yellow_block:attic")


def test_counts_each_mode_on_both_sides_of_the_ceiling(bench_script, tmp_path):
    mod = bench_script("loop_ceiling")
    suite = {"name": "ceiling", "version": "1", "created_by": "test", "world": "tabletop", "cases": [
        {"id": "in-reach", "goal": "put the blue block in the box", "scene": SCENE, "length_class": "short",
         "n_steps": 2, "tags": ["box", "open"]},
        {"id": "out-of-reach", "goal": "put the yellow block in the box", "scene": SCENE, "length_class": "short",
         "n_steps": 2, "tags": ["box", "open"]}]}
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    run = tmp_path / "run"
    run.mkdir()
    (run / "bench.json").write_text(json.dumps({"config": {"suite": str(tmp_path / "suite.json")}}))

    def row(case, mode, done, faithful):
        return {"case_id": case, "length_class": "short", "mode": mode,
                "metrics": {"task_completion": done, "faithful_task_completion": faithful}}
    (run / "results.json").write_text(json.dumps({"cases": [
        row("in-reach", "plan_only", 0.0, 0.0), row("in-reach", "closed_loop", 1.0, 1.0),
        row("out-of-reach", "plan_only", 1.0, 0.0), row("out-of-reach", "closed_loop", 0.0, 0.0)]}))
    out = mod.main([str(run), "--json", str(tmp_path / "c.json")])
    r = out["folders"]["run"]["short"]
    assert (r["cases"], r["reachable"]) == (2, 1)
    assert r["closed_loop:reachable:task_completion"] == r["closed_loop:reachable:faithful_task_completion"] == 1
    assert r["plan_only:reachable:task_completion"] == 0
    assert r["plan_only:unreachable:task_completion"] == 1 and r["plan_only:unreachable:faithful_task_completion"] == 0
    assert json.loads((tmp_path / "c.json").read_text())["folders"]["run"]["all"]["cases"] == 2
