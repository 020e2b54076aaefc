"""ActVideoGen-Bench: metric formulas on hand-made inputs, suites, runner (resume, processes, Ray), report, planner eval.

Runner tests (resume, processes, Ray, CLI) run the oracle config ``configs/run/tabletop-oracle.yaml`` (world
generator reading states with the critic recogniser, tabletop critic) scored by the shipped judge recogniser,
on few cases with the report and per-segment videos off; the smoke suite also runs on the embedded default
(``configs/run/tabletop.yaml``, the tiny video model after self-evolution). The metric test on runs with known outcomes uses
the ``truth`` judge (the states the world generator reported) because it checks exact values.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spiral.bench import metrics as M
from spiral.bench import seeds
from spiral.bench.runner import Bench, BenchConfig, comparable, run_bench
from spiral.bench.stats import bootstrap_ci, paired_delta
from spiral.bench.suite import SuiteError, load_suite
from spiral.cli import app
from spiral.world.domain import State

LIGHT = ["output.report=false", "output.segment_videos=false"]  # keep test runs light
# the embedded default runs the tiny video model; the runner and metric tests need the oracle world generator
ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"


def _video(*values: float, h: int = 4, w: int = 4) -> np.ndarray:
    return np.stack([np.full((h, w, 3), v, np.uint8) for v in values])


# ---- temporal coherence formulas, worked out by hand ---------------------------------------------
def test_flicker_equals_vbench_formula_by_hand():
    assert M.temporal_flickering(_video(77, 77, 77)) == 1.0  # static: no change
    assert M.temporal_flickering(_video(0, 255, 0, 255)) == 0.0  # every pair differs by 255
    # pairs differ by 51 and 0 → mean 25.5 → (255 − 25.5)/255 = 0.9
    assert M.temporal_flickering(_video(0, 51, 51)) == pytest.approx(0.9)
    # only the left half changes by 100: per-pair mean 50 → 205/255
    a = np.zeros((2, 4, 4, 3), np.uint8)
    a[1, :, :2] = 100
    assert M.temporal_flickering(a) == pytest.approx(205 / 255)
    mask = np.zeros((4, 4), bool)
    mask[:, 2:] = True  # the right half never changed
    assert M.temporal_flickering(a, mask) == 1.0
    # one channel: VBench averages over channels too → 100/3 per pixel
    b = np.zeros((2, 2, 2, 3), np.uint8)
    b[1, ..., 0] = 100
    assert M.temporal_flickering(b) == pytest.approx((255 - 100 / 3) / 255)


def test_consistency_and_smoothness_by_hand():
    assert M.feature_consistency(np.ones((5, 8))) == pytest.approx(1.0)  # identical frames
    # t=2: cos(f1,f2)=0, cos(f1,f2)=0 → 0; t=3: cos(f2,f3)=0, cos(f1,f3)=1 → ½ ⇒ mean ¼
    f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert M.feature_consistency(f) == pytest.approx(0.25)
    assert M.feature_consistency(np.array([[1.0, 0.0], [-1.0, 0.0]])) == 0.0  # negative cosine clipped at 0
    assert M.motion_smoothness(_video(0, 10, 20, 30)) == pytest.approx(1.0)  # linear motion is predicted exactly
    assert M.motion_smoothness(_video(0, 255, 0)) == pytest.approx(0.0)
    assert M.motion_smoothness(_video(0, 0, 90)) == pytest.approx(210 / 255)  # predicted 45, error 45
    with pytest.raises(ValueError, match="at least 3 frames"):
        M.motion_smoothness(_video(0, 1))


def test_drift_reference_masks_touched_regions_and_relights():
    from dataclasses import replace

    from spiral.world.render import Appearance, render_state
    from spiral.world.tasks import sample_state

    scene = seeds.TESTS.start + 3
    s0 = sample_state(np.random.default_rng(scene))
    look = Appearance.sample(scene)
    anchor = render_state(s0, appearance=look)
    ref = M.DriftReference(anchor, s0, scene)
    assert ref.drift(anchor, s0) == 0.0
    lit = replace(s0, lamp_on=not s0.lamp_on)  # a global, legitimate change
    assert ref.drift(render_state(lit, appearance=look), lit) < 0.01
    drifted = np.clip(anchor.astype(int) + 40, 0, 255).astype(np.uint8)
    assert ref.drift(drifted, s0) > 0.1
    assert ref.drift(anchor, None) is None


def test_action_quality_pieces_by_hand():
    s = State.make({"red_block": "left", "green_block": "center", "blue_block": "box", "yellow_block": "right"})
    moved = s.with_loc("red_block", "far_left")
    also = moved.with_loc("yellow_block", "far_right")
    assert M.holds_all(moved, ["at(red_block, far_left)"]) and not M.holds_all(None, [])
    assert M.hallucinated_motion("move", ["red_block", "far_left"], s, moved) is False
    assert M.hallucinated_motion("move", ["red_block", "far_left"], s, also) is True
    assert M.hallucinated_motion("move", ["red_block", "yellow_block"], s, None) is None
    targets = [["at(red_block, far_left)"], ["at(red_block, far_left)", "at(yellow_block, far_right)"]]
    assert M.order_correctness(targets, [s, moved, also]) == 1.0
    assert M.order_correctness(targets, [s, moved]) == 0.5
    assert M.order_correctness(targets, [s, None, s]) == 0.0


def test_bootstrap_sanity():
    iv = bootstrap_ci([0.7] * 10)
    assert (iv.mean, iv.lo, iv.hi, iv.n) == (0.7, 0.7, 0.7, 10)
    x = np.random.default_rng(0).normal(0.5, 0.1, 400)
    iv = bootstrap_ci(x)
    assert iv.lo < iv.mean < iv.hi and iv.hi - iv.lo == pytest.approx(2 * 1.96 * 0.1 / 20, rel=0.2)
    assert bootstrap_ci(x[:40]).hi - bootstrap_ci(x[:40]).lo > iv.hi - iv.lo  # fewer cases, wider
    assert bootstrap_ci(x) == iv  # seeded: reproducible
    assert bootstrap_ci([None, None]).mean is None
    d = paired_delta([0, 0, 1, 1], [1, 1, 1, 1])
    assert d.mean == 0.5 and d.lo >= 0.0 and d.n == 4
    assert paired_delta([0.3, None], [0.5, 0.9]).n == 1


# ---- suites --------------------------------------------------------------------------------------
def test_shipped_suites_are_balanced_and_held_out():
    v1 = load_suite("tabletop-v1", check_plans=False)
    assert len(v1.cases) == 150 and not v1.errors
    assert {c.length_class for c in v1.cases} == {"short", "medium", "long"}  # xlong is tabletop-v2's
    for cls in ("short", "medium", "long"):
        cases = [c for c in v1.cases if c.length_class == cls]
        assert len(cases) == 50
        for tag in ("move", "stack", "box", "open", "close", "lamp"):
            assert sum(tag in c.tags for c in cases) >= 8, (cls, tag)
        if cls != "short":
            assert 15 <= sum("multi-stage" in c.tags for c in cases) <= 35
    assert all(c.scene in seeds.SUITE_V1 for c in v1.cases)
    smoke = load_suite("tabletop-smoke")  # full validation, plans included
    assert len(smoke.cases) == 6 and not smoke.errors and all(c.scene in seeds.SUITE_SMOKE for c in smoke.cases)
    assert [c.length_class for c in smoke.cases] == ["short"] * 2 + ["medium"] * 2 + ["long"] * 2
    from spiral.bench.make_suite import dumps, make_suite

    assert dumps(make_suite("tabletop-smoke")) == smoke.path.read_text()  # the committed file is what the script makes
    dev = load_suite("tabletop-dev")  # for tuning: its own scenes, none of tabletop-v1's
    assert len(dev.cases) == 36 and not dev.errors and all(c.scene in seeds.SUITE_DEV for c in dev.cases)
    assert not {c.scene for c in dev.cases} & {c.scene for c in v1.cases}
    assert dumps(make_suite("tabletop-dev")) == dev.path.read_text()


def test_suite_validation_reports_each_bad_case(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((64, 64), np.uint8), mode="L").save(tmp_path / "gray.png")
    good = {"id": "good", "goal": "open the box", "scene": 10900001, "length_class": "short", "n_steps": 1}
    cases = [
        good,
        {**good, "id": "typo", "lenght_class": "short"},
        {**good, "id": "cls", "length_class": "huge"},
        {**good, "id": "steps", "n_steps": 4},
        {**good, "id": "goal", "goal": "make me a sandwich"},
        {**good, "id": "both", "image": "ok.png"},
        {k: v for k, v in good.items() if k != "scene"} | {"id": "junk", "image": "junk.png"},
        {k: v for k, v in good.items() if k != "scene"} | {"id": "gray", "image": "gray.png"},
        {k: v for k, v in good.items() if k != "scene"} | {"id": "escape", "image": "../outside.png"},
        {k: v for k, v in good.items() if k != "scene"} | {"id": "img", "image": "ok.png"},
        {**good},  # duplicate id
        "not a case",
    ]
    (tmp_path / "s.json").write_text(json.dumps({"name": "t", "version": "1", "cases": cases}))
    suite = load_suite(tmp_path / "s.json", check_plans=False)
    assert [c.id for c in suite.cases] == ["good", "img"]
    by_case = {e.case_id: e for e in suite.errors}
    assert by_case["typo"].field == "lenght_class" and "length_class" in by_case["typo"].fix
    assert by_case["cls"].field == "length_class" and "short" in by_case["cls"].fix
    assert by_case["steps"].field == "n_steps" and "medium" in by_case["steps"].fix
    assert by_case["goal"].field == "goal"
    assert by_case["both"].field == "scene/image"
    assert "unreadable first frame" in by_case["junk"].message
    assert "not RGB" in by_case["gray"].message
    assert "outside" in by_case["escape"].message
    assert "duplicate" in by_case["good"].message
    assert by_case["#11"].field == "case"
    assert all("fix:" in str(e) and e.case_id in str(e) for e in suite.errors)
    # with plans checked, a wrong step count in a scene case is caught
    (tmp_path / "p.json").write_text(json.dumps({"cases": [{**good, "goal": "put everything in the box",
                                                            "length_class": "long", "n_steps": 8}]}))
    bad = load_suite(tmp_path / "p.json")
    assert not bad.cases and "optimal plan" in bad.errors[0].message
    with pytest.raises(SuiteError, match="known suites: .*tabletop-v1"):
        load_suite("tabletop-v9")
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(SuiteError, match="not valid JSON"):
        load_suite(tmp_path / "broken.json")


# ---- metrics on real runs with known answers (oracle judge: exact values) -----------------------------------------
def _one_run(tmp_path: Path, name: str, mode: str, extra: list[str]) -> dict:
    from spiral.api import run

    out = tmp_path / name
    # the world generator reads each start state with the critic recogniser; in this scene it reads every
    # frame right (in a few scenes, e.g. TESTS.start + 11, a misread shows up as hallucinated motion)
    run("put the red block in the box, then switch on the lamp", scene=seeds.TESTS.start + 14, out=out,
        mode=mode, config=ORACLE, overrides=LIGHT + extra)
    from spiral.bench.judge import make_features, make_judge

    judge = make_judge("truth", out)
    return M.score_run(out, judge, make_features(None, judge), make_features(None, judge, "background"))


def test_metrics_on_runs_with_known_outcomes(tmp_path):
    ok = _one_run(tmp_path, "ok", "plan_only", ["generator.options.failure_rate=0.0"])
    m = ok["metrics"]
    assert (m["task_completion"], m["step_success"], m["order_correctness"], m["hallucinated_motion"]) == (1, 1, 1, 0)
    assert m["drift_mean"] == 0.0 and m["unreadable_frames"] == 0 and 0.9 < m["temporal_flickering"] <= 1
    assert ok["cost"]["generations_per_accepted_step"] == 1.0 and ok["cost"]["critic_calls"] == 0
    extra = _one_run(tmp_path, "extra", "plan_only", ["generator.options.failure_rate=1.0",
                                                      "generator.options.failures=[extra_motion]"])
    # every segment that really rendered (not a still "not applicable" one) moved something it should not
    kept = extra["failures"]["generator_kept"]
    assert kept.get("physical_violation", 0) >= 1
    assert extra["metrics"]["hallucinated_motion"] == kept["physical_violation"] / extra["executed_steps"]
    drift = _one_run(tmp_path, "drift", "plan_only", ["generator.options.failure_rate=1.0",
                                                      "generator.options.failures=[drift]"])
    assert drift["metrics"]["drift_last"] > 0.05 and drift["metrics"]["step_success"] == 1.0
    assert drift["metrics"]["background_consistency"] < m["background_consistency"]


def test_faithful_step_success_drops_where_a_fooled_judge_reads_a_noise_patch_as_the_block(tmp_path):
    """A block-sized patch of colour noise that the judge still reads as the intended state keeps step success
    but is no faithful picture of it: artifact area > 0.4 % fails that step's faithful success."""
    from spiral.bench.judge import make_features, make_judge
    from spiral.rundir import load_frames, save_frames

    out = tmp_path / "ok"
    from spiral.api import run

    run("put the red block in the box, then switch on the lamp", scene=seeds.TESTS.start + 14, out=out,
        mode="plan_only", config=ORACLE, overrides=LIGHT + ["generator.options.failure_rate=0.0"])
    judge = make_judge("truth", out)
    feats = make_features(None, judge), make_features(None, judge, "background")
    clean = M.score_run(out, judge, *feats)["metrics"]
    assert clean["step_success"] == 1.0 and clean["artifact_area"] < 0.002
    assert clean["faithful_step_success"] == 1.0
    assert clean["task_completion"] == 1.0 and clean["faithful_task_completion"] == 1.0
    # a step that faithfully shows something other than what was planned (a kept, repaired detour) fails step
    # success but leaves the task faithfully completed: nothing in its picture fooled the judge
    log = out / "attempts.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    detour = [dict(x) for x in lines]
    done = detour[0]["sub_action"]["postconditions"][0]  # what step 1 did; planned: the opposite
    detour[0]["sub_action"] = {**detour[0]["sub_action"], "postconditions": [f"not {done}"]}
    log.write_text("".join(json.dumps(x) + "\n" for x in detour))
    off = M.score_run(out, judge, *feats)["metrics"]
    assert off["step_success"] < 1.0 and off["faithful_step_success"] < 1.0
    assert off["task_completion"] == 1.0 and off["faithful_task_completion"] == 1.0
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    seg_path = sorted((out / "segments").glob("*.npz"))[0]
    frames = load_frames(seg_path)
    patched = frames.copy()
    patched[-1, 40:46, 20:26] = np.random.default_rng(0).integers(0, 256, (6, 6, 3))  # a block-sized patch
    judge._known[patched[-1].tobytes()] = judge._known[frames[-1].tobytes()]  # fooled: reads what was meant
    save_frames(seg_path, patched)
    fooled = M.score_run(out, judge, *feats)
    n = fooled["executed_steps"]
    fooled = fooled["metrics"]
    assert n >= 2 and fooled["step_success"] == 1.0 and fooled["faithful_step_success"] == 1 - 1 / n
    assert fooled["artifact_area"] > clean["artifact_area"] + 0.004 / n  # > 0.4 % of one frame
    # the judge still reads the task as done, but one step was no faithful picture: the task does not count
    assert fooled["task_completion"] == 1.0 and fooled["faithful_task_completion"] == 0.0


