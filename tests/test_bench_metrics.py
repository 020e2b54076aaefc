"""Bench metrics of one run (spiral.bench.metrics) on hand-built run views and one real oracle run: each part of
``score_run`` (action quality, failure counts, temporal coherence, faithfulness, cost, reading a run folder) on
inputs whose answers are worked out by hand, including the empty and unreadable edges. The formulas themselves
(flicker, consistency, smoothness, drift) are checked in tests/test_bench.py."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spiral.bench import metrics as M
from spiral.bench import seeds
from spiral.world.domain import State
from spiral.world.render import FAILURE_KIND, Appearance, render_state

ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"
S0 = State.make({"red_block": "left", "green_block": "center", "blue_block": "box", "yellow_block": "right"})
S1 = S0.with_loc("red_block", "far_left")
S2 = S1.with_loc("yellow_block", "far_right")
SCENE = 5


def _frame(state: State) -> np.ndarray:
    return render_state(state, appearance=Appearance.sample(SCENE), size=64)


class _Table:
    """A judge that reads frames it was shown (by bytes); others are unreadable. ``batch`` offers read_states."""

    def __init__(self, states: list[State], batch: bool = True, batch_fails: bool = False):
        self.known = {_frame(s).tobytes(): s for s in states}
        self.single = self.batched = 0
        if batch:
            self.read_states = self._read_states
        self.batch_fails = batch_fails

    def read_state(self, frame: np.ndarray) -> State:
        self.single += 1
        return self.known[frame.tobytes()]

    def _read_states(self, frames: np.ndarray) -> list[State]:
        self.batched += 1
        if self.batch_fails:
            raise RuntimeError("batch reader broke")
        return [self.known[f.tobytes()] for f in frames]


class _Mean:
    """Features: each frame's mean colour (enough for feature_consistency)."""

    def features(self, frames: np.ndarray) -> np.ndarray:
        return frames.reshape(len(frames), -1, 3).mean(axis=1) + 1.0


def _segment(a: State, b: State, n: int = 3) -> np.ndarray:
    return np.stack([_frame(a)] * (n - 1) + [_frame(b)])


def _view(steps: list[dict], ends: list[State], goal: str = "put the red block in the far left slot",
          scene: int | None = SCENE, attempts: list[dict] | None = None, record: dict | None = None) -> M.RunView:
    segs, prev = [], S0
    for s in ends:
        segs.append(_segment(prev, s))
        prev = s
    return M.RunView(root=Path("."), goal=goal, scene=scene, anchor=_frame(S0), segments=segs, steps=steps,
                     record=record or {}, attempts=attempts or [])


MOVE_RED = {"verb": "move", "objects": ["red_block", "far_left"], "postconditions": ["at(red_block, far_left)"]}
MOVE_YELLOW = {"verb": "move", "objects": ["yellow_block", "far_right"],
               "postconditions": ["at(yellow_block, far_right)"]}


