"""The closed loop end to end on the oracle world generator (configs/run/tabletop-oracle.yaml): decisions, modes,
resume after SIGKILL; and `spiral demo` on the embedded default (configs/run/tabletop.yaml, the tiny video model
after self-evolution, `tiny-evolved`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from spiral.api import run
from spiral.config import load_config
from spiral.loop import run_loop
from spiral.planners.symbolic import SymbolicPlanner
from spiral.rundir import load_frames
from spiral.world.goals import parse_goal
from spiral.world.tasks import sample_task

GOAL = "put the red block in the box and close it, then turn on the lamp"
# the embedded default runs the tiny video model; these tests need the oracle world generator (injected failures)
ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"


def _final_state_reached(out: Path, goal: str) -> bool:
    from spiral.critics.recognizer import load_recognizer

    rec = json.loads((out / "record.json").read_text())
    last = load_frames(out / rec["accepted"][-1])[-1]
    return parse_goal(goal).satisfied(load_recognizer().read_state(last))


def test_closed_loop_recovers_from_injected_failures(tmp_path):
    rec = run(GOAL, scene=4, out=tmp_path / "r", seed=2, config=ORACLE,
              overrides=["generator.options.failure_rate=0.5", "loop.max_replans=8"])
    assert rec.status == "success"
    decisions = [a.decision for a in rec.attempts]
    kept = sum(1 for a in rec.attempts if a.decision == "replan" and a.verdict.observed_state is not None)
    assert decisions.count("accept") + kept == rec.counts["accepted"] < len(decisions), decisions
    assert {"refine", "regenerate"} & set(decisions), decisions
    assert _final_state_reached(tmp_path / "r", GOAL)
    for f in ("config.yaml", "plan.json", "attempts.jsonl", "final.mp4", "record.json", "report.html"):
        assert (tmp_path / "r" / f).is_file(), f
    lines = [json.loads(x) for x in (tmp_path / "r" / "attempts.jsonl").read_text().splitlines()]
    assert len(lines) == len(rec.attempts) and all(Path(tmp_path / "r" / x["segment_file"]).is_file() for x in lines)
    # composed video: accepted segments without duplicated boundary frames
    n = sum(len(load_frames(tmp_path / "r" / p)) for p in rec.accepted) - (len(rec.accepted) - 1)
    assert rec.step_boundaries[-1] == n - 1


def test_open_loop_modes_use_no_critic_and_single_shot_uses_goal_text(tmp_path):
    rec = run(GOAL, scene=4, out=tmp_path / "p", mode="plan_only", config=ORACLE,
              overrides=["generator.options.failure_rate=0.5"])
    assert all(a.verdict is None and a.decision == "accept" for a in rec.attempts)
    assert len(rec.attempts) == len(rec.plans[0].steps)
    rec = run(GOAL, scene=4, out=tmp_path / "s", mode="single_shot", config=ORACLE)
    assert all(a.prompt == GOAL for a in rec.attempts) and len(rec.attempts) == len(rec.plans[0].steps)


def test_budget_exhausted_keeps_what_it_made(tmp_path):
    """on_budget_exhausted: stop ends the run at the first step it gives up, keeping what was accepted before
    (tests/test_escalation.py covers the escalation and keep_best)."""
    rec = run(GOAL, scene=4, out=tmp_path / "b", config=ORACLE, overrides=[
        "generator.options.failure_rate=1.0", "loop.max_refines_per_step=1", "loop.max_replans=1",
        "loop.on_budget_exhausted=stop"])
    assert rec.status == "budget_exhausted" and "max_replans" in rec.stop_reason
    assert (tmp_path / "b" / "final.mp4").is_file() and (tmp_path / "b" / "report.html").is_file()
    # every step fails: at most (1 + max_refines) attempts for each of the (1 + max_replans) plans
    assert 2 <= rec.counts["generations"] == len(rec.attempts) <= 4
    assert rec.counts["replans"] == 1 and rec.counts["accepted"] == sum(a.decision == "replan" for a in rec.attempts)


def test_replan_from_observed_state(tmp_path):
    """A plausible wrong-object segment is kept and the planner re-plans from what the critic saw."""
    cfg = load_config(ORACLE, ["generator.options.failure_rate=1.0", "generator.options.failures=[wrong_object]",
                             "loop.max_replans=2", "loop.max_total_generations=6"])
    from spiral.api import build_agents, scene_frame

    agents = build_agents(cfg)
    first, state = scene_frame(4, (64, 64))
    rec, _ = run_loop("move the yellow block to the far left slot", first, agents, cfg)
    assert any(a.decision == "replan" for a in rec.attempts)
    assert len(rec.plans) >= 2


def _spiral(*args, **kw):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "spiral.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **kw)


def _without_timings(x):
    """A journal line or record without what a clock measured (seconds of each call, the costs' *_seconds)."""
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items() if k != "seconds" and not k.endswith("_seconds")}
    if isinstance(x, list):
        return [_without_timings(v) for v in x]
    return x