def test_faithful_task_completion_by_hand():
    # per executed step: is its last frame a faithful picture of what the judge read there?
    assert M.faithful_task_completion(1.0, [1.0, 1.0], 2, True) == 1.0
    assert M.faithful_task_completion(1.0, [1.0, 0.0], 2, True) == 0.0
    assert M.faithful_task_completion(0.0, [1.0, 1.0], 2, True) == 0.0
    assert M.faithful_task_completion(1.0, [1.0], 2, True) == 0.0  # a step without a faithful reading
    assert M.faithful_task_completion(1.0, [], 0, False) == 1.0  # nothing drawn: the first frame is the scene
    assert M.faithful_task_completion(1.0, [], 2, False) is None  # image case: no render to compare with
    assert M.faithful_task_completion(None, [1.0], 1, True) is None


def test_scene_relative_goal_is_scored_against_the_starting_scene(tmp_path):
    """"swap …" is read against the run's first state: done when the two blocks traded places, and an extra
    swap back (what reading it against the final state would ask) is not needed."""
    from spiral.api import run
    from spiral.bench.judge import make_features, make_judge

    out = tmp_path / "swap"
    scene = next(k for k in range(seeds.TESTS.start, seeds.TESTS.stop) if _two_on_slots(k))
    run("swap the red and the blue blocks", scene=scene, out=out, mode="plan_only", config=ORACLE,
        overrides=LIGHT + ["generator.options.failure_rate=0.0"])
    judge = make_judge("truth", out)
    m = M.score_run(out, judge, make_features(None, judge), make_features(None, judge, "background"))["metrics"]
    assert m["task_completion"] == 1.0 and m["order_correctness"] == 1.0
    meta = json.loads((out / "meta.json").read_text())
    meta["goal"] = "swap the red and the green blocks"  # the same video does not do this
    (out / "meta.json").write_text(json.dumps(meta))
    m = M.score_run(out, judge, make_features(None, judge), make_features(None, judge, "background"))["metrics"]
    assert m["task_completion"] == 0.0


