"""The VLM judge of ActVideoGen-Bench (``spiral bench --judge vlm``): action quality of videos no recogniser reads.

The tabletop judge reads a symbolic state off each boundary frame; real footage has no such state. This judge asks a
vision-language model, through the same OpenAI-compatible client as the ``vlm`` critic (``spiral.llm``: structured
output, bounded repair, retries), one question per executed step — did the sub-action happen, did it complete,
did anything else move or appear, did the order hold, how sure are you — and one about the goal on the last frame.
Answers are validated JSON (schema-constrained where the server supports it; an answer that says "completed" but
not "happened" is sent back for repair). An answer that stays invalid after the repairs, or a call that keeps
failing, is a **judge error**: that step is left out of every mean, never counted as a pass or a fail.

Aggregation into the tabletop judge's action-quality metrics (same names, docs/bench.md):

- step success: mean over answered steps of [happened ∧ completed]; ``step_success_by_index`` per step (None where
  the judge erred);
- task completion: [the goal question's "achieved"] (None when it erred);
- order correctness: mean over answered steps of [order_held];
- hallucinated motion: mean over answered steps of [other_motion];
- judge confidence: mean confidence of the answers; judge errors: how many questions erred.

The judge is independent of the loop's critic by construction (its own prompt, ``spiral/prompts/judge_v1.md``);
the bench warns when both are the same model (:func:`same_model_warning`).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from spiral.llm.client import ChatClient, JsonTask, make_client
from spiral.llm.prompts import load_template
from spiral.llm.structured import ChatBackend, LLMError, complete_json, image_input, text_part, video_input
from spiral.options import BackendOptions, merged_model

log = logging.getLogger("spiral.bench")
_SECTIONS = ("system", "step", "goal", "repair", "format")
NOTE_MAX = 200
STEP_FLAGS = ("happened", "completed", "other_motion", "order_held")


class StepAnswer(BaseModel):
    """The judge's answer about one executed step."""

    model_config = ConfigDict(extra="forbid")

    happened: StrictBool = Field(description="the asked action started in the clip")
    completed: StrictBool = Field(description="it finished by the clip's last frame")
    other_motion: StrictBool = Field(description="something else moved, appeared or changed (hallucinated motion)")
    order_held: StrictBool = Field(description="the clip is consistent with the steps before it")
    confidence: float = Field(ge=0, le=1, description="how sure the judge is, 0..1")
    note: str = Field("", max_length=NOTE_MAX, description="what the judge saw, in a few words")

    @model_validator(mode="after")
    def _consistent(self) -> StepAnswer:
        if self.completed and not self.happened:
            raise ValueError("'completed' is true but 'happened' is false: an action that did not happen cannot "
                             "complete")
        return self


class GoalAnswer(BaseModel):
    """The judge's answer about the goal, read from the video's last frame."""

    model_config = ConfigDict(extra="forbid")

    achieved: StrictBool = Field(description="the last frame shows the task done")
    confidence: float = Field(ge=0, le=1, description="how sure the judge is, 0..1")
    note: str = Field("", max_length=NOTE_MAX, description="what the judge saw, in a few words")


def _confidence(levels: int) -> dict[str, Any]:
    # several servers' schema converters ignore numeric bounds but enforce enum (see spiral.critics.vlm)
    return {"type": "number", "enum": [round(i / (levels - 1), 4) for i in range(levels)]}


def step_schema(levels: int = 11) -> dict[str, Any]:
    """The JSON schema of a step answer."""
    props: dict[str, Any] = {k: {"type": "boolean"} for k in STEP_FLAGS}
    props.update(confidence=_confidence(levels), note={"type": "string", "maxLength": NOTE_MAX})
    return {"type": "object", "additionalProperties": False, "required": [*STEP_FLAGS, "confidence", "note"],
            "properties": props}


