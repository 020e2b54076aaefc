"""Agent evaluations on the public files: EgoPlan-Bench's JSON and VideoGen-RewardBench's CSV as published.

Every file here is written by the test in the published schema (EgoPlan-Bench's README sample fields, EPIC-KITCHENS
frame folders and Ego4D videos; VideoGen-RewardBench's CSV columns), with real JPEG frames and real mp4 files. The
planner and critic under evaluation are tiny but real agents: they answer from the frames and videos they are given,
so a frame read from the wrong place or a score paired with the wrong video changes the numbers.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spiral import registry  # noqa: E402
from spiral.bench.critic_eval import accuracy_with_ties  # noqa: E402
from spiral.bench.rewardbench import videoalign_accuracy  # noqa: E402
from spiral.cli import app  # noqa: E402
from spiral.types import NextStepQuestion, Segment, SubAction, Verdict  # noqa: E402
from spiral.video import write_video  # noqa: E402

RED, GREEN, BLUE, GREY = (200, 20, 20), (20, 200, 20), (20, 20, 200), (120, 120, 120)


def _one_line_error(res) -> str:
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert res.exit_code != 0 and len(lines) == 1, res.output
    return lines[0]


# ---- VideoAlign-compatible accuracy: hand-checked cases -----------------------------------------------------------
def test_videoalign_accuracy_hand_checked_cases():
    """Worked by hand from the sweep VideoAlign's calc_accuracy_with_ties performs (docstring of videoalign_accuracy).

    Case R (repeated margins): (tie, +0.3), (A, +0.3), (A, +0.9). Start: no predicted tie, right = 2 (both A pairs).
    Walk by |margin|: tie-labelled pair enters the band → right 3 → τ = 3/3 = 1.0; the A pair with 0.3 enters →
    right 2 → 2/3; the 0.9 pair → 1/3. VideoAlign reports 1.0 at ε = 0.3, a split no threshold makes (both 0.3
    pairs are on the same side of any ε). The exact search: ε=0 → 2/3, ε=0.3 → 2/3 (tie ✓, A→tie ✗, 0.9 ✓),
    ε=0.9 → 1/3: 2/3.
    Case R swapped (A, +0.3) first: A pair enters first → 1/3; tie pair → 2/3; 0.9 → 1/3: VideoAlign 2/3.
    Case Z (zero margins): (A, 0.0), (B, −0.2), (A, +0.4). Start right = 2 (the zero margin is discordant). Walk:
    the zero-margin A pair enters → stays wrong → 2/3 (ε = 0); −0.2 → 1/3; 0.4 → 0: 2/3. Without ties VideoAlign:
    concordant 2 / (2 + 1) = 2/3; the exact count gives the zero margin ½: (½ + 1 + 1)/3 = 5/6.
    Case N (no tie labels): (A, +0.1), (B, −0.2). Start right = 2, but that state is never scored: the 0.1 pair
    enters → ½; then 0. VideoAlign 0.5; the exact search at ε = 0 predicts both right: 1.0.
    """
    r = videoalign_accuracy([0.3, 0.3, 0.9], ["tie", "A", "A"])
    assert r["with_ties"] == pytest.approx(1.0) and r["epsilon"] == pytest.approx(0.3)
    assert accuracy_with_ties([0.3, 0.3, 0.9], ["tie", "A", "A"])["with_ties"] == pytest.approx(2 / 3)
    assert videoalign_accuracy([0.3, 0.3, 0.9], ["A", "tie", "A"])["with_ties"] == pytest.approx(2 / 3)

    z = videoalign_accuracy([0.0, -0.2, 0.4], ["A", "B", "A"])
    assert z["with_ties"] == pytest.approx(2 / 3) and z["epsilon"] == 0.0
    assert z["without_ties"] == pytest.approx(2 / 3)
    assert accuracy_with_ties([0.0, -0.2, 0.4], ["A", "B", "A"])["without_ties"] == pytest.approx(5 / 6)

    n = videoalign_accuracy([0.1, -0.2], ["A", "B"])
    assert n["with_ties"] == pytest.approx(0.5) and n["without_ties"] == 1.0
    assert accuracy_with_ties([0.1, -0.2], ["A", "B"])["with_ties"] == 1.0

    # a longer mixed case checked against a brute-force replay of the one-pair-at-a-time sweep
    rng = np.random.default_rng(0)
    m = np.round(rng.normal(size=60), 1) * (rng.random(60) < 0.8)  # many repeated and zero margins
    lab = list(rng.choice(["A", "B", "tie"], size=60))
    h = np.array([{"A": 1, "B": -1, "tie": 0}[x] for x in lab])
    order = sorted(range(60), key=lambda k: abs(m[k]))
    taus = []
    for j in range(1, 61):
        band = set(order[:j])  # the first j pairs in the walk are predicted ties
        pred = [0 if k in band else (1 if m[k] > 0 else -1) for k in range(60)]
        right = sum(1 for k in range(60) if (pred[k] == h[k] and (h[k] == 0 or m[k] != 0)))
        taus.append(right / 60)
    assert videoalign_accuracy(m, lab)["with_ties"] == pytest.approx(max(taus))


# ---- VideoGen-RewardBench CSV -------------------------------------------------------------------------------------
class BrightnessCritic:
    """A tiny real critic for the CSV test: scores a video by what it shows (mean brightness, frame-to-frame motion)."""

    calls = 0

    def judge(self, segment: Segment, sub_action: SubAction, context=None) -> Verdict:
        type(self).calls += 1
        f = segment.frames.astype(np.float32)
        bright = float(f.mean() / 255)
        still = float(1 - np.abs(np.diff(f, axis=0)).mean() / 255) if len(f) > 1 else 1.0
        return Verdict(scores={"bright": bright, "mq": still}, passed=True, decision="accept")


registry.register("critic", "test-brightness")(BrightnessCritic)

COLUMNS = ["path_A", "path_B", "A_model", "B_model", "prompt", "fps_A", "num_frames_A", "fps_B", "num_frames_B",
           "VQ", "MQ", "TA", "Overall"]


def _video(path: Path, level: int, flicker: int = 0) -> None:
    frames = np.full((6, 32, 32, 3), level, np.uint8)
    frames[1::2] = np.clip(level + flicker, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps=8)


def _rewardbench(root: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    csv_path = root / "videogen-rewardbench.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({"A_model": "m1", "B_model": "m2", "fps_A": 8, "fps_B": 8, "num_frames_A": 6, "num_frames_B": 6,
                        **r})
    return csv_path


def _pairs_fixture(root: Path) -> Path:
    # dark (40), mid (120), bright (200), bright again (200: a zero margin), and a flickering mid video
    _video(root / "videos/m1/dark.mp4", 40)
    _video(root / "videos/m1/mid.mp4", 120)
    _video(root / "videos/m2/bright.mp4", 200)
    _video(root / "videos/m2/bright2.mp4", 200)
    _video(root / "videos/m2/flicker.mp4", 120, flicker=60)
    v = "videos/m1/dark.mp4", "videos/m1/mid.mp4", "videos/m2/bright.mp4", "videos/m2/bright2.mp4", \
        "videos/m2/flicker.mp4"
    rows = [
        {"path_A": v[2], "path_B": v[0], "prompt": "a ball", "VQ": "A", "MQ": "same", "TA": "A", "Overall": "A"},
        {"path_A": v[0], "path_B": v[1], "prompt": "a ball", "VQ": "B", "MQ": "same", "TA": "B", "Overall": "B"},
        {"path_A": v[2], "path_B": v[3], "prompt": "a ball", "VQ": "same", "MQ": "same", "TA": "A", "Overall": "same"},
        {"path_A": v[1], "path_B": v[4], "prompt": "a cat", "VQ": "B", "MQ": "A", "TA": "same", "Overall": "A"},
        {"path_A": v[4], "path_B": v[2], "prompt": "a cat", "VQ": "B", "MQ": "B", "TA": "B", "Overall": "B"},
    ]
    return _rewardbench(root, rows)


def test_rewardbench_csv_as_published_scores_both_ways(tmp_path):
    csv_path = _pairs_fixture(tmp_path)
    out = tmp_path / "out"
    args = ["eval", "critic", "--critic", "test-brightness", "--pairs", str(csv_path), "--videos", str(tmp_path),
            "--out", str(out), "--score", "VQ=bright"]
    BrightnessCritic.calls = 0
    res = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert BrightnessCritic.calls == 7  # 5 videos, mid and bright under two prompts: each (video, prompt) once
    result = json.loads((out / "results.json").read_text())
    assert result["n_pairs"] == 5 and result["score_sources"] == {"VQ": "bright", "MQ": "mq", "TA": "overall",
                                                                   "Overall": "overall"}
    scores = {(r["path"], r["prompt"]): r["scores"] for r in map(json.loads, (out / "scores.jsonl").read_text()
                                                                  .splitlines())}
    rows = list(csv.DictReader(csv_path.open()))
    lab = {"A": "A", "B": "B", "same": "tie"}
    for dim, src in result["score_sources"].items():
        margins = [scores[(r["path_A"], r["prompt"])][src] - scores[(r["path_B"], r["prompt"])][src] for r in rows]
        labels = [lab[r[dim]] for r in rows]
        got = result["dimensions"][dim]
        assert got["exact"]["with_ties"] == pytest.approx(accuracy_with_ties(margins, labels)["with_ties"])
        assert got["videoalign"]["with_ties"] == pytest.approx(videoalign_accuracy(margins, labels)["with_ties"])
        assert got["n"] == 5 and got["n_ties"] == labels.count("tie")
    # brightness orders the VQ labels exactly; the two bright copies decode identically: a zero margin, labelled same
    vq = result["dimensions"]["VQ"]
    assert vq["exact"]["without_ties"] == 1.0 and vq["exact"]["with_ties"] == 1.0
    assert "VideoAlign" in res.output and "exact" in res.output
    # a rerun with the same --out reads the scores back instead of asking the critic again
    BrightnessCritic.calls = 0
    again = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert again.exit_code == 0 and BrightnessCritic.calls == 0
    assert json.loads((out / "results.json").read_text())["dimensions"] == result["dimensions"]


def test_rewardbench_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    _video(tmp_path / "videos/a.mp4", 50)
    _video(tmp_path / "videos/b.mp4", 90)
    ok = {"path_A": "videos/a.mp4", "path_B": "videos/b.mp4", "prompt": "p", "VQ": "A", "MQ": "B", "TA": "same",
          "Overall": "A"}
    base = ["eval", "critic", "--critic", "test-brightness", "--videos", str(tmp_path)]
    # a column missing
    no_b = _rewardbench(tmp_path, [ok], [c for c in COLUMNS if c != "path_B"])
    line = _one_line_error(runner.invoke(app, [*base, "--pairs", str(no_b)]))
    assert "lacks column(s) path_B" in line and "path_A, path_B" in line
    # a video path leaving the videos folder refuses the file, nothing is scored
    outside = _rewardbench(tmp_path, [ok, {**ok, "path_B": "../elsewhere/b.mp4"}])
    BrightnessCritic.calls = 0
    line = _one_line_error(runner.invoke(app, [*base, "--pairs", str(outside)]))
    assert "row 3" in line and "leaves the videos folder" in line and BrightnessCritic.calls == 0
    # a bad label or a missing video skips that row (reported), scores the rest, exits 1
    partial = _rewardbench(tmp_path, [ok, {**ok, "VQ": "C"}, {**ok, "path_A": "videos/none.mp4"}])
    res = runner.invoke(app, [*base, "--pairs", str(partial)], env={"COLUMNS": "250"})
    assert res.exit_code == 1 and "row 3: VQ is 'C'" in res.output and "row 4: video not found" in res.output
    # a labelled-set option with a CSV, and neither
    line = _one_line_error(runner.invoke(app, [*base, "--pairs", str(partial), "--data", str(tmp_path)]))
    assert "two different evaluations" in line
    assert "--pairs FILE.csv" in _one_line_error(runner.invoke(app, ["eval", "critic"]))


# ---- EgoPlan-Bench JSON -------------------------------------------------------------------------------------------
class ColourChooser:
    """A tiny real planner that answers from the current frame: the dominant colour names the candidate
    (red → A, green → B, blue → C, grey → D); without a frame it cannot answer."""

    def plan(self, goal, observation):
        raise AssertionError("a chooser is asked directly")

    def replan(self, goal, observation, history):
        raise AssertionError("a chooser is asked directly")

    def choose(self, question: NextStepQuestion) -> int:
        if question.frame is None:
            raise ValueError("no current observation frame")
        c = question.frame.reshape(-1, 3).mean(0)
        return 3 if c.max() - c.min() < 30 else int(np.argmax(c))


registry.register("planner", "test-colour")(ColourChooser)


def _egoplan_q(sid, source, video_id, frame, gold, **extra) -> dict:
    """One question with the fields of EgoPlan-Bench's README sample."""
    q = {"sample_id": sid, "video_source": source, "video_id": video_id, "task_goal": "store cereal",
         "question": "Considering the progress shown in the video and my current observation in the last frame, what "
                     "action should I take next in order to store cereal?",
         "choice_a": "put cereal box into cupboard", "choice_b": "take cereal bag", "choice_c": "open cupboard",
         "choice_d": "put cereal bag into cereal box", "golden_choice_idx": gold,
         "answer": {"A": "put cereal box into cupboard", "B": "take cereal bag", "C": "open cupboard",
                    "D": "put cereal bag into cereal box"}[gold],
         "current_observation_frame": frame,
         "task_progress_metadata": [{"narration_text": "take cereal bag", "start_frame": 36, "stop_frame": 105},
                                    {"narration_text": "open cupboard", "start_frame": 689, "stop_frame": 760}]}
    q.update(extra)
    if source is None:
        del q["video_source"], q["video_id"]
    return q