def _two_on_slots(scene: int) -> bool:
    from spiral.world.tasks import sample_state

    s = sample_state(np.random.default_rng(scene))
    return s.where("red_block") in ("left", "center", "right") and s.where("blue_block") in (
        "far_left", "left", "center", "right", "far_right") and s.clear("red_block") and s.clear("blue_block")


# ---- runner ---------------------------------------------------------------------------------------
def _cfg(out: Path, **kw) -> BenchConfig:
    base = dict(suite="tabletop-smoke", out=str(out), modes=["plan_only"], config=str(ORACLE), judge="recognizer",
                overrides=list(LIGHT), limit=3)
    return BenchConfig(**{**base, **kw})


def test_resume_skips_finished_cases_and_continues_a_killed_run(tmp_path):
    ref = run_bench(_cfg(tmp_path / "ref", modes=["closed_loop"]), progress=False)
    assert len(ref["cases"]) == 3 and not ref["errors"]

    class Killed(Exception):
        pass

    def kill_after_two(res: dict) -> None:
        if len(list((tmp_path / "b" / "results").glob("*/*.json"))) == 2:
            raise Killed

    with pytest.raises(Killed):
        Bench(_cfg(tmp_path / "b", modes=["closed_loop"])).run(progress=False, on_result=kill_after_two)
    # the third case was killed mid-run: copy the reference run dir's journal up to its first attempt
    third = ref["cases"][2]
    src, dst = tmp_path / "ref" / third["run_dir"], tmp_path / "b" / third["run_dir"]
    shutil.copytree(src, dst)
    for f in ("record.json", "final.mp4", "report.html"):
        (dst / f).unlink(missing_ok=True)
    lines = (dst / "attempts.jsonl").read_text().splitlines(keepends=True)
    (dst / "attempts.jsonl").write_text(lines[0])
    done_before = {p.name: p.read_text() for p in (tmp_path / "b" / "results").glob("*/*.json")}

    with pytest.raises(FileExistsError, match="--resume"):
        Bench(_cfg(tmp_path / "b", modes=["closed_loop"])).run(progress=False)
    ran: list[str] = []
    res = Bench(_cfg(tmp_path / "b", modes=["closed_loop"], resume=True)).run(
        progress=False, on_result=lambda r: ran.append(r["case_id"]))
    assert ran == [third["case_id"]]
    assert {p.name: p.read_text() for p in (tmp_path / "b" / "results").glob("*/*.json")
            if p.name in done_before} == done_before
    assert [comparable(c) for c in res["cases"]] == [comparable(c) for c in ref["cases"]]
    fewer = Bench(_cfg(tmp_path / "b", modes=["closed_loop"], resume=True, limit=2)).run(progress=False)
    assert [c["case_id"] for c in fewer["cases"]] == [c["case_id"] for c in ref["cases"][:2]]  # what it selected
    assert fewer["summary"]["closed_loop"]["n_ok"] == 2 and len(list((tmp_path / "b" / "results").glob("*/*"))) == 3
    record = json.loads((dst / "record.json").read_text())
    assert record["counts"]["replayed_calls"] >= 2  # plan + the journaled attempt were replayed, not regenerated
    with pytest.raises(ValueError, match="seed"):
        Bench(_cfg(tmp_path / "b", modes=["closed_loop"], resume=True, seed=5)).run(progress=False)