def _same_run(out: Path, ref: Path) -> None:
    """A resumed run ends as the uninterrupted one: the journal line for line and the record field for field
    (plans, attempts with their verdicts and decisions, accepted segments, counts, final state), all but the
    timings; the kept segments byte for byte; final.mp4 the same video. Calls answered from the journal count
    as replayed, so each *_calls count may move into replayed_calls, never appear or vanish. The H.264 bytes of
    final.mp4 are not compared: on the 2-core CI machine libx264 encoded the same frames to different bytes in
    different processes (2 of 6 runs of this test failed on that alone, session 10), so the decoded frames are
    compared with the encoder's own tolerance instead, against the lossless composition of the kept segments."""
    from spiral.compose import compose
    from spiral.video import read_video

    journal, journal_ref = ([_without_timings(json.loads(x)) for x in _read(d)] for d in (out, ref))
    assert journal == journal_ref
    rec, rec_ref = (_without_timings(json.loads((d / "record.json").read_text())) for d in (out, ref))
    counts, counts_ref = rec.pop("counts"), rec_ref.pop("counts")
    assert rec == rec_ref
    calls = {k for k in counts_ref if k.endswith("_calls") and k != "replayed_calls"}
    assert {k: v for k, v in counts.items() if k not in calls | {"replayed_calls"}} == {
        k: v for k, v in counts_ref.items() if k not in calls | {"replayed_calls"}}
    assert counts_ref["replayed_calls"] == 0 and all(counts[k] <= counts_ref[k] for k in calls)
    assert sum(counts[k] for k in calls if k != "judge_calls") + counts["replayed_calls"] == sum(
        counts_ref[k] for k in calls if k != "judge_calls")  # each plan or generation ran once or was replayed
    for rel in rec_ref["accepted"]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes()
    frames = compose([load_frames(ref / rel) for rel in rec_ref["accepted"]], 0)[0]
    got, want = read_video(out / "final.mp4").astype(int), read_video(ref / "final.mp4").astype(int)
    assert got.shape == want.shape == frames.shape
    assert np.abs(got - frames).mean() < 3 and np.abs(want - frames).mean() < 3  # both encode these frames


def test_resume_after_sigkill_is_byte_identical(tmp_path):
    """Kill `spiral run` with SIGKILL at ≥ 10 points over several runs; resumed runs end identical (the
    journal and the record but for timings, the kept segments byte for byte, the final video frame for frame)."""
    rng = np.random.default_rng(0)
    args = ["--config", str(ORACLE), "--set", "generator.options.failure_rate=0.4"]
    cases = [(GOAL, 4), ("tidy up: put every block in the box", 7),
             ("stack the blue block on the green one, then switch on the lamp", 2),
             ("put the yellow block on the red one and close the box", 9), ("move every block into the box", 11)]
    kills = 0
    for case, (goal, scene) in enumerate(cases):
        if kills >= 10:
            break
        ref = tmp_path / f"ref{case}"
        run(goal, scene=scene, out=ref, seed=case, config=ORACLE, overrides=args[3:])
        n_ref = len(_read(ref))
        out = tmp_path / f"k{case}"
        p = _spiral("run", goal, "--scene", str(scene), "--out", str(out), "--seed", str(case), *args)
        targets = sorted(rng.choice(np.arange(1, n_ref), size=min(4, n_ref - 1), replace=False).tolist())
        for k in targets:  # kill once the journal holds k attempts (plus a random delay into the next one)
            while p.poll() is None and _lines(out) < k:
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0, 0.03)))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                p = _spiral("run", "--resume", str(out))
        assert p.wait(timeout=300) in (0, 1), p.stderr.read().decode()
        _same_run(out, ref)
        keys = [(x["plan_version"], x["step"], x["attempt"]) for x in map(json.loads, _read(out))]
        assert len(keys) == len(set(keys)) == n_ref  # nothing generated twice once journaled
    assert kills >= 10


def _read(out: Path) -> list[str]:
    f = out / "attempts.jsonl"
    return [x for x in f.read_text().splitlines() if x.strip()] if f.exists() else []


def _lines(out: Path) -> int:
    return len(_read(out))


def test_demo_runs_the_embedded_default_generator(tmp_path):
    """`spiral demo` (no config: configs/run/tabletop.yaml, `tiny-evolved`) reaches its goal; the demo's goal is GOAL."""
    import yaml
    from typer.testing import CliRunner

    from spiral.cli import app

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["generator"]["name"] == "tiny-evolved"
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "success" and rec["goal"] == GOAL, rec["status"]
    assert _final_state_reached(out, GOAL) and (out / "report.html").is_file()


def test_goal_is_checked_at_the_end(tmp_path):
    """A planner that can judge the goal is asked at the end; the world run reaches its goal."""
    task = sample_task(123, 3, 5)
    rec = run(task.goal.text, scene=task.scene_seed, out=tmp_path / "g", config=ORACLE)
    assert rec.status == "success" and _final_state_reached(tmp_path / "g", task.goal.text)
    assert SymbolicPlanner().achieved(task.goal, rec.final_state)