def _egoplan_fixture(root: Path) -> tuple[Path, Path, Path]:
    from PIL import Image

    epic = root / "EPIC-KITCHENS"
    frames = epic / "P01" / "rgb_frames" / "P01_13"
    frames.mkdir(parents=True)
    for n, colour in ((759, BLUE), (760, RED), (761, BLUE), (1200, GREEN)):  # a neighbour off by one is blue
        Image.fromarray(np.full((24, 32, 3), colour, np.uint8)).save(frames / f"frame_{n:010d}.jpg")
    ego4d = root / "Ego4D" / "v1_288p"
    vid = np.full((8, 32, 32, 3), BLUE, np.uint8)
    vid[5] = GREEN  # frame 5 (0-based) of the Ego4D video is the current observation
    vid[3] = GREY
    ego4d.mkdir(parents=True)
    write_video(ego4d / "000786a7-3f9d.mp4", vid, fps=8)
    write_video(ego4d / "ca6e9ec9-46ac.mp4", vid, fps=8)
    qs = [_egoplan_q(115, "EpicKitchens", "P01_13", 760, "A"),
          _egoplan_q(116, "EpicKitchens", "P01_13", 1200, "B"),
          _egoplan_q(117, "Ego4D", "000786a7-3f9d", 5, "B"),
          _egoplan_q(118, "Ego4D", "000786a7-3f9d", 3, "C"),  # grey → the chooser says D: a wrong answer
          # EgoPlan-Bench2's form: no video_source / video_id, the video named in sample_id, task_start_frame
          _egoplan_q("ca6e9ec9-46ac_2", None, None, 3, "D", task_start_frame=0, domain="Hobbies")]
    path = root / "EgoPlan_validation.json"
    path.write_text(json.dumps(qs, indent=4))
    return path, epic, ego4d