def test_rescore_scores_finished_runs_again_without_generating(tmp_path):
    out = tmp_path / "r"
    ref = run_bench(_cfg(out, limit=2), progress=False)
    first = ref["cases"][0]
    path = out / "results" / "plan_only" / f"{first['case_id']}.json"
    stale = json.loads(path.read_text())
    del stale["metrics"]["faithful_step_success"]  # as written before the metric existed
    del stale["metrics"]["faithful_task_completion"]
    stale["metrics"]["step_success"] = 0.123
    path.write_text(json.dumps(stale))
    attempts = {p: p.read_text() for p in out.glob("plan_only/*/attempts.jsonl")}
    from spiral.bench.runner import rescore_bench

    again = rescore_bench(out, progress=False)
    assert [comparable(c) for c in again["cases"]] == [comparable(c) for c in ref["cases"]]
    assert json.loads(path.read_text())["metrics"]["faithful_step_success"] is not None
    assert json.loads(path.read_text())["metrics"]["faithful_task_completion"] is not None
    assert {p: p.read_text() for p in attempts} == attempts  # nothing generated again
    r = CliRunner().invoke(app, ["bench", "rescore", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no bench.json" in r.output


def test_bad_cases_are_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    from spiral.world.render import render_state
    from spiral.world.tasks import sample_state

    frame = render_state(sample_state(np.random.default_rng(seeds.TESTS.start)))
    Image.fromarray(frame).save(tmp_path / "first.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    good = {"id": "good", "goal": "switch the lamp off", "scene": seeds.TESTS.start + 1, "length_class": "short",
            "n_steps": 1}
    cases = [good, {**good, "id": "malformed", "length_class": "tiny"},
             {"id": "unreadable", "goal": "open the box", "image": "junk.png", "length_class": "short", "n_steps": 1},
             {"id": "raises", "goal": "open the box", "image": "first.png", "length_class": "short", "n_steps": 1}]
    from spiral.planners.symbolic import SymbolicPlanner
    from spiral.world.goals import parse_goal  # the good case's goal must need exactly one step in its scene

    st = sample_state(np.random.default_rng(good["scene"]))
    good["goal"] = "switch the lamp off" if st.lamp_on else "switch the lamp on"
    assert len(SymbolicPlanner().solve(st, parse_goal(good["goal"]))) == 1
    (tmp_path / "suite.json").write_text(json.dumps({"name": "bad", "version": "1", "cases": cases}))
    import spiral.api

    real_run = spiral.api.run

    def run_or_raise(*args, **kw):  # the "raises" case fails inside its run (one worker: runs in this process)
        if kw.get("image") and Path(kw["image"]).name == "first.png":
            raise ValueError("boom inside the run")
        return real_run(*args, **kw)

    monkeypatch.setattr(spiral.api, "run", run_or_raise)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["bench", "--suite", str(tmp_path / "suite.json"), "--out", str(out),
                                 "--config", str(ORACLE), "--set", LIGHT[0], "--set", LIGHT[1], "--mode", "plan_only",
                                 "--quiet"])
    assert r.exit_code == 1, r.output
    res = json.loads((out / "results.json").read_text())
    status = {c["case_id"]: c["status"] for c in res["cases"]}
    assert status == {"good": "ok", "raises": "error"}
    assert {e["case_id"] for e in res["invalid_cases"]} == {"malformed", "unreadable"}
    err = next(e for e in res["errors"] if e["case_id"] == "raises")
    assert err["stage"] == "run" and err["error"] == "ValueError: boom inside the run"
    assert "malformed" in r.output and "raises" in r.output
    assert (out / "summary.md").is_file()

    r = CliRunner().invoke(app, ["bench", "--suite", "no-such-suite", "--out", str(tmp_path / "o2"), "--quiet"])
    assert r.exit_code == 2 and "unknown suite 'no-such-suite'" in r.output
    assert json.loads((tmp_path / "o2" / "results.json").read_text())["errors"][0]["stage"] == "suite"


@pytest.fixture(scope="module")
def local_closed_loop(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "local"
    return run_bench(_cfg(out, modes=["closed_loop"], limit=4), progress=False)  # 4 cases: 2 short, 1 medium, 1 long


def test_process_workers_match_local_run(tmp_path, local_closed_loop):
    res = run_bench(_cfg(tmp_path / "pool", modes=["closed_loop"], limit=4, workers=2), progress=False)
    assert not res["errors"]
    assert [comparable(c) for c in res["cases"]] == [comparable(c) for c in local_closed_loop["cases"]]
    # the local run ran in this process; the pool's cases ran in other processes, none of them a Ray worker
    assert {c["worker"]["pid"] for c in local_closed_loop["cases"]} == {os.getpid()}
    workers = [c["worker"] for c in res["cases"]]
    assert all(w["pid"] != os.getpid() and "ray_task" not in w for w in workers), workers


def test_ray_run_matches_local_run(tmp_path, local_closed_loop):
    res = run_bench(_cfg(tmp_path / "ray", modes=["closed_loop"], limit=4, ray="local", workers=2), progress=False)
    assert not res["errors"]
    assert [comparable(c) for c in res["cases"]] == [comparable(c) for c in local_closed_loop["cases"]]
    # Ray itself ran every case: each result names the Ray task and node that ran it (a process pool standing in
    # for Ray gives the same results, so equal results alone would not show it)
    workers = [c["worker"] for c in res["cases"]]
    assert all(w.get("ray_task") and w.get("ray_node") and w["pid"] != os.getpid() for w in workers), workers
    assert len({w["ray_task"] for w in workers}) == len(workers) == 4
    import ray

    assert not ray.is_initialized()  # the runner shuts down the local cluster it started


# ---- report and compare ------------------------------------------------------------------------------
def _fake_results(path: Path, tc: list[float], xlong: list[float] = ()) -> None:
    cases = [{"case_id": f"c{i}", "mode": "closed_loop", "length_class": "long", "status": "ok",
              "metrics": {"task_completion": v, "faithful_task_completion": 0.0, "step_success": v},
              "cost": {"generator_calls": 8.0},
              "step_success_by_index": [v] * 6, "faithful_step_success_by_index": [v] * 3 + [0.0] * 3}
             for i, v in enumerate(tc)]
    cases += [{"case_id": f"x{i}", "mode": "closed_loop", "length_class": "xlong", "status": "ok",
               "metrics": {"task_completion": v, "faithful_task_completion": v, "step_success": v},
               "cost": {"generator_calls": 12.0}, "step_success_by_index": [v] * 11,
               "faithful_step_success_by_index": [v] * 11} for i, v in enumerate(xlong)]
    from spiral.bench.report import summarize

    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({
        "bench": {"suite": "x", "suite_name": "x", "suite_version": "1", "modes": ["closed_loop"], "seed": 0,
                  "n_cases": len(tc), "config": None, "overrides": [], "limit": None, "judge": "truth"},
        "summary": summarize(cases, ["closed_loop"]), "cases": cases, "invalid_cases": [], "errors": []}))


def test_report_and_compare(tmp_path):
    from spiral.bench.report import compare, write_report

    _fake_results(tmp_path / "a", [0, 0, 1, 1])
    _fake_results(tmp_path / "b", [1, 1, 1, 1])
    md = write_report(tmp_path / "a").read_text()
    assert "| closed_loop | long | 4 | 0.50 [" in md and "## Step success by step index" in md
    faithful = md.split("## Faithful step success by step index (long cases)")[1].split("\n## ")[0]
    assert "| closed_loop | 0.50 [" in faithful and "0.00 [0.00, 0.00] (n=4)" in faithful
    assert (tmp_path / "a" / "success_by_length.png").stat().st_size > 1000
    assert (tmp_path / "a" / "cost_by_mode.png").is_file()
    rows = {r["metric"]: r for r in compare(tmp_path / "a", tmp_path / "b")}
    assert rows["task_completion"]["delta"]["mean"] == 0.5 and rows["task_completion"]["n"] == 4
    assert rows["faithful_task_completion"]["delta"]["mean"] == 0.0 and rows["faithful_task_completion"]["n"] == 4
    assert rows["generator_calls"]["delta"]["mean"] == 0.0
    assert "| closed_loop | xlong |" not in md and "(xlong cases)" not in md  # a v1-like run shows no xlong rows
    header = md.split("## Action quality")[1].split("\n")[2]
    assert "| task completion | faithful task completion |" in header
    _fake_results(tmp_path / "c", [1, 1, 1, 1], xlong=[1, 0, 1])
    md = write_report(tmp_path / "c").read_text()
    assert "| closed_loop | xlong | 3 | 0.67 [" in md
    xl = md.split("## Step success by step index (xlong cases)")[1].split("\n## ")[0]
    assert "| 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 12 |" in xl and "(n=3)" in xl
    assert "faithful task completion, xlong" not in md  # no open-loop mode to compare with
    rows = {(r["metric"]): r for r in compare(tmp_path / "a", tmp_path / "c")}
    assert rows["task_completion"]["n"] == 4  # paired by case id: the xlong cases are only in C
    r = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric",
                                 "task_completion"])
    assert r.exit_code == 0 and "+0.500" in r.output, r.output


