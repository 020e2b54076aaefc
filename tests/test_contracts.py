"""The written contracts between the loop and its agents (issue 24 items 4 and 7): the goal is read once and reaches
every planner call as that one object; a refine carries the critic's feedback beside the instruction; the critic
gets a typed JudgeContext; the score names and their combination have one definition; GRPO checks its policy.

The runs use the oracle world generator (configs/run/tabletop-oracle.yaml): fast, and deterministic by seed."""

from pathlib import Path

import numpy as np
import pytest

from spiral import registry
from spiral.api import run
from spiral.critics.tabletop import TabletopCritic
from spiral.generators.world import WorldGenerator
from spiral.loop import _score
from spiral.memory import Memory
from spiral.types import SCORES, GenerationRequest, JudgeContext, Segment, TaskGoal, Verdict, combine_scores

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"
GOAL = "put the red block in the box and close it, then turn on the lamp"
LIGHT = ["output.report=false", "output.segment_videos=false"]


class StillFirst:
    """The oracle world generator, except that the first attempt at every step comes out as a still scene (the
    critic reads "nothing happened" and asks for a refine); it keeps every request it was given."""

    name = "still-first"
    requests: list[GenerationRequest] = []

    def __init__(self) -> None:
        self.world = WorldGenerator()
        StillFirst.requests = []

    def generate(self, request: GenerationRequest) -> Segment:
        StillFirst.requests.append(request)
        if request.feedback:
            return self.world.generate(request)
        frames = np.repeat(request.cond_frame[None], request.num_frames, axis=0)
        return Segment(frames=frames, fps=8.0, seed=request.seed, backend=self.name)


class RecordingCritic(TabletopCritic):
    """The tabletop critic, keeping the context of every judgement."""

    name = "recording-tabletop"
    contexts: list = []

    def judge(self, segment, sub_action, context=None) -> Verdict:
        RecordingCritic.contexts.append(context)
        return super().judge(segment, sub_action, context)


registry.register("generator", "still-first")(StillFirst)
registry.register("critic", "recording-tabletop")(RecordingCritic)


def test_the_goal_is_read_once_and_no_planner_call_reads_it_again(tmp_path, monkeypatch):
    """spiral.api reads the goal into a TaskGoal; plan, re-plans and the goal check take its reading (the symbolic
    planner's own parser is never reached)."""
    import spiral.planners.symbolic as symbolic

    def reread(text):
        raise AssertionError(f"the planner parsed {text!r} again")

    monkeypatch.setattr(symbolic, "parse_goal", reread)
    rec = run(GOAL, scene=4, out=tmp_path / "r", seed=2, config=ORACLE,
              overrides=["generator.options.failure_rate=0.5", "loop.max_replans=8", *LIGHT])
    assert rec.status == "success" and len(rec.plans) > 1  # re-plans and the final goal check ran
    assert rec.plans[0].goal == GOAL and rec.goal == GOAL
    goal = TaskGoal.read(GOAL)
    assert goal.tabletop is not None and goal.text == GOAL and TaskGoal.read("paint the wall blue").tabletop is None
    with pytest.raises(ValueError, match="paint"):
        TaskGoal.read("paint the wall blue", required=True)


def test_a_refine_carries_the_feedback_beside_the_instruction(tmp_path):
    """The request after a refine holds the step's own text and, apart, the critic's feedback; the memory's text
    and the journal's prompt hold the two composed, as before."""
    rec = run("open the box", scene=4, out=tmp_path / "r", config=ORACLE,
              overrides=["generator.name=still-first", *LIGHT])
    assert rec.status == "success"
    first, refined = StillFirst.requests[:2]
    assert rec.attempts[0].response == "refine" and rec.attempts[1].response == "accept"
    feedback = rec.attempts[0].verdict.feedback
    assert feedback and first.feedback == "" and first.prompt == first.sub_action.text == "open the box"
    assert refined.prompt == "open the box" and refined.feedback == feedback
    assert refined.prompt_text() == f"open the box. Important: {feedback}" == rec.attempts[1].prompt
    assert refined.context.endswith(f"Now: {refined.prompt_text()}.")


def test_every_critic_call_gets_a_typed_context_of_the_run(tmp_path):
    RecordingCritic.contexts = []
    rec = run(GOAL, scene=4, out=tmp_path / "r", seed=2, config=ORACLE,
              overrides=["critic.name=recording-tabletop", "generator.options.failure_rate=0.5", "loop.max_replans=8",
                         *LIGHT])
    ctx = RecordingCritic.contexts
    assert len(ctx) == len(rec.attempts) and all(isinstance(c, JudgeContext) for c in ctx)
    assert all(c.goal == GOAL and c.hints == {"scene_seed": 4} and c.anchor_frame is not None for c in ctx)
    assert [len(c.history) for c in ctx] == sorted(len(c.history) for c in ctx) and len(ctx[-1].history) > 0
    assert ctx[0].cond_frame is not None and np.array_equal(ctx[0].cond_frame, ctx[0].anchor_frame)
    # a Memory is read through JudgeContext.of; anything else is refused with a clear error
    mem = Memory.start(ctx[0].anchor_frame, ctx[0].state, hints={"scene_seed": 4})
    assert JudgeContext.of(mem).state == ctx[0].state and JudgeContext.of(None) is None
    with pytest.raises(TypeError, match="JudgeContext"):
        JudgeContext.of({"state": ctx[0].state})


def test_one_combination_of_the_scores_for_the_critic_the_loop_and_grpo():
    from spiral.train.grpo_config import GRPOConfig

    scores = dict(zip(SCORES, (1.0, 0.5, 0.0, 0.25), strict=True))
    critic = TabletopCritic()
    assert critic.combine(scores) == pytest.approx(0.4 * 1.0 + 0.2 * 0.5 + 0.2 * 0.25)  # the default weights
    assert combine_scores(scores, GRPOConfig().reward_weights) == pytest.approx(1.75 / 4)  # GRPO's default: equal
    assert combine_scores(scores, {"action": 2.0, "consistency": 2.0}) == pytest.approx((2.0 + 0.5) / 4)
    assert combine_scores(scores, {"action": 0.0}) == 0.0
    assert combine_scores({}) == 0.0  # no scores, no weights: 0, not NaN (a mutant kept NaN or 1.0 here)
    verdict = Verdict(scores=scores, passed=False, decision="refine")
    assert _score(critic, verdict) == critic.combine(scores)  # keep_best ranks by the critic's own combination

    class MeanOnly:
        def judge(self, segment, sub_action, context=None):
            raise NotImplementedError

    assert _score(MeanOnly(), verdict) == pytest.approx(1.75 / 4)  # without one, by the mean


def test_grpo_refuses_a_policy_without_what_grpo_needs(tmp_path):
    from spiral.train.grpo import GRPOConfig, GRPOTrainer

    with pytest.raises(TypeError, match="GRPOPolicy"):
        GRPOTrainer(GRPOConfig(out=str(tmp_path / "g")), policy=object(), critic=object(), progress=False)