def test_egoplan_json_as_published_with_frames_by_path(tmp_path):
    path, epic, ego4d = _egoplan_fixture(tmp_path)
    args = ["eval", "planner", "--questions", str(path), "--planner", "test-colour", "--epic-kitchens-frames",
            str(epic), "--ego4d-videos", str(ego4d), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["format"] == "egoplan-json" and r["errors"] == [] and r["n"] == 5
    assert r["subsets"] == {"EpicKitchens": {"n": 2, "accuracy": 1.0}, "Ego4D": {"n": 2, "accuracy": 0.5},
                            "Hobbies": {"n": 1, "accuracy": 1.0}}
    assert r["accuracy"] == pytest.approx(4 / 5)  # EgoPlan's overall: right answers over all questions
    # without the frame folders the chooser has nothing to look at: every question unanswerable, counted wrong
    bare = json.loads(CliRunner().invoke(app, args[:6] + ["--json"]).output)
    assert bare["accuracy"] == 0.0 and len(bare["errors"]) == 5
    # a test file published without answers: answered, not scored; --predictions writes EgoPlan's submission form
    test = [{k: v for k, v in q.items() if k not in ("golden_choice_idx", "answer")} for q in json.loads(path.read_text())]
    (tmp_path / "EgoPlan_test.json").write_text(json.dumps(test))
    res = CliRunner().invoke(app, ["eval", "planner", "--questions", str(tmp_path / "EgoPlan_test.json"), "--planner",
                                   "test-colour", "--epic-kitchens-frames", str(epic), "--ego4d-videos", str(ego4d),
                                   "--predictions", str(tmp_path / "submission.json")])
    assert res.exit_code == 0 and "5 questions have no published answer" in res.output, res.output
    assert json.loads((tmp_path / "submission.json").read_text()) == [
        {"sample_id": 115, "label": "A"}, {"sample_id": 116, "label": "B"}, {"sample_id": 117, "label": "B"},
        {"sample_id": 118, "label": "D"}, {"sample_id": "ca6e9ec9-46ac_2", "label": "D"}]


def test_egoplan_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    path, epic, ego4d = _egoplan_fixture(tmp_path)
    # EgoPlan-IT (the training file: answer + negative_answers, no choices)
    it = [{"sample_id": 39, "video_source": "EpicKitchens", "video_id": "P07_113", "task_goal": "Cut the onion",
           "question": "…", "answer": "grab onion", "current_observation_frame": 9308, "task_progress_metadata": [],
           "negative_answers": ["open drawer", "grab knife"]}]
    (tmp_path / "EgoPlan_IT.json").write_text(json.dumps(it))
    line = _one_line_error(runner.invoke(app, ["eval", "planner", "--questions", str(tmp_path / "EgoPlan_IT.json")]))
    assert "EgoPlan-IT" in line and "EgoPlan_validation.json" in line
    # another benchmark's JSON
    (tmp_path / "other.json").write_text(json.dumps([{"id": 1, "query": "q", "response": ["a", "b"]}]))
    line = _one_line_error(runner.invoke(app, ["eval", "planner", "--questions", str(tmp_path / "other.json")]))
    assert "not an EgoPlan-Bench question file" in line and "choice_a" in line
    # a frame folder that does not exist
    line = _one_line_error(runner.invoke(app, ["eval", "planner", "--questions", str(path), "--ego4d-videos",
                                               str(tmp_path / "nope")]))
    assert "--ego4d-videos folder not found" in line
    # a video id that climbs out of the frame folder is that question's error, never a read outside
    qs = json.loads(path.read_text())
    qs[0]["video_id"] = "../../secret"
    (tmp_path / "climb.json").write_text(json.dumps(qs))
    res = runner.invoke(app, ["eval", "planner", "--questions", str(tmp_path / "climb.json"), "--planner",
                              "test-colour", "--epic-kitchens-frames", str(epic), "--ego4d-videos", str(ego4d),
                              "--json"])
    r = json.loads(res.output)
    assert r["errors"][0]["sample_id"] == 115 and "leaves --epic-kitchens-frames" in r["errors"][0]["error"]