def test_compare_pairs_two_modes_of_one_folder_per_length_class(tmp_path):
    """closed loop against plan-only on the same cases: B − A per length class and over all, paired by case."""
    from spiral.bench.report import compare

    cases = []
    for i, (cls, plan, closed) in enumerate([("short", 1, 1), ("short", 0, 1), ("long", 1, 0), ("long", 0, 0),
                                             ("long", 0, 1), ("long", 1, 1)]):
        for mode, tc in (("plan_only", plan), ("closed_loop", closed)):
            cases.append({"case_id": f"c{i}", "mode": mode, "length_class": cls, "status": "ok",
                          "metrics": {"task_completion": float(tc)}, "cost": {}})
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps({"cases": cases}))
    rows = compare(tmp_path / "r", tmp_path / "r", ["task_completion"], "plan_only", "closed_loop", by_length=True)
    got = {r["length_class"]: (r["n"], r["a"], r["b"], r["delta"]["mean"]) for r in rows}
    assert got == {"all": (6, 0.5, 4 / 6, pytest.approx(1 / 6)), "short": (2, 0.5, 1.0, 0.5),
                   "long": (4, 0.5, 0.5, 0.0)}
    assert {(r["mode_a"], r["mode"]) for r in rows} == {("plan_only", "closed_loop")}
    with pytest.raises(ValueError, match="no scored case in mode 'single_shot'"):
        compare(tmp_path / "r", tmp_path / "r", ["task_completion"], "plan_only", "single_shot")
    r = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "r"), str(tmp_path / "r"), "--mode-a",
                                 "plan_only", "--mode-b", "closed_loop", "--by-length", "--metric", "task_completion"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "plan_only → closed_loop" in r.output and "+0.500" in r.output, r.output