def test_metric_action_quality_on_hand_built_runs():
    judge = _Table([S0, S1, S2])
    aq = M.action_quality(_view([MOVE_RED, MOVE_YELLOW], [S1, S2]), judge)
    assert (aq["task_completion"], aq["step_success"], aq["step_success_by_index"]) == (1.0, 1.0, [1.0, 1.0])
    assert (aq["order_correctness"], aq["hallucinated_motion"], aq["unreadable_frames"]) == (1.0, 0.0, 0)
    assert judge.batched == 1 and judge.single == 0  # one batched read when the judge offers it
    # the second step "moves the yellow block" but the frame shows the red one moved: failed step, extra motion
    bad = M.action_quality(_view([MOVE_RED, MOVE_YELLOW], [S1, S1.with_loc("green_block", "far_right")]),
                           _Table([S0, S1, S1.with_loc("green_block", "far_right")]))
    assert bad["step_success_by_index"] == [1.0, 0.0] and bad["hallucinated_motion"] == 0.5
    # the goal needs the red block at far left and then nothing else: order 1 of 1, but not completed when undone
    undone = M.action_quality(_view([MOVE_RED, {}], [S1, S0], goal="put the red block in the far left slot"),
                              _Table([S0, S1]))
    assert undone["task_completion"] == 0.0 and undone["order_correctness"] == 1.0
    assert undone["step_success_by_index"] == [1.0, 1.0]  # a step without post-conditions or verb holds trivially
    # a goal of two stages, the second never reached: half in order, not completed
    half = M.action_quality(_view([MOVE_RED, MOVE_YELLOW], [S1, S1],
                                  goal="put the red block in the far left slot, then put the yellow block in the far "
                                       "right slot"), _Table([S0, S1]))
    assert (half["order_correctness"], half["task_completion"]) == (0.5, 0.0)
    # a goal outside the grammar: no task completion or order; no steps: no step success
    free = M.action_quality(_view([], [], goal="dance the robot dance"), _Table([S0]))
    assert free["task_completion"] is None and free["order_correctness"] is None
    assert free["step_success"] is None and free["hallucinated_motion"] is None and free["step_success_by_index"] == []
    # unreadable frames: counted, fail their step, and give no hallucination verdict
    blind = M.action_quality(_view([MOVE_RED], [S1]), _Table([S0]))
    assert blind["unreadable_frames"] == 1 and blind["step_success"] == 0.0 and blind["hallucinated_motion"] is None
    assert blind["task_completion"] == 0.0


def test_metric_hallucinated_motion_reads_what_the_step_acts_on():
    """A move acts on the block it moves, not on where it goes: the box's lid opening during "move the red block
    into the box" is motion the step did not ask for; during "open the box" it is the step itself. Edges: an
    unreadable state holds nothing, a predicate outside the domain fails, a goal without stages is in order."""
    from dataclasses import replace

    closed = replace(S0, box_open=False)
    into = replace(closed.with_loc("red_block", "box"), box_open=True)
    move_in = {"verb": "move", "objects": ["red_block", "box"], "postconditions": ["in(red_block, box)"]}
    segs = [_segment(closed, into)]
    view = M.RunView(root=Path("."), goal="put the red block in the box", scene=SCENE, anchor=_frame(closed),
                     segments=segs, steps=[move_in], record={}, attempts=[])
    judge = _Table([closed, into])
    assert M.action_quality(view, judge)["hallucinated_motion"] == 1.0
    opened = replace(closed, box_open=True)
    view = M.RunView(root=Path("."), goal="open the box", scene=SCENE, anchor=_frame(closed),
                     segments=[_segment(closed, opened)], steps=[{"verb": "open", "objects": ["box"]}], record={},
                     attempts=[])
    assert M.action_quality(view, _Table([closed, opened]))["hallucinated_motion"] == 0.0
    assert M.holds_all(None, []) is False and M.holds_all(S0, ["at(red_block, moon)"]) is False
    assert M.holds_all(S0, []) is True and M.order_correctness([], [S0]) == 1.0


def test_metric_a_step_with_exactly_the_faithful_area_of_artifacts_is_faithful():
    """The faithfulness bound is inclusive: at most 0.4 % of the frame may differ from a render of the state read.
    On a 50×50 frame that is exactly 10 pixels: 9 and 10 are faithful, 11 are not."""
    size = 50
    f0 = render_state(S0, appearance=Appearance.sample(SCENE), size=size)
    f1 = render_state(S1, appearance=Appearance.sample(SCENE), size=size)
    for n, faithful in ((9, 1.0), (10, 1.0), (11, 0.0)):
        bad = f1.copy()
        for i in range(n):  # n pixels of the wall, each made black or white: far from what the render has there
            y, x = 2 + i // 10, 2 + i % 10
            bad[y, x] = 0 if bad[y, x].mean() > 128 else 255
        view = M.RunView(root=Path("."), goal="x", scene=SCENE, anchor=f0, segments=[np.stack([f0, f0, bad])],
                         steps=[{}], record={}, attempts=[])
        fa = M.faithfulness(view, [S0, S1], [1.0])
        assert fa["artifact_area"] == n / size**2 and fa["faithful_by_index"] == [faithful], (n, fa)