def goal_schema(levels: int = 11) -> dict[str, Any]:
    """The JSON schema of a goal answer."""
    return {"type": "object", "additionalProperties": False, "required": ["achieved", "confidence", "note"],
            "properties": {"achieved": {"type": "boolean"}, "confidence": _confidence(levels),
                           "note": {"type": "string", "maxLength": NOTE_MAX}}}


def _validator(model: type[BaseModel]) -> Any:
    def validate(data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return model.model_validate(data)

    return validate


class VLMJudgeOptions(BackendOptions):
    """The VLM judge's own options; its transport's (``ChatClient``: base_url, model, api_key_env, ...) come on top."""

    frames: int = Field(6, ge=2, description="frames of each step's clip shown to the model, first and last included")
    image_size: int | None = Field(None, ge=8, description="resize frames to this size before sending")
    confidence_levels: int = Field(11, ge=2, description="confidence is asked on this many levels in [0, 1]")
    prompt_version: str = Field("v1", description="prompt template version (spiral/prompts/judge_<v>.md)")
    prompt_file: str | None = Field(None, description="a judge prompt template file of your own")


class VLMJudge:
    """A step judge over an OpenAI-compatible vision-language model (``--judge vlm``)."""

    name = "vlm"
    backend_class: ClassVar[type | None] = None

    @classmethod
    def options_model(cls) -> type[BaseModel]:
        """The judge's options plus its transport's constructor options (spiral.options)."""
        return merged_model(f"{cls.__name__}Options", VLMJudgeOptions, cls.backend_class or ChatClient)

    def __init__(self, frames: int = 6, image_size: int | None = None, confidence_levels: int = 11,
                 prompt_version: str = "v1", prompt_file: str | None = None, **client_options: Any):
        self.frames, self.image_size = frames, image_size
        self.prompts = load_template("judge", prompt_version, prompt_file, required=_SECTIONS)
        self.client: ChatBackend = make_client("judge vlm", client_options, type(self), self.backend_class)
        self._step = JsonTask("step answer", step_schema(confidence_levels), _validator(StepAnswer),
                              self.prompts.raw("repair"), self.prompts.raw("format"))
        self._goal = JsonTask("goal answer", goal_schema(confidence_levels), _validator(GoalAnswer),
                              self.prompts.raw("repair"), self.prompts.raw("format"))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> VLMJudge:
        """Build from config options, checked against :meth:`options_model` first (one line per problem)."""
        from spiral.options import validate_options

        return cls(**validate_options("judge", cls.name, cls, dict(options)))

    @property
    def identity(self) -> dict[str, Any]:
        """Which model and prompt produced the judgements (recorded per case)."""
        model = getattr(self.client, "model", None)
        return {"judge": self.name, "model": model if isinstance(model, str) else self.client.where,
                "base_url": getattr(self.client, "base_url", None), "prompt": self.prompts.id}

    def _messages(self, text: str, visual: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.prompts.render("system")},
                {"role": "user", "content": [text_part(text), visual]}]

    def judge_step(self, frames: np.ndarray, step: str, goal: str, done: list[str], fps: float = 8.0) -> StepAnswer:
        """Ask about one executed step, shown as ``frames`` frames of its clip (played at ``fps``)."""
        from spiral.critics.vlm import sample_indices

        idx = sample_indices(len(frames), self.frames)
        sampled_fps = fps * (len(idx) - 1) / max(1, idx[-1] - idx[0]) if len(idx) > 1 else fps
        text = self.prompts.render("step", goal=goal, step=step, n_frames=len(idx),
                                   done="; ".join(done) if done else "none (this is the first step)")
        return complete_json(self.client, self._messages(text, video_input(frames[idx], sampled_fps, self.image_size)),
                             self._step)

    def judge_goal(self, last_frame: np.ndarray, goal: str, reference: list[str] | None = None) -> GoalAnswer:
        """Ask whether the video's last frame shows the goal done (``reference``: the steps a person took, when the
        suite case gives a reference plan)."""
        ref = ("A person did this task in these steps: " + "; ".join(reference) + ".") if reference else ""
        text = self.prompts.render("goal", goal=goal, reference=ref)
        return complete_json(self.client, self._messages(text, image_input(last_frame, self.image_size)), self._goal)