def test_compare_refuses_cases_read_by_different_judges(tmp_path):
    """judge-read numbers from other judge weights are not comparable: compare names both judges and the fix."""
    import hashlib
    import shutil

    from spiral.bench.judge import RecognizerJudge
    from spiral.bench.report import compare
    from spiral.critics.recognizer import weights_path

    judge = RecognizerJudge().identity
    assert judge == {"judge": "recognizer", "weights_sha256": hashlib.sha256(weights_path("judge").read_bytes()).hexdigest()}
    shutil.copy(weights_path("judge"), tmp_path / "same.safetensors")
    assert RecognizerJudge(str(tmp_path / "same.safetensors")).identity == judge  # the same weights elsewhere
    shutil.copy(weights_path("critic"), tmp_path / "other.safetensors")
    other = RecognizerJudge(str(tmp_path / "other.safetensors")).identity
    assert other["weights_sha256"] != judge["weights_sha256"]

    def folder(name, identity):
        cases = [{"case_id": f"c{i}", "mode": "closed_loop", "length_class": "short", "status": "ok",
                  "metrics": {"task_completion": 1.0}, "cost": {}, **({"judge_identity": identity} if identity else {})}
                 for i in range(3)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"cases": cases}))
        return tmp_path / name
    a, same, b, old = folder("a", judge), folder("same", dict(judge)), folder("b", other), folder("old", None)
    assert compare(a, same, ["task_completion"])[0]["n"] == 3
    assert compare(a, old, ["task_completion"])[0]["n"] == 3  # results from before identities: nothing to check
    with pytest.raises(ValueError, match="different judges") as e:
        compare(a, b, ["task_completion"])
    assert judge["weights_sha256"] in str(e.value) and "spiral bench rescore" in str(e.value)
    r = CliRunner().invoke(app, ["bench", "compare", str(a), str(b), "--metric", "task_completion"])
    assert r.exit_code != 0 and "different judges" in r.output and "Traceback" not in r.output