def test_metric_a_scene_relative_goal_is_read_against_the_true_start():
    """"swap the red and the yellow blocks" means what it means in the scene's first state: read against the run's
    recorded start state when it has one (a judge that misreads the first frame does not change the goal), else
    against the judge's reading of the first frame, never against a later frame."""
    s1 = S0.with_loc("red_block", "far_left")
    s2 = s1.with_loc("yellow_block", "left")
    s3 = s2.with_loc("red_block", "right")  # the two blocks traded places
    steps = [{"verb": "move", "objects": ["red_block", "far_left"]}, {"verb": "move", "objects": ["yellow_block", "left"]},
             {"verb": "move", "objects": ["red_block", "right"]}]
    goal = "swap the red and the yellow blocks"
    view = _view(steps, [s1, s2, s3], goal=goal)
    assert M.action_quality(view, _Table([S0, s1, s2, s3]))["task_completion"] == 1.0  # from the first frame
    # a judge that reads the first frame as another scene: the recorded start decides, not the misreading
    misread = _Table([s1, s2, s3])
    misread.known[_frame(S0).tobytes()] = s1
    view.initial_state = S0.to_dict()
    assert M.action_quality(view, misread)["task_completion"] == 1.0
    view.initial_state = None
    assert M.action_quality(view, misread)["task_completion"] == 0.0  # read from the misread first frame


def test_metric_bad_video_and_feature_shapes_name_the_shape_and_empty_features_compare():
    for bad in (np.zeros((3, 8, 8), np.uint8), np.zeros((3, 8, 8, 4), np.uint8)):
        with pytest.raises(ValueError, match=rf"expected T×H×W×3 frames, got shape \({bad.shape[0]}, "):
            M.temporal_flickering(bad)
    for bad in (np.zeros(4), np.zeros((1, 4))):
        with pytest.raises(ValueError, match=r"expected T×D features with T ≥ 2, got shape"):
            M.feature_consistency(bad)
    # an all-zero feature vector has no direction: two of them are the same picture, one against another is not
    assert M.feature_consistency(np.zeros((2, 3))) == 1.0
    assert M.feature_consistency(np.array([[0.0, 0.0], [1.0, 0.0]])) == 0.0
    assert M.feature_consistency(np.array([[1.0, 0.0], [0.0, 0.0]])) == 0.0


def test_metric_dilate_is_scipys_binary_dilation_and_masked_mean_abs_by_hand():
    """The drift mask's dilation is binary dilation by a (2r+1)² square (scipy's, which the metrics do without);
    the masked difference is the mean |a − b| over the mask, in units of 255, computed without uint8 wrap-around."""
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(0)
    for k in range(20):
        mask = rng.random((12, 9)) < 0.08
        for r in (0, 1, 2, 3):
            want = binary_dilation(mask, structure=np.ones((2 * r + 1, 2 * r + 1), bool)) if r else mask
            assert np.array_equal(M.dilate(mask, r), want), (k, r)
        assert np.array_equal(M.dilate(mask), binary_dilation(mask, structure=np.ones((3, 3), bool)))
    a = np.array([[0, 255, 10]], np.uint8)
    b = np.array([[51, 0, 200]], np.uint8)
    assert M.masked_mean_abs(a, b, np.array([[True, False, False]])) == pytest.approx(51 / 255)
    assert M.masked_mean_abs(a, b, np.array([[True, True, True]])) == pytest.approx((51 + 255 + 190) / 3 / 255)
    assert M.masked_mean_abs(a, b, np.zeros((1, 3), bool)) is None


