"""Local transformers VLM planner and critic (``transformers-vlm``) on a tiny random Qwen2.5-VL built in code.

The checkpoint (``tests/qwen_tools.py``) is saved to a temp folder and loaded by path, through the
real transformers code paths: chat template, hand-made vision patches (no torchvision), generate
with the JSON-schema constraint (llguidance). Random weights write nonsense, but schema-valid nonsense.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qwen_tools  # noqa: E402

from spiral.llm.qwen_vision import VisionSpec, patchify_image, patchify_video, smart_resize  # noqa: E402
from spiral.llm.structured import LLMError, OutputError  # noqa: E402
from spiral.types import Observation, Plan, Segment, SubAction, Verdict  # noqa: E402

GOAL = "put the red block in the box"
pytest.importorskip("transformers")


def _scene(seed: int = 0) -> tuple[np.ndarray, dict]:
    from spiral.api import scene_frame

    return scene_frame(seed, (64, 64))


def _clip(seed: int = 0) -> tuple[Segment, SubAction]:
    from spiral.world.domain import State, applicable_actions
    from spiral.world.render import render_action

    st = State.from_dict(_scene(seed)[1])
    action = applicable_actions(st)[0]
    seg = Segment(frames=render_action(st, action, size=64, frames=9).frames, fps=8.0)
    return seg, SubAction(text=action.text(), verb=action.verb, objects=list(action.args))


# -- without a model -------------------------------------------------------------------------------


def test_patchify_image_matches_the_official_pil_processor():
    # transformers' PIL image processor needs no torchvision (its processor class and video processor do)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    for h, w, lo, hi in [(64, 64, 56 * 56, 28 * 28 * 1280), (100, 60, 56 * 56, 56 * 56 * 4)]:
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rows, grid = patchify_image(frame, VisionSpec(min_pixels=lo, max_pixels=hi))
        ref = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi)(images=[frame], return_tensors="np")
        assert list(ref["image_grid_thw"][0]) == list(grid)
        assert rows.shape == ref["pixel_values"].shape and np.abs(rows - ref["pixel_values"]).max() < 1e-5


def test_patchify_video_matches_the_layout_formula():
    p, tp, m = 2, 2, 2
    spec = VisionSpec(patch_size=p, temporal_patch_size=tp, merge_size=m, image_mean=(0.1, 0.2, 0.3),
                      image_std=(0.5, 0.25, 0.2), min_pixels=1, max_pixels=10_000)
    frames = np.random.default_rng(1).integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)  # 3 frames: last one repeats
    assert smart_resize(8, 12, p * m, 1, 10_000) == (8, 12)
    rows, (gt, gh, gw) = patchify_video(frames, spec)
    assert (gt, gh, gw) == (2, 4, 6) and rows.shape == (gt * gh * gw, 3 * tp * p * p)
    assert spec.tokens((gt, gh, gw)) == gt * gh * gw // (m * m)
    norm = (frames / 255.0 - np.array(spec.image_mean)) / np.array(spec.image_std)  # T×H×W×C
    for t in range(gt):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for mh in range(m):
                    for mw in range(m):
                        row = ((t * (gh // m) + bh) * (gw // m) + bw) * m * m + mh * m + mw
                        for c in range(3):
                            for tau in range(tp):
                                for ph in range(p):
                                    for pw in range(p):
                                        col = ((c * tp + tau) * p + ph) * p + pw
                                        f = min(t * tp + tau, len(frames) - 1)
                                        y, x = (bh * m + mh) * p + ph, (bw * m + mw) * p + pw
                                        assert abs(rows[row, col] - norm[f, y, x, c]) < 1e-5


# -- with the tiny checkpoint ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: one thread is several times faster
    folder = qwen_tools.build_tiny_qwen25vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl")
    yield folder
    from spiral.llm.transformers_chat import clear_model_cache

    clear_model_cache()
    torch.set_num_threads(threads)


def _planner(folder: Path, **kw):
    from spiral.planners.transformers_vlm import TransformersVLMPlanner

    opts = {"model": str(folder), "validate": "syntax", "max_steps": 2, "max_conditions": 1, "max_tokens": 600}
    return TransformersVLMPlanner(**{**opts, **kw})


def _critic(folder: Path, **kw):
    from spiral.critics.transformers_vlm import TransformersVLMCritic

    return TransformersVLMCritic(**{"model": str(folder), "max_tokens": 600, **kw})


def test_planner_call_writes_a_schema_valid_plan(qwen):
    from spiral.world.domain import Action

    p = _planner(qwen)
    assert p.client.vlm.chat_template == qwen_tools.TEMPLATE  # the checkpoint's own template
    frame, state = _scene()
    plan = p.plan(GOAL, Observation(frame=frame, state=state))
    assert isinstance(plan, Plan) and 1 <= len(plan.steps) <= 2
    for s in plan.steps:  # random weights, but the constraint only lets executable shapes through
        Action(s.verb, tuple(s.objects))
    assert p.client.stats["requests"] == 1 and p.client.stats["repairs"] == 0
    assert p.client.stats["constraint_errors"] == 0
    inputs = p.client.encode(p._messages(Observation(frame=frame, state=state), "x"))
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] and "pixel_values_videos" not in inputs
    assert int((inputs["input_ids"] == p.client.vlm.model.config.image_token_id).sum()) == 4


def test_critic_call_sees_the_clip_as_a_video(qwen):
    seg, sub = _clip()
    c = _critic(qwen)
    v = c.judge(seg, sub)
    assert isinstance(v, Verdict) and set(v.scores) == {"action", "preservation", "continuity", "consistency"}
    assert c.client.stats["requests"] == 1
    inputs = c.client.encode(c.messages(seg, sub))
    assert inputs["video_grid_thw"].tolist() == [[4, 4, 4]] and "pixel_values" not in inputs  # 8 frames, 2 per patch
    assert int((inputs["input_ids"] == c.client.vlm.model.config.video_token_id).sum()) == 16
    assert float(inputs["second_per_grid_ts"][0]) == pytest.approx(2 / (8.0 * 7 / 8))  # 8 of 9 frames at 8 fps


def test_frames_reach_the_model(qwen):
    import torch

    c = _critic(qwen)
    seg_a, sub = _clip(0)
    seg_b = Segment(frames=seg_a.frames[::-1].copy(), fps=seg_a.fps)  # the same frames, played backwards
    la, la2 = c.client.next_token_logits(c.messages(seg_a, sub)), c.client.next_token_logits(c.messages(seg_a, sub))
    lb = c.client.next_token_logits(c.messages(seg_b, sub))
    assert torch.equal(la, la2) and not torch.allclose(la, lb)
    p = _planner(qwen)
    frame_a, state = _scene(0)
    frame_b = _scene(1)[0]
    pa = p.client.next_token_logits(p._messages(Observation(frame=frame_a, state=state), GOAL))
    pb = p.client.next_token_logits(p._messages(Observation(frame=frame_b, state=state), GOAL))
    assert not torch.allclose(pa, pb)


def test_unconstrained_output_is_parsed_and_repaired(qwen):
    p = _planner(qwen, constrained=False, max_tokens=24, repair_retries=1)
    with pytest.raises(OutputError, match="gave no valid plan after 1 repair"):
        p.plan(GOAL, Observation(state=_scene()[1]))
    assert p.client.stats["requests"] == 2 and p.client.stats["repairs"] == 1


def _schemas() -> dict:
    """Each schema the local agents constrain to, with the check the agent runs on the parsed reply."""
    from spiral.critics.vlm import _to_verdict, verdict_schema
    from spiral.planners.llm import REFINE_SCHEMA, _tabletop_issues, _to_plan, plan_schema

    def tabletop(data):
        plan = _to_plan(data, GOAL, 0)
        assert 1 <= len(plan.steps) <= 3 and not _tabletop_issues(plan, None, GOAL, simulate=False)

    def refine(data):
        assert set(data) == {"text"} and 1 <= len(data["text"]) <= 240

    return {"plan_tabletop": (plan_schema("tabletop", 3, 2), tabletop),
            "plan_free": (plan_schema(None, 2, 2), lambda d: _to_plan(d, GOAL, 0)),
            "verdict": (verdict_schema(21), _to_verdict), "verdict_free_scores": (verdict_schema(0), _to_verdict),
            "refine": (REFINE_SCHEMA, refine)}


def test_constraint_keeps_any_scores_inside_our_schemas(qwen):
    # the processor as generate drives it (prompt, then one appended token per call), fed random scores
    import torch
    from transformers import AutoTokenizer

    from spiral.llm.constrained import SchemaLogitsProcessor, grammar_tokenizer, schema_grammar

    tok = AutoTokenizer.from_pretrained(qwen)
    eos = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    vocab = len(tok) + 13  # an output layer padded past the tokenizer: padding ids must never be picked
    gtok = grammar_tokenizer(tok, vocab, eos)
    gen = torch.Generator().manual_seed(0)
    for name, (schema, check) in _schemas().items():
        grammar = schema_grammar(schema, name)
        for _ in range(6):
            proc = SchemaLogitsProcessor(gtok, grammar, vocab, eos, name)
            ids = torch.tensor([tok("<|im_start|>assistant\n")["input_ids"]])
            start = ids.shape[1]
            while ids.shape[1] < 1500:
                pick = int(proc(ids, torch.randn(1, vocab, generator=gen)).argmax())
                if pick in eos:
                    break
                assert pick < len(tok)
                ids = torch.cat([ids, torch.tensor([[pick]])], dim=1)
            assert pick in eos and proc.error is None, name
            check(json.loads(tok.decode(ids[0, start:], skip_special_tokens=True)))


def test_schema_the_engine_cannot_enforce_is_one_clear_line(qwen):
    from transformers import AutoTokenizer

    from spiral.llm.constrained import SchemaLogitsProcessor, grammar_tokenizer, schema_grammar

    tok = AutoTokenizer.from_pretrained(qwen)
    gtok = grammar_tokenizer(tok, len(tok), [tok.eos_token_id])
    for schema in ({"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "pattern": "(?<=x)a"}}},
                   {"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "format": "zip"}}}):
        with pytest.raises(LLMError) as e:
            SchemaLogitsProcessor(gtok, schema_grammar(schema, "plan"), len(tok), [tok.eos_token_id], "plan")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("the plan schema cannot be") and "constrained: false" in msg


def test_sampling_under_the_constraint_is_seeded(qwen):
    seg, sub = _clip()
    verdicts = []
    for seed in (0, 0, 1, 2, 3):
        c = _critic(qwen, temperature=1.0, seed=seed)
        verdicts.append(c.judge(seg, sub).model_dump())
        assert c.client.stats["repairs"] == 0 and c.client.stats["constraint_errors"] == 0
    assert verdicts[0] == verdicts[1]  # the same seed and request count: the same reply
    assert len({json.dumps(v, sort_keys=True) for v in verdicts[1:]}) >= 2  # it does sample


def test_spiral_run_end_to_end(qwen, tmp_path):
    import spiral.api as api
    from spiral.config import BackendConfig, Config, LoopConfig

    cfg = Config(
        planner=BackendConfig(name="transformers-vlm", options={
            "model": str(qwen), "validate": "simulate", "on_invalid": "keep", "repair_retries": 1, "max_steps": 2,
            "max_conditions": 1, "refine": "template", "max_tokens": 600}),
        generator=BackendConfig(name="world", options={"read_state": "memory", "failure_rate": 0.0}),
        critic=BackendConfig(name="transformers-vlm", options={"model": str(qwen), "frames": 4, "max_tokens": 600}),
        loop=LoopConfig(max_total_generations=3, max_replans=1, max_refines_per_step=1))
    record = api.run(GOAL, scene=0, config=cfg, mode="closed_loop", out=tmp_path / "run")
    assert record.status in ("success", "completed_unverified", "budget_exhausted") and record.counts["generations"] >= 1
    assert record.plans and all(isinstance(p, Plan) for p in record.plans)
    assert (tmp_path / "run" / "final.mp4").stat().st_size > 0
    for line in (tmp_path / "run" / "attempts.jsonl").read_text().splitlines():
        v = json.loads(line).get("verdict")
        assert v is None or Verdict.model_validate(v)


def test_wrong_path_is_one_clear_line(tmp_path):
    from typer.testing import CliRunner

    from spiral.cli import app

    missing = tmp_path / "no-such-model"
    res = CliRunner().invoke(app, ["run", GOAL, "--scene", "0", "--out", str(tmp_path / "run"), "--set",
                                   "planner.name=transformers-vlm", "--set", f"planner.options.model={missing}"])
    assert res.exit_code != 0
    msg = " ".join(res.output.split())
    assert f"{missing}: no such folder" in msg and "fix: set the agent's model option" in msg
    from spiral.planners.transformers_vlm import TransformersVLMPlanner

    with pytest.raises(LLMError) as e:
        TransformersVLMPlanner(model=str(tmp_path))  # a folder, but not a checkpoint
    assert "\n" not in str(e.value) and "no config.json" in str(e.value) and "fix:" in str(e.value)
    with pytest.raises(LLMError, match="need the model option"):
        TransformersVLMPlanner()
    with pytest.raises(LLMError, match="not found in the local Hugging Face cache .downloads are off.; fix:"):
        TransformersVLMPlanner(model="Qwen/Qwen2.5-VL-3B-Instruct")  # an id is only looked up in the cache


def test_options_are_checked(qwen):
    with pytest.raises(ValueError, match="did you mean 'constrained'"):
        _planner(qwen, constrianed=False)


def test_missing_extra_names_the_pip_extra(monkeypatch):
    from spiral.critics.transformers_vlm import TransformersVLMCritic

    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(ImportError, match=r"needs llguidance: pip install 'spiral-video\[vlm\]'"):
        TransformersVLMCritic(model="/models/qwen")  # before any model is loaded
    with pytest.raises(LLMError, match="no such folder"):  # llguidance is needed only to constrain
        TransformersVLMCritic(model="/models/qwen", constrained=False)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'spiral-video\[vlm\]'"):
        TransformersVLMCritic(model="/models/qwen")


def test_example_config_builds_with_a_local_checkpoint(qwen):
    from spiral.api import build_agents
    from spiral.config import load_config

    path = Path(__file__).resolve().parent.parent / "configs" / "run" / "tabletop-qwen25vl-local.yaml"
    cfg = load_config(path, [f"planner.options.model={qwen}", f"critic.options.model={qwen}",
                             "planner.options.device=cpu", "critic.options.device=cpu"])
    agents = build_agents(cfg)
    assert agents.planner.name == agents.critic.name == "transformers-vlm"
    assert agents.planner.client.vlm is agents.critic.client.vlm  # one model in memory for both agents


def test_planner_answers_a_next_step_question_with_a_constrained_letter(qwen):
    """The ChoosesNextStep capability on a local VLM: the current frame goes in as an image, a letter comes out."""
    from spiral.agents import ChoosesNextStep
    from spiral.types import NextStepQuestion

    p = _planner(qwen, max_tokens=64)
    frame, _ = _scene()
    q = NextStepQuestion(id="1", goal="store cereal", choices=["open cupboard", "take cereal bag", "wash hands",
                                                              "close cupboard"], progress=["take cereal bag"],
                         frame=frame)
    assert isinstance(p, ChoosesNextStep)
    assert p.choose(q) in range(4) and p.client.stats["repairs"] == 0 and p.client.stats["constraint_errors"] == 0
    inputs = p.client.encode([{"role": "user", "content": [{"type": "text", "text": "x"},
                                                            {"type": "image", "image": frame, "size": None}]}])
    assert "pixel_values" in inputs


def test_bench_judge_on_a_local_vlm_answers_every_question(qwen):
    """--judge transformers-vlm: the step's frames go in as one video, the answers come out schema-valid."""
    from spiral.bench.judge import StepJudge, make_judge
    from spiral.bench.judge_vlm import GoalAnswer, StepAnswer
    from spiral.world.domain import State, applicable_actions
    from spiral.world.render import render_action

    frame, state = _scene()
    st = State.from_dict(state)
    action = applicable_actions(st)[0]
    frames = render_action(st, action, size=64, frames=9).frames
    judge = make_judge("transformers-vlm", None, {"model": str(qwen), "max_tokens": 200, "frames": 4})
    assert isinstance(judge, StepJudge) and judge.identity["model"] == str(qwen)
    a = judge.judge_step(frames, action.text(), GOAL, [])
    g = judge.judge_goal(frames[-1], GOAL, ["open the box", "put the red block in the box"])
    assert isinstance(a, StepAnswer) and isinstance(g, GoalAnswer) and 0 <= a.confidence <= 1
    assert not (a.completed and not a.happened)
    assert judge.client.stats["constraint_errors"] == 0