# ---- planner evaluation -----------------------------------------------------------------------------
def test_planner_eval_scores_planners_and_egoplan_files(tmp_path):
    from spiral.bench import planner_eval as P
    from spiral.planners.symbolic import SymbolicPlanner

    qs = P.load_questions(P.DEFAULT_QUESTIONS).questions
    assert len(qs) >= 300 and all(q["scene"] in seeds.PLANNER_QUESTIONS for q in qs)
    assert P.evaluate(SymbolicPlanner(), qs[:40])["accuracy"] == 1.0  # exact planner: every question answerable

    class Blind(SymbolicPlanner):
        """Ignores the progress: plans from the scene's first state."""

        def replan(self, goal, observation, history=None):
            from spiral.world.tasks import sample_state

            return self.plan(goal, sample_state(np.random.default_rng(self._scene)))

    blind = Blind()
    got = []
    for q in qs[:40]:
        blind._scene = q["scene"]
        got.append(P.evaluate(blind, [q])["accuracy"])
    assert np.mean(got) < 0.9

    class Chooser:
        def choose(self, q):
            return 0

    res = P.evaluate(Chooser(), qs[:40])
    assert res["accuracy"] == pytest.approx(np.mean([q["golden_choice_idx"] == "A" for q in qs[:40]]))
    assert sum(v["n"] for v in res["subsets"].values()) == 40

    ego = [{"sample_id": 1, "task_goal": "store cereal", "choice_a": "open cupboard", "choice_b": "take cereal",
            "choice_c": "put cereal box into cupboard", "choice_d": "wash hands", "golden_choice_idx": "C",
            "task_progress_metadata": [{"narration_text": "take cereal"}, {"narration_text": "open cupboard"}],
            "video_source": "EpicKitchens"}]
    (tmp_path / "ego.jsonl").write_text(json.dumps(ego[0]) + "\n{broken\n" + json.dumps({"task_goal": "x"}) + "\n")
    loaded = P.load_questions(tmp_path / "ego.jsonl")
    assert len(loaded.questions) == 1 and len(loaded.errors) == 2 and "line 2" in loaded.errors[0]

    class TextPlanner:
        def plan(self, goal, observation):
            raise AssertionError("progress exists: replan is used")

        def replan(self, goal, observation, history):
            from spiral.types import Plan, SubAction

            assert [h.text for h in history] == ["take cereal", "open cupboard"]
            return Plan(goal=goal, steps=[SubAction(text="put the cereal box in the cupboard", verb="put",
                                                    objects=[])])

    res = P.evaluate(TextPlanner(), loaded.questions)
    assert res["accuracy"] == 1.0 and res["subsets"] == {"EpicKitchens": {"n": 1, "accuracy": 1.0}}
    r = CliRunner().invoke(app, ["eval", "planner", "--n", "12"])
    assert r.exit_code == 0 and "overall" in r.output, r.output