def test_metric_read_states_batches_and_falls_back():
    frames = [_frame(S0), _frame(S1), np.zeros((64, 64, 3), np.uint8)]
    single = _Table([S0, S1], batch=False)
    assert M.read_states(single, frames) == [S0, S1, None] and single.single == 3
    broken = _Table([S0, S1], batch_fails=True)  # the batch fails on the unknown frame: frame by frame instead
    assert M.read_states(broken, frames) == [S0, S1, None] and broken.batched == 1 and broken.single == 3
    ok = _Table([S0, S1])
    assert M.read_states(ok, frames[:2]) == [S0, S1] and (ok.batched, ok.single) == (1, 0)
    assert M.read_states(ok, []) == [] and ok.batched == 1  # nothing to read: no batch call


def test_metric_failure_counts_by_hand():
    attempts = [
        {"segment_file": "a", "generator_meta": {"failure": "teleport"}, "verdict": {"failure": "sudden_switch"}},
        {"segment_file": "b", "generator_meta": {"failure": "teleport"}, "verdict": None},
        {"segment_file": "c", "generator_meta": {"failure": None}, "verdict": {"failure": None}},
        {"segment_file": "d", "generator_meta": {"failure": "made_up"}, "verdict": {"failure": "scene_drift"}},
        {"segment_file": "e", "verdict": {"failure": "scene_drift"}},
    ]
    view = _view([], [], attempts=attempts, record={"accepted": ["b", "c", "d"]})
    assert M.failure_counts(view) == {
        "generator_all": {FAILURE_KIND["teleport"]: 2, "made_up": 1},  # an unknown label is kept as it is
        "generator_kept": {FAILURE_KIND["teleport"]: 1, "made_up": 1},
        "critic": {"sudden_switch": 1, "scene_drift": 2}}
    assert M.failure_counts(_view([], [])) == {"generator_all": {}, "generator_kept": {}, "critic": {}}


def test_metric_cost_by_hand():
    record = {"counts": {"generations": 5, "accepted": 2}, "costs": {"wall_seconds": 3.5},
              "attempts": [{"verdict": {"failure": None}}, {"verdict": None}, {"verdict": {"failure": "x"}}],
              "plans": [{}, {}], "accepted": ["a", "b", "c"]}
    assert M.cost(record) == {"generator_calls": 5.0, "critic_calls": 2.0, "planner_calls": 2.0, "accepted_steps": 2.0,
                              "seconds_per_video": 3.5, "generations_per_accepted_step": 2.5,
                              "calls_per_accepted_step": 3.5, "unverified_steps": 0.0}
    assert M.cost({**record, "unverified": [{"step": 0}, {"step": 1}]})["unverified_steps"] == 2.0
    # an older record without counts: generations = attempts, kept = accepted list; plan calls from counts
    bare = {"attempts": [{"verdict": None}] * 4, "accepted": ["a", "b"], "counts": {"plan_calls": 3}}
    c = M.cost(bare)
    assert (c["generator_calls"], c["accepted_steps"], c["planner_calls"], c["critic_calls"]) == (4.0, 2.0, 3.0, 0.0)
    assert M.cost({}) == {"generator_calls": 0.0, "critic_calls": 0.0, "planner_calls": 0.0, "accepted_steps": 0.0,
                          "seconds_per_video": 0.0, "generations_per_accepted_step": None,
                          "calls_per_accepted_step": None, "unverified_steps": 0.0}


