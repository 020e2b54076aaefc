"""The VLM judge (``spiral bench --judge vlm``) and the llm planner's multiple-choice answers, against a real server.

The server is llama-cpp-python's OpenAI-compatible server on loopback with the tiny random-weight GGUF built in code
(``tests/llama_tools.py``), JSON-schema constrained, so its answers are nonsense but well-formed; a fault-injecting
proxy between the judge and the server drops, delays, truncates and corrupts replies. The suite of real-looking
images is built by the test (smooth colour fields with blobs: no tabletop render, no licensed footage).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_tools  # noqa: E402

from spiral.cli import app  # noqa: E402

FAKE_KEY = "sk-spiral-judge-test-0c1d2e3f"
KEY_ENV = "SPIRAL_TEST_JUDGE_KEY"


def _photo(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A real-looking 64×64 picture: a lit colour gradient with a few soft blobs and sensor noise."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    base = np.stack([rng.uniform(40, 200) + rng.uniform(-60, 60) * x + rng.uniform(-60, 60) * y for _ in range(3)], -1)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.06, 0.18)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
        base = base * (1 - blob) + rng.uniform(0, 255, 3) * blob
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def make_real_suite(root: Path, n: int = 4, seed: int = 0) -> Path:
    """A small real-image suite: world 'real', each case a first-frame image and a goal (docs/bench.md)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    goals = ["pick up the cup and put it on the shelf", "open the drawer", "pour water into the glass, then drink it",
             "wipe the table"]
    cases = []
    (root / "frames").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_photo(rng)).save(root / "frames" / f"case-{i}.png")
        steps = 2 if "," in goals[i % len(goals)] else 1
        cases.append({"id": f"real-{i}", "goal": goals[i % len(goals)], "image": f"frames/case-{i}.png",
                      "length_class": "short", "n_steps": steps})
        if steps == 2:  # a reference plan is optional
            cases[-1]["reference_plan"] = ["pour water into the glass", "drink from the glass"]
    path = root / "real-mini.json"
    path.write_text(json.dumps({"name": "real-mini", "version": "1.0", "world": "real", "created_by": "the test",
                                "cases": cases}, indent=1))
    return path


def test_tabletop_judge_refuses_a_real_suite(tmp_path):
    suite = make_real_suite(tmp_path)
    res = CliRunner().invoke(app, ["bench", "--suite", str(suite), "--mode", "plan_only", "--out",
                                   str(tmp_path / "out"), "--quiet"])
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert "tabletop judge" in lines[0] and "'real'" in lines[0] and "--judge vlm" in lines[0]
    assert not (tmp_path / "out" / "plan_only").exists()  # nothing was run
    # the VLM judge's options are checked before anything runs, too
    res = CliRunner().invoke(app, ["bench", "--suite", str(suite), "--judge", "vlm", "--judge-set", "modle=x",
                                   "--out", str(tmp_path / "out2"), "--quiet"])
    assert res.exit_code != 0 and "did you mean 'model'" in res.output and not (tmp_path / "out2" / "closed_loop").exists()