# ---- the CI smoke subset with the embedded default (tiny video model) and with the oracle config -----------------
@pytest.mark.parametrize("config", [None, ORACLE], ids=["default-tiny-evolved", "oracle"])
def test_smoke_suite_end_to_end(tmp_path, config):
    """6 cases, closed loop, scored by the independent judge recogniser: the embedded default config
    (``configs/run/tabletop.yaml``: the tiny video model after self-evolution) and the oracle config (the world generator with injected
    failures, reading states with the critic recogniser).

    Uses the embedded critic (``spiral/critics/tabletop.py``) and the shipped judge weights
    (``load_recognizer(role="judge")``).
    """
    out = tmp_path / "smoke"
    args = ["--config", str(config)] if config else []
    r = CliRunner().invoke(app, ["bench", "--suite", "tabletop-smoke", "--mode", "closed_loop", "--out", str(out),
                                 *args, "--quiet"])
    res = json.loads((out / "results.json").read_text())
    assert not res["errors"], f"smoke suite failed: {res['errors'][:2]}"
    assert r.exit_code == 0, r.output
    assert len(res["cases"]) == 6 and res["cases"][0]["judge"] == "recognizer:judge"
    s = res["summary"]["closed_loop"]["all"]
    assert s["task_completion"]["n"] == 6 and s["task_completion"]["mean"] >= 0.5
    assert (out / "summary.md").is_file() and (out / "success_by_length.png").is_file()


def test_recognizer_judge_plumbing_with_random_weights(tmp_path):
    """Shape/plumbing only (random weights say nothing about accuracy): the learned judge and its backbone
    features drive the same metrics, batched, and the judge refuses the critic's own weights."""
    from spiral.api import run
    from spiral.bench.judge import RecognizerFeatures, make_features, make_judge
    from spiral.critics.recognizer import save_weights, weights_path
    from spiral.models.recognizer import RecognizerNet

    path = save_weights(RecognizerNet(), tmp_path / "random-judge.safetensors", {"note": "random, for plumbing"})
    out = tmp_path / "run"
    run("switch the lamp on and open the box", scene=seeds.TESTS.start + 21, out=out, mode="plan_only",
        config=ORACLE, overrides=LIGHT)
    judge = make_judge(f"recognizer:{path}")
    feats = make_features("judge", judge)
    assert isinstance(feats, RecognizerFeatures) and feats.features(np.zeros((3, 64, 64, 3), np.uint8)).shape[0] == 3
    res = M.score_run(out, judge, feats, make_features(None, judge, "background"))
    assert res["metrics"]["unreadable_frames"] == 0 and 0.0 <= res["metrics"]["subject_consistency"] <= 1.0
    assert len(res["step_success_by_index"]) == res["executed_steps"]
    # faithful only where the judge reads success
    assert len(res["faithful_step_success_by_index"]) == res["executed_steps"]
    assert all(f <= s for f, s in zip(res["faithful_step_success_by_index"], res["step_success_by_index"]))
    with pytest.raises(ValueError, match="must not be the critic"):
        make_judge(f"recognizer:{weights_path('critic')}")