def test_metric_temporal_coherence_edges():
    keys = {"temporal_flickering", "subject_consistency", "background_consistency", "motion_smoothness",
            "drift_mean", "drift_last"}
    none = M.temporal_coherence(_view([], []), [S0], _Mean(), _Mean())
    assert none == dict.fromkeys(keys)  # the anchor alone: one frame, nothing to measure
    two = _view([MOVE_RED], [S1])
    two.segments = [two.segments[0][1:]]  # 2 frames: flicker and consistency, no smoothness (needs 3)
    t2 = M.temporal_coherence(two, [S0, S1], _Mean(), _Mean())
    assert set(t2) == keys and t2["temporal_flickering"] is not None and t2["motion_smoothness"] is None
    assert t2["subject_consistency"] is not None and t2["background_consistency"] is not None
    view = _view([MOVE_RED, MOVE_YELLOW, {}], [S1, S2, S2])
    last = view.segments[-1].copy()
    last[-1] = np.clip(last[-1].astype(int) + 60, 0, 255)  # only the last step's end drifts
    view.segments[-1] = last
    t = M.temporal_coherence(view, [S0, S1, S2, S2], _Mean(), _Mean())
    assert t["motion_smoothness"] is not None and t["drift_last"] > 0.1
    assert t["drift_mean"] == pytest.approx(t["drift_last"] / 3)  # the two clean steps drift 0
    # the interpolator is the one passed (a "previous frame" interpolator scores a still video perfectly)
    still = M.temporal_coherence(_view([{}], [S0]), [S0, S0], _Mean(), _Mean(), interpolate=lambda a, b: a)
    assert still["motion_smoothness"] == 1.0
    moving = _view([MOVE_RED], [S1])
    lin = M.temporal_coherence(moving, [S0, S1], _Mean(), _Mean())["motion_smoothness"]
    prev = M.temporal_coherence(moving, [S0, S1], _Mean(), _Mean(), interpolate=lambda a, b: b)["motion_smoothness"]
    assert lin != prev
    # an unreadable first frame: no drift reference at all
    blind = M.temporal_coherence(view, [None, S1, S2, S2], _Mean(), _Mean())
    assert blind["drift_mean"] is None and blind["drift_last"] is None


def test_metric_faithfulness_edges():
    view = _view([MOVE_RED, MOVE_YELLOW], [S1, S2])
    empty = {"artifact_area": None, "faithful_step_success": None, "faithful_by_index": [], "faithful_frames": []}
    assert M.faithfulness(view, [S0, S1, S2], [1.0, 1.0]) == {"artifact_area": 0.0, "faithful_step_success": 1.0,
                                                              "faithful_by_index": [1.0, 1.0],
                                                              "faithful_frames": [1.0, 1.0]}
    assert M.faithfulness(view, [S0, S1, S2], [1.0, 0.0])["faithful_by_index"] == [1.0, 0.0]  # judged failure
    half = M.faithfulness(view, [S0, None, S2], [1.0, 1.0])  # an unreadable end: not faithful, not averaged
    assert half == {"artifact_area": 0.0, "faithful_step_success": 0.5, "faithful_by_index": [0.0, 1.0],
                    "faithful_frames": [0.0, 1.0]}  # the picture alone, whatever the judge read
    assert M.faithfulness(view, [S0, None, None], [1.0, 1.0])["artifact_area"] is None
    assert M.faithfulness(view, [None, S1, S2], [1.0, 1.0]) == empty  # no anchor state
    assert M.faithfulness(view, [], []) == empty
    assert M.faithfulness(_view([MOVE_RED], [S1], scene=None), [S0, S1], [1.0]) == empty  # the scene's look unknown
    assert M.faithfulness(_view([], []), [S0], []) == empty
    assert M.faithfulness(view, [S0, S1, S2], [])["faithful_step_success"] is None
    ref = M.DriftReference(_frame(S0), S0, None)
    assert ref.artifact_area(_frame(S1), S1) is None and M.DriftReference(_frame(S0), S0, SCENE).artifact_area(
        _frame(S1), S1) == 0.0


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory) -> Path:
    """A finished closed-loop oracle run with injected failures (the world generator reports each one)."""
    from spiral.api import run

    out = tmp_path_factory.mktemp("metrics") / "run"
    run("put the red block in the box, then switch on the lamp", scene=seeds.TESTS.start + 14, out=out, seed=3,
        config=ORACLE, overrides=["output.report=false", "output.segment_videos=false", "video.crossfade=2",
                                  "generator.options.failure_rate=0.5", "loop.max_replans=6"])
    return out