def test_make_suite_from_a_dataset(tmp_path):
    from spiral.bench.suite import load_suite
    from spiral.data.format import check_dataset
    from spiral.video import read_video

    data = tmp_path / "data"
    res = CliRunner().invoke(app, ["data", "build", "--out", str(data), "--episodes", "3", "--failures", "1",
                                   "--seed", "5"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["bench", "make-suite", "--from-data", str(data), "--out",
                                   str(tmp_path / "s" / "from-data.json")])
    assert res.exit_code == 0, res.output
    suite = load_suite(tmp_path / "s" / "from-data.json")
    episodes = [e for e in check_dataset(data).episodes if not e.parent]  # failure clips are not tasks
    assert suite.meta["world"] == "real" and not suite.errors and len(suite.cases) == len(episodes) == 3
    for case, ep in zip(suite.cases, episodes, strict=True):
        from PIL import Image

        assert case.goal == ep.goal and case.n_steps == len(ep.steps)
        assert list(case.reference_plan) == [s.text for s in ep.steps]
        assert np.array_equal(np.asarray(Image.open(case.image)), read_video(data / ep.video)[0])
    # never overwritten; a scene seed or a bad reference plan in a real-world suite is a case error
    again = CliRunner().invoke(app, ["bench", "make-suite", "--from-data", str(data), "--out",
                                     str(tmp_path / "s" / "from-data.json")])
    assert again.exit_code != 0 and "never overwritten" in again.output
    raw = json.loads((tmp_path / "s" / "from-data.json").read_text())
    raw["cases"][0] = {**raw["cases"][0], "scene": 3}
    del raw["cases"][0]["image"]
    raw["cases"][1]["reference_plan"] = "open it"
    (tmp_path / "s" / "bad.json").write_text(json.dumps(raw))
    errs = {e.field for e in load_suite(tmp_path / "s" / "bad.json").errors}
    assert errs == {"scene", "reference_plan"}


# ---- against the loopback server (tests/conftest.py: server, key_env) --------------------------------------------
def _client(base_url: str, **kw) -> dict:
    return llama_tools.client_options(base_url, KEY_ENV, **kw)


def _flags(flag: str, prefix: str, opts: dict) -> list[str]:
    out = []
    for k, v in opts.items():
        out += [flag, f"{prefix}{k}={v if isinstance(v, str) else json.dumps(v)}"]
    return out


def test_vlm_judge_scores_a_real_image_suite_through_faults(server, key_env, tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    suite = make_real_suite(tmp_path)
    out = tmp_path / "bench"
    timeout = 5.0
    # seed 0 at rate 0.5 injects all three kinds within the first 8 requests; the run makes at least 8 (4 cases ×
    # at least one step question and one goal question), whatever the random model answers
    with llama_tools.FaultProxy(server.port, rate=0.5, seed=0, hang_s=timeout + 0.5,
                                faults=("timeout", "500", "schema_invalid")) as proxy:
        judge = _client(proxy.base_url, timeout=timeout, repair_retries=4)
        args = ["bench", "--suite", str(suite), "--mode", "plan_only", "--out", str(out), "--quiet", "--judge", "vlm",
                "--set", "planner.name=llm", "--set", "planner.options.domain=null",
                "--set", "planner.options.max_steps=2", "--set",
                "generator.name=tiny", "--set", "generator.options.steps=2", "--set", "critic.name=vlm",
                *_flags("--set", "planner.options.", _client(server.base_url)),
                *_flags("--set", "critic.options.", _client(proxy.base_url)),  # the judge's model (never called:
                # plan_only) — so the bench must warn that judge and critic are one model
                *_flags("--judge-set", "", judge)]
        res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["cases"]) == 4 and all(c["status"] == "ok" for c in results["cases"])
    for c in results["cases"]:
        m = c["metrics"]
        for k in ("task_completion", "step_success", "order_correctness", "hallucinated_motion", "judge_confidence"):
            assert m[k] is not None and 0 <= m[k] <= 1, (c["case_id"], k, m)
        assert m["judge_errors"] == 0 and c["judge"] == "vlm"
        assert c["judge_identity"]["model"] == "tiny-llama" and c["judge_identity"]["prompt"].startswith("judge_v1@")
        steps = [a for a in c["judge_answers"] if "step" in a]
        assert len(steps) == c["executed_steps"] >= 1 and len(c["judge_answers"]) == len(steps) + 1
        assert m["step_success"] == pytest.approx(np.mean([a["happened"] and a["completed"] for a in steps]))
        assert m["hallucinated_motion"] == pytest.approx(np.mean([a["other_motion"] for a in steps]))
        assert m["faithful_step_success"] is None  # a tabletop-only metric: absent, not made up
    texts = [p.get("text", "") for b in proxy.stats.bodies for m in b.get("messages", [])
             if isinstance(m.get("content"), list) for p in m["content"]]
    assert any("these steps: pour water into the glass; drink from the glass" in t for t in texts)
    # the faults were injected and handled (retried or repaired), none turned into a judgement
    f = proxy.stats.faults
    assert f["timeout"] >= 1 and f["500"] >= 1 and f["schema_invalid"] >= 1, proxy.stats.sequence
    # the judge and the critic are the same model: the bench says so, in the output and in results.json
    assert any("not independent of the loop" in w for w in results["bench"]["warnings"])
    assert "not independent" in res.output
    assert FAKE_KEY not in res.output and FAKE_KEY not in (out / "results.json").read_text()


def test_malformed_answers_become_judge_errors_not_verdicts(server, key_env, tmp_path):
    from spiral.bench.judge_vlm import VLMJudge, step_action_quality
    from spiral.bench.metrics import RunView

    rng = np.random.default_rng(3)
    anchor = _photo(rng)
    segs = [np.stack([anchor] * 5), np.stack([_photo(rng)] * 5)]
    view = RunView(root=tmp_path, goal="open the drawer", scene=None, anchor=anchor, segments=segs,
                   steps=[{"text": "reach the drawer"}, {"text": "pull the drawer open"}], record={}, attempts=[])
    # every reply through this proxy is valid JSON of the wrong shape
    with llama_tools.FaultProxy(server.port, rate=1.0, faults=("schema_invalid",)) as proxy:
        judge = VLMJudge.from_options(_client(proxy.base_url, repair_retries=1))
        aq = step_action_quality(view, judge)
    assert aq["judge_errors"] == 3  # two steps and the goal
    assert aq["step_success"] is None and aq["task_completion"] is None and aq["hallucinated_motion"] is None
    assert aq["step_success_by_index"] == [None, None]  # neither a pass nor a fail
    assert all("gave no valid" in a["error"] for a in aq["_answers"])
    assert proxy.stats.faults["schema_invalid"] == 6  # one repair each
    # straight to the server the same questions are answered
    ok = step_action_quality(view, VLMJudge.from_options(_client(server.base_url, repair_retries=4)))
    assert ok["judge_errors"] == 0 and ok["step_success"] is not None and len(ok["step_success_by_index"]) == 2


def test_llm_planner_answers_egoplan_questions_with_set_options(server, key_env, tmp_path):
    from test_eval_public import _egoplan_fixture

    path, epic, ego4d = _egoplan_fixture(tmp_path)
    with llama_tools.FaultProxy(server.port, rate=0.0) as proxy:
        sets = _flags("--set", "planner.options.", _client(proxy.base_url, image_size=32))
        res = CliRunner().invoke(app, ["eval", "planner", "--questions", str(path), "--planner", "llm",
                                       "--epic-kitchens-frames", str(epic), "--ego4d-videos", str(ego4d), "--json",
                                       *sets])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["planner"] == "llm" and r["n"] == 5 and r["errors"] == []  # every answer a valid letter
    bodies = [b for b in proxy.stats.bodies if "messages" in b]
    assert len(bodies) >= 5 and all(b["model"] == "tiny-llama" for b in bodies)  # --set reached the planner
    first = bodies[0]["messages"][1]["content"]
    text = " ".join(p.get("text", "") for p in first if p["type"] == "text")
    assert "A. put cereal box into cupboard" in text and "store cereal" in text and "- open cupboard" in text
    assert sum(p["type"] == "image_url" for p in first) == 1  # the current observation frame went with it
    fmt = json.dumps(bodies[0].get("response_format", {}))
    assert '"A", "B", "C", "D"' in fmt  # the answer is schema-constrained to a letter
