"""OpenAI-compatible planner ``llm`` and critic ``vlm``: unit checks, then a real llama.cpp server on loopback.

The server tests start llama-cpp-python's OpenAI-compatible server once per module with a tiny
random-weight GGUF built in code (see ``tests/llama_tools.py``), JSON-schema constrained so the
random model still writes valid plans and verdicts, and run ``spiral run`` end to end, directly
and through a fault-injecting proxy. They need ``make llama-cpp`` (cached sdist + wheel); without
it they are skipped locally and fail under CI (tests/conftest.py).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_tools  # noqa: E402

from spiral.llm.client import EndpointError, OutputError, parse_json_text  # noqa: E402
from spiral.llm.prompts import load_template, parse_template  # noqa: E402
from spiral.types import Attempt, Observation, Plan, Segment, SubAction, Verdict  # noqa: E402

FAKE_KEY = "sk-spiral-test-5f0c2e9a7b1d4c3e"
KEY_ENV = "SPIRAL_TEST_LLM_KEY"
GOAL = "put the red block in the box"
# the end-to-end runs use the oracle world generator (the embedded default runs the tiny video model)
ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"


def _scene(seed: int = 0) -> tuple[np.ndarray, dict]:
    from spiral.api import scene_frame

    return scene_frame(seed, (64, 64))


# -- without a server ------------------------------------------------------------------------------


def test_missing_extra_names_the_install(monkeypatch):
    from spiral.planners.llm import LLMPlanner

    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"pip install 'spiral-video\[api\]'"):
        LLMPlanner()


def test_unreachable_endpoint_is_one_clear_line():
    from spiral.planners.llm import LLMPlanner

    url = f"http://127.0.0.1:{llama_tools.free_port()}/v1"
    p = LLMPlanner(base_url=url, max_retries=1, backoff_base=0.01, timeout=2)
    frame, state = _scene()
    with pytest.raises(EndpointError) as e:
        p.plan(GOAL, Observation(frame=frame, state=state))
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "fix:" in msg and "base_url" in msg
    assert p.client.stats["retries"] == 1


def test_options_are_checked():
    from spiral.critics.vlm import VLMCritic
    from spiral.planners.llm import LLMPlanner

    with pytest.raises(ValueError, match="did you mean 'send_image'"):
        LLMPlanner(send_imag=False)
    with pytest.raises(ValueError, match="names an environment variable"):
        LLMPlanner(api_key_env="sk-abc-123")
    with pytest.raises(ValueError, match="use_json_schema"):
        VLMCritic(use_json_schema="maybe")
    with pytest.raises(ValueError, match="domain"):
        LLMPlanner(domain="kitchen")


def test_parse_json_text_never_evaluates():
    assert parse_json_text('Sure!\n```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert parse_json_text('prefix {"a": {"b": null}} suffix {"c": 1}') == {"a": {"b": None}}
    for bad in ("__import__('os').system('true')", "{'a': 1}", '{"a": 1', ""):
        with pytest.raises(ValueError):
            parse_json_text(bad)


def test_prompt_templates_ship_and_are_versioned(tmp_path):
    t = load_template("planner", "v1")
    assert t.id.startswith("planner_v1@")
    assert "$goal" not in t.render("plan", goal="g", state="s", image_note="")
    with pytest.raises(ValueError, match=r"\$goal"):
        t.render("plan", state="s", image_note="")
    with pytest.raises(FileNotFoundError, match="planner_v1"):
        load_template("planner", "v99")
    custom = tmp_path / "mine.md"
    custom.write_text("=== system ===\nhi $$5\n=== judge ===\n$text\n=== repair ===\n$error\n=== format ===\n$schema\n")
    assert parse_template(custom.read_text(), "mine").render("system") == "hi $5"


def test_tabletop_schema_and_domain_check():
    from spiral.planners.llm import _tabletop_issues, plan_schema

    schema = plan_schema("tabletop", 4, 3)
    variants = schema["properties"]["steps"]["items"]["anyOf"]
    assert {v["properties"]["verb"]["enum"][0] for v in variants} == {"move", "open", "close", "switch_on",
                                                                         "switch_off"}
    _, state = _scene()
    bad = Plan(goal=GOAL, steps=[SubAction(text="x", verb="fly", objects=["lamp"]),
                                 SubAction(text="y", verb="open", objects=["box"], preconditions=["at(box)"])])
    issues = _tabletop_issues(bad, state, GOAL, simulate=True)
    assert any("unknown verb 'fly'" in i for i in issues) and any("at/1" in i for i in issues)
    # well-formed but not executable: moving into a closed box (soft: sent back for repair, kept with on_invalid=keep)
    closed = {**state, "box_open": False}
    soft = _tabletop_issues(Plan(goal=GOAL, steps=[SubAction(text="m", verb="move", objects=["red_block", "box"])]),
                            closed, GOAL, simulate=True)
    assert soft and soft[0].startswith("simulate: ") and "open(box)" in soft[0]


def test_sample_indices():
    from spiral.critics.vlm import sample_indices

    assert sample_indices(9, 4) == [0, 3, 5, 8]
    assert sample_indices(3, 10) == [0, 1, 2]
    assert sample_indices(9, 1) == [8]


# -- against a real llama.cpp server (tests/conftest.py: server, key_env) ---------------------------
def _client_opts(base_url: str, **kw) -> dict:
    return llama_tools.client_options(base_url, KEY_ENV, **{"max_tokens": 1024, **kw})


def _planner_opts(base_url: str, **kw) -> dict:
    return {"validate": "syntax", "max_steps": 3, "max_conditions": 2, **_client_opts(base_url, **kw)}


def _images(body: dict) -> list[np.ndarray]:
    """The images of a chat request body's messages, decoded."""
    from PIL import Image

    urls = [part["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
            for part in m["content"] if part.get("type") == "image_url"]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB")) for u in urls]


def _text(body: dict) -> str:
    return "\n".join(m["content"] if isinstance(m["content"], str) else
                     "\n".join(p["text"] for p in m["content"] if p.get("type") == "text") for m in body["messages"])


def test_planner_against_server(server, key_env):
    from spiral.planners.llm import LLMPlanner, plan_schema
    from spiral.world.domain import Action

    frame, state = _scene()
    with llama_tools.FaultProxy(server.port, rate=0.0) as proxy:  # passes everything through; keeps the bodies
        p = LLMPlanner(**_planner_opts(proxy.base_url))
        plan = p.plan(GOAL, Observation(frame=frame, state=state))
    # what the planner asked: the goal and the observed state in the text, the first frame as the image, the schema
    bodies = proxy.stats.bodies
    assert bodies and all(GOAL in _text(b) for b in bodies)
    assert all(any(np.array_equal(im, frame) for im in _images(b)) for b in bodies)
    assert "red_block" in _text(bodies[-1]) and "box" in _text(bodies[-1])
    assert bodies[-1]["response_format"]["schema"] == plan_schema("tabletop", 3, 2)
    assert 1 <= len(plan.steps) <= 3 and plan.goal == GOAL
    for s in plan.steps:  # nonsense from random weights, but executable-shaped thanks to the schema
        Action(s.verb, tuple(s.objects))
    # llama-cpp-python's server rejects OpenAI's json_schema response_format; the client stepped down once
    assert p.client.mode == "json_object" and p.client.stats["fallbacks"] == 1
    assert bodies[0]["response_format"]["type"] == "json_schema" and bodies[-1]["response_format"]["type"] == "json_object"
    p = LLMPlanner(**_planner_opts(server.base_url))
    hist = [Attempt(step=0, attempt=0, prompt=plan.steps[0].text, seed=1, decision="replan",
                    verdict=Verdict(scores={"action": 0.0}, passed=False, decision="replan", failure="missing_action",
                                    feedback="nothing moved"))]
    again = p.replan(GOAL, Observation(frame=frame, state=state), hist)
    assert all(s.id >= 1 for s in again.steps)
    text = p.refine(plan.steps[0], "the block must end inside the box").text
    assert isinstance(text, str) and text


def test_wrong_key_names_the_variable_not_the_key(server, monkeypatch):
    from spiral.planners.llm import LLMPlanner

    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-0000")
    p = LLMPlanner(**_planner_opts(server.base_url))
    with pytest.raises(EndpointError, match=f"rejected the API key.*{KEY_ENV}") as e:
        p.plan(GOAL, Observation(state=_scene()[1]))
    assert "sk-wrong" not in str(e.value) and p.client.stats["retries"] == 0


def test_unconstrained_output_gets_bounded_repair(server, key_env):
    from spiral.planners.llm import LLMPlanner

    p = LLMPlanner(**_planner_opts(server.base_url, use_json_schema=False, max_tokens=48, repair_retries=1))
    frame, state = _scene()
    with pytest.raises(OutputError, match="gave no valid plan after 1 repair"):
        p.plan(GOAL, Observation(frame=frame, state=state))
    assert p.client.stats["requests"] == 2 and p.client.stats["repairs"] == 1


def test_critic_sends_frames_and_returns_verdict(server, key_env):
    from spiral.critics.vlm import VLMCritic
    from spiral.world.domain import State
    from spiral.world.render import render_action

    frame, state = _scene()
    st = State.from_dict(state)
    from spiral.world.domain import applicable_actions

    action = applicable_actions(st)[0]
    frames = render_action(st, action, size=64, frames=9).frames
    seg = Segment(frames=frames)
    sub = SubAction(text=action.text(), verb=action.verb, objects=list(action.args))
    with llama_tools.FaultProxy(server.port, rate=0.0) as proxy:
        c = VLMCritic(frames=3, **_client_opts(proxy.base_url))
        v = c.judge(seg, sub, None)
    assert isinstance(v, Verdict) and all(0 <= x <= 1 for x in v.scores.values())
    assert set(v.scores) == {"action", "preservation", "continuity", "consistency"}
    parts = proxy.stats.bodies[-1]["messages"][1]["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 3
    from PIL import Image

    last = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[-1].split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(last, frames[-1])  # the critic really sends the clip's last frame


E2E_SETS = [
    "planner.name=llm", "critic.name=vlm", "generator.name=world",
    "generator.options.read_state=memory", "generator.options.failure_rate=0.0",
    "loop.max_total_generations=4", "loop.max_replans=1", "loop.max_refines_per_step=1",
]


def _sets(prefix: str, opts: dict) -> list[str]:
    return [f"{prefix}.options.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in opts.items()]


def test_spiral_run_end_to_end(server, key_env, tmp_path):
    from typer.testing import CliRunner

    from spiral.cli import app

    # simulate + keep: the random plan fails the domain simulation, is sent back for repair, and is kept
    # (tagged unverified) when the repairs run out; the world generator renders an impossible step as a still scene
    planner = _planner_opts(server.base_url, validate="simulate", on_invalid="keep", repair_retries=1)
    sets = E2E_SETS + _sets("planner", planner) + _sets("critic", _client_opts(server.base_url, frames=2))
    out = tmp_path / "run"
    args = ["run", GOAL, "--scene", "0", "--config", str(ORACLE), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code in (0, 1, 3), res.output
    record = json.loads((out / "record.json").read_text())
    assert record["status"] in ("success", "completed_unverified", "budget_exhausted")
    assert (out / "final.mp4").stat().st_size > 0 and record["counts"]["generations"] >= 1
    assert record["plans"] and record["plans"][0]["steps"]
    from spiral.planners.llm import _tabletop_issues

    p0 = Plan.model_validate(record["plans"][0])
    state0 = json.loads((out / "meta.json").read_text())["initial_state"]
    assert "[unverified:" in p0.rationale or not _tabletop_issues(p0, state0, GOAL, simulate=True)


def test_runs_complete_through_fault_proxy(server, key_env, tmp_path, caplog, capfd):
    import spiral.api as api

    caplog.set_level(logging.DEBUG)
    timeout = 5.0  # normal requests take < 1.5 s here; an injected hang outlasts the client's timeout
    with llama_tools.FaultProxy(server.port, rate=0.3, seed=0, hang_s=timeout + 0.5) as proxy:
        url = proxy.base_url
        sets = E2E_SETS + _sets("planner", _planner_opts(url, timeout=timeout, repair_retries=3)) + _sets(
            "critic", _client_opts(url, frames=2, timeout=timeout, repair_retries=3))
        records = [api.run(GOAL, scene=s, out=tmp_path / f"run{s}", config=ORACLE, overrides=sets) for s in (0, 1, 2)]
    for r in records:
        assert r.status in ("success", "completed_unverified", "budget_exhausted") and r.counts["generations"] >= 1
    f = proxy.stats.faults
    msgs = [r.getMessage() for r in caplog.records if r.name == "spiral.llm"]
    retries = {k: sum(1 for m in msgs if f": {k}" in m and "; retry " in m)
               for k in ("timeout", "HTTP 429", "HTTP 500", "connection error")}
    repairs = sum(1 for m in msgs if "; repair " in m)
    assert all(n >= 1 for n in f.values()) and proxy.stats.injected >= 6, ",".join(proxy.stats.sequence)
    # each injected transient fault was retried (a slow machine may add genuine timeouts, never fewer retries)
    assert retries["HTTP 429"] == f["429"] and retries["HTTP 500"] == f["500"], (retries, f)
    assert retries["timeout"] >= f["timeout"] and retries["connection error"] >= f["truncated"], (retries, f)
    assert repairs >= f["schema_invalid"]
    # a retried request is the original again, byte for byte (messages with their images, schema, settings); a
    # repair request is the original's messages plus the bad reply and the error, with the same schema
    ex = proxy.stats.exchanges
    retried = [i for i, (kind, _) in enumerate(ex) if kind in ("timeout", "429", "500", "truncated")]
    assert retried and max(retried) < len(ex) - 1
    for i in retried:
        assert ex[i + 1][1] == ex[i][1], f"request {i + 1} retries request {i} ({ex[i][0]}) with another body"
    repaired = [i for i, (kind, _) in enumerate(ex) if kind == "schema_invalid" and i + 1 < len(ex)]
    for i in repaired:
        orig, nxt = ex[i][1], ex[i + 1][1]
        if nxt["messages"][:len(orig["messages"])] == orig["messages"]:  # else the next call is another agent's
            assert len(nxt["messages"]) == len(orig["messages"]) + 2 and nxt["response_format"] == orig["response_format"]
    assert any(ex[i + 1][1]["messages"][:len(ex[i][1]["messages"])] == ex[i][1]["messages"] for i in repaired)
    assert sum(len(_images(b)) for _, b in ex) > 0
    # the key reached the server (it requires it) but never our logs, output or run directories
    out, err = capfd.readouterr()
    assert FAKE_KEY not in caplog.text and FAKE_KEY not in out and FAKE_KEY not in err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert KEY_ENV in (tmp_path / "run0" / "config.yaml").read_text()