def test_metric_score_run_counts_match_the_run_folder(oracle_run):
    from spiral import atomic
    from spiral.bench.judge import make_features, make_judge

    judge = make_judge("truth", oracle_run)
    res = M.score_run(oracle_run, judge, make_features(None, judge), make_features(None, judge, "background"))
    record = json.loads((oracle_run / "record.json").read_text())
    journal = atomic.read_jsonl(oracle_run / "attempts.jsonl")
    kept = set(record["accepted"])
    labels = [(a["segment_file"], (a.get("generator_meta") or {}).get("failure")) for a in journal]
    assert res["failures"]["generator_all"] == dict(Counter(FAILURE_KIND[f] for _, f in labels if f))
    assert res["failures"]["generator_kept"] == dict(Counter(FAILURE_KIND[f] for s, f in labels if f and s in kept))
    assert res["failures"]["critic"] == dict(Counter(a["verdict"]["failure"] for a in journal
                                                     if a.get("verdict") and a["verdict"]["failure"]))
    assert sum(res["failures"]["generator_all"].values()) >= 2  # the run really had failures to count
    c = res["cost"]
    assert c["generator_calls"] == c["critic_calls"] == len(journal) and c["accepted_steps"] == len(kept)
    assert c["planner_calls"] == len(record["plans"]) and c["seconds_per_video"] == record["costs"]["wall_seconds"]
    assert res["executed_steps"] == len(kept) and res["run_status"] == record["status"]
    # the per-step lists sit beside the metrics, not in them, and are the ones the parts compute
    view = M.load_run(oracle_run)
    aq = M.action_quality(view, judge)
    states = aq.pop("_states")
    fa = M.faithfulness(view, states, aq["step_success_by_index"])
    assert res["step_success_by_index"] == aq["step_success_by_index"] and len(aq["step_success_by_index"]) == len(kept)
    assert res["faithful_step_success_by_index"] == fa["faithful_by_index"]
    assert not {"step_success_by_index", "faithful_by_index", "_states"} & set(res["metrics"])
    assert res["metrics"]["faithful_step_success"] == fa["faithful_step_success"]
    # the interpolator given reaches motion smoothness (holding the previous frame is a worse guess than the mean)
    held = M.score_run(oracle_run, judge, make_features(None, judge), make_features(None, judge, "background"),
                       interpolate=lambda prev, nxt: prev)
    assert held["metrics"]["motion_smoothness"] == M.motion_smoothness(view.video(), lambda prev, nxt: prev)
    assert held["metrics"]["motion_smoothness"] != res["metrics"]["motion_smoothness"]
    assert "judge_answers" not in res  # a state-reading judge has no answers to report
    # a motion scorer replaces the default protocol, and every extra scorer adds its metric
    from spiral.bench.features import MotionScorer

    class _Frames:  # an extra video scorer: the number of frames, so the video it was given shows
        metric = "frames"

        def score(self, video):
            return float(len(video))

    vb = M.score_run(oracle_run, judge, make_features(None, judge), make_features(None, judge, "background"),
                     motion=MotionScorer("vbench"), scorers=[_Frames()])
    assert vb["metrics"]["motion_smoothness"] == M.vbench_motion_smoothness(view.video())
    assert vb["metrics"]["motion_smoothness"] != res["metrics"]["motion_smoothness"]
    assert vb["metrics"]["frames"] == len(view.video())