class TransformersVLMJudge(VLMJudge):
    """The VLM judge on a local Qwen2.5-VL / Qwen2-VL through transformers (``--judge transformers-vlm``; extra
    ``spiral[vlm]``): same prompts, schemas and validation; the step's frames reach the model as one video and
    decoding is constrained to the answer schema. ``model`` is a local checkpoint folder."""

    name = "transformers-vlm"

    @classmethod
    def options_model(cls) -> type[BaseModel]:
        from spiral.llm.transformers_chat import TransformersChat

        return merged_model(f"{cls.__name__}Options", VLMJudgeOptions, TransformersChat)

    def __init__(self, **options: Any):
        from spiral.llm.transformers_chat import TransformersChat

        self.backend_class = TransformersChat
        super().__init__(**options)


def step_action_quality(view: Any, judge: Any, reference_plan: list[str] | None = None) -> dict[str, Any]:
    """The action-quality metrics of one run from a step judge's answers (module docstring); judge errors are
    recorded per question and left out of the means."""
    answers: list[dict[str, Any]] = []
    ok, order, halluc, conf = [], [], [], []
    by_index: list[float | None] = []
    done: list[str] = []
    for k, (seg, step) in enumerate(zip(view.segments, view.steps, strict=True)):
        text = str(step.get("text") or step.get("verb") or f"step {k + 1}")
        try:
            a = judge.judge_step(seg, text, view.goal, list(done))
        except (LLMError, ValueError) as e:  # after the repairs and retries: a judge error, neither pass nor fail
            log.warning("judge: step %d of %s: %s", k + 1, view.root, e)
            answers.append({"step": k, "error": str(e).splitlines()[0][:300]})
            by_index.append(None)
        else:
            answers.append({"step": k, **a.model_dump()})
            ok.append(float(a.happened and a.completed))
            by_index.append(ok[-1])
            order.append(float(a.order_held))
            halluc.append(float(a.other_motion))
            conf.append(a.confidence)
        done.append(text)
    last = view.segments[-1][-1] if view.segments else view.anchor
    tc = None
    try:
        g = judge.judge_goal(last, view.goal, list(reference_plan or []))
    except (LLMError, ValueError) as e:
        log.warning("judge: goal of %s: %s", view.root, e)
        answers.append({"goal": True, "error": str(e).splitlines()[0][:300]})
    else:
        answers.append({"goal": True, **g.model_dump()})
        tc = float(g.achieved)
        conf.append(g.confidence)

    def mean(v: list[float]) -> float | None:
        return float(np.mean(v)) if v else None

    return {
        "task_completion": tc,
        "step_success": mean(ok),
        "step_success_by_index": by_index,
        "order_correctness": mean(order),
        "hallucinated_motion": mean(halluc),
        "judge_confidence": mean(conf),
        "judge_errors": sum(1 for a in answers if "error" in a),
        "unreadable_frames": 0,
        "_answers": answers,
    }


def same_model_warning(judge_options: dict[str, Any], critic: Any) -> str | None:
    """A warning when the bench's VLM judge would be the loop's critic model (then it is not independent)."""
    if critic is None or critic.name not in ("vlm", "transformers-vlm"):
        return None
    c, j = critic.options, judge_options
    same_model = (c.get("model", "default") == j.get("model", "default")
                  and str(c.get("base_url", "")).rstrip("/") == str(j.get("base_url", "")).rstrip("/"))
    if not same_model:
        return None
    same_prompt = bool(c.get("prompt_file")) and c.get("prompt_file") == j.get("prompt_file")
    what = "the same model and prompt" if same_prompt else "the same model (with the judge's own prompt)"
    return (f"the VLM judge and the loop's critic are {what} ({j.get('model', 'default')} at "
            f"{j.get('base_url') or 'the default endpoint'}): the benchmark is not independent of the loop; give the "
            "judge another model (--judge-set model=... --judge-set base_url=...)")