def test_metric_score_run_with_a_step_judge_reports_its_answers(oracle_run):
    """A judge that answers per step (a VLM, spiral.bench.judge_vlm) instead of reading states: score_run asks it
    about every kept segment in order (with the steps done before), asks about the goal with the reference plan,
    aggregates the answers and reports them beside the metrics; there are no states, so nothing is read from one."""
    from spiral.bench.judge import StepJudge, make_features, make_judge
    from spiral.bench.judge_vlm import GoalAnswer, StepAnswer

    class Scripted:
        name = "scripted"

        def __init__(self):
            self.steps, self.goals = [], []

        def judge_step(self, frames, step, goal, done):
            k = len(self.steps)
            self.steps.append((frames, step, goal, list(done)))
            return StepAnswer(happened=True, completed=k % 2 == 0, other_motion=k == 1, order_held=k != 2,
                              confidence=0.5)

        def judge_goal(self, last_frame, goal, reference=None):
            self.goals.append((last_frame, goal, reference))
            return GoalAnswer(achieved=True, confidence=1.0)

    view = M.load_run(oracle_run)
    judge, truth = Scripted(), make_judge("truth", oracle_run)
    assert isinstance(judge, StepJudge)
    res = M.score_run(oracle_run, judge, make_features(None, truth), make_features(None, truth, "background"),
                      reference_plan=["open the box", "switch on the lamp"])
    n = len(view.segments)
    assert n >= 3 and len(judge.steps) == n
    for k, (frames, step, goal, done) in enumerate(judge.steps):
        assert np.array_equal(frames, view.segments[k]) and step == view.steps[k]["text"] and goal == view.goal
        assert done == [s["text"] for s in view.steps[:k]]
    [(last, goal, reference)] = judge.goals
    assert np.array_equal(last, view.segments[-1][-1]) and reference == ["open the box", "switch on the lamp"]
    completed = [float(k % 2 == 0) for k in range(n)]
    assert res["step_success_by_index"] == completed and res["metrics"]["step_success"] == np.mean(completed)
    assert res["metrics"]["task_completion"] == 1.0 and res["metrics"]["unreadable_frames"] == 0
    assert res["metrics"]["hallucinated_motion"] == 1 / n and res["metrics"]["order_correctness"] == (n - 1) / n
    answers = res["judge_answers"]
    assert [a.get("step") for a in answers[:n]] == list(range(n)) and answers[-1]["goal"] is True
    assert [a["completed"] for a in answers[:n]] == [bool(c) for c in completed]
    # no states: no drift and no faithfulness (it compares a frame with a render of the state read there)
    assert res["metrics"]["drift_mean"] is None and res["faithful_step_success_by_index"] == []
    assert res["metrics"]["faithful_step_success"] is None and res["metrics"]["faithful_task_completion"] is None


def test_metric_load_run_reads_and_refuses(oracle_run, tmp_path):
    from spiral.compose import compose
    from spiral.rundir import load_frames

    view = M.load_run(oracle_run)
    record = json.loads((oracle_run / "record.json").read_text())
    assert view.root == oracle_run and view.crossfade == 2 and view.scene == seeds.TESTS.start + 14
    meta = json.loads((oracle_run / "meta.json").read_text())  # the scene's true start, for scene-relative goals
    assert view.initial_state == meta["initial_state"] and State.from_dict(view.initial_state)
    assert len(view.segments) == len(record["accepted"]) and view.anchor.shape == (64, 64, 3)
    assert np.array_equal(view.video(), compose([load_frames(oracle_run / r) for r in record["accepted"]], 2)[0])
    run = tmp_path / "run"
    shutil.copytree(oracle_run, run)
    (run / "config.yaml").write_text("loop:\n  mode: closed_loop\n")  # no video section: no crossfade
    assert M.load_run(run).crossfade == 0
    rec = json.loads((run / "record.json").read_text())
    (run / "record.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "accepted"}))
    assert M.load_run(run).segments == []  # a record without kept segments
    (run / "record.json").write_text(json.dumps(rec))
    (run / rec["accepted"][-1]).unlink()
    with pytest.raises(FileNotFoundError, match=f"^{run}: kept segment {rec['accepted'][-1]} is missing from "
                                                "attempts.jsonl or segments/$"):
        M.load_run(run)
    (run / "record.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"^{run} has no record.json: the run did not finish$"):
        M.load_run(run)
