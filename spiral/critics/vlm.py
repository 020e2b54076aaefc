"""CriticAgent backed by an OpenAI-compatible vision-language model (critic ``vlm``; extra ``spiral[api]``).

The model sees ``frames`` frames sampled evenly from the segment (first and last included), the
sub-action with its pre/post-conditions, and the memory summary (what was done, the state before
the clip); it answers with the verdict JSON, validated as ``spiral.types.Verdict``.

Scores are asked on a grid of ``score_levels`` values in [0, 1] (21 → steps of 0.05) because the
JSON-schema converters of several servers ignore numeric bounds but do enforce ``enum``; set
``score_levels: 0`` to ask for a free number in [0, 1] instead (out-of-range values are then
caught by validation and repaired). The critic cannot read a symbolic state from pixels, so its
verdicts carry no ``observed_state``: a ``replan`` re-plans from the last accepted state.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from spiral.llm.client import ChatClient, JsonTask, make_client
from spiral.llm.prompts import load_template
from spiral.llm.structured import ChatBackend, complete_json, text_part, video_input
from spiral.memory import Memory
from spiral.options import BackendOptions, merged_model
from spiral.types import FAILURE_KINDS, SCORES, JudgeContext, Segment, SubAction, Verdict

DECISIONS: tuple[str, ...] = ("accept", "refine", "regenerate", "replan")
FEEDBACK_MAX = 300
_SECTIONS = ("system", "judge", "repair", "format")


def verdict_schema(score_levels: int = 21) -> dict[str, Any]:
    """The JSON schema of a verdict reply."""
    if score_levels > 1:
        score: dict[str, Any] = {"type": "number",
                                 "enum": [round(i / (score_levels - 1), 4) for i in range(score_levels)]}
    else:
        score = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "type": "object", "additionalProperties": False,
        "required": ["scores", "passed", "failure", "decision", "feedback"],
        "properties": {
            "scores": {"type": "object", "additionalProperties": False, "required": list(SCORES),
                       "properties": {d: score for d in SCORES}},
            "passed": {"type": "boolean"},
            "failure": {"anyOf": [{"type": "string", "enum": list(FAILURE_KINDS)}, {"type": "null"}]},
            "decision": {"type": "string", "enum": list(DECISIONS)},
            "feedback": {"type": "string", "maxLength": FEEDBACK_MAX},
        },
    }


def sample_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly over ``total`` frames, first and last included."""
    if total <= 0:
        return []
    n = max(1, min(n, total))
    if n == 1:
        return [total - 1]
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, n)})


def _sampled_fps(fps: float, idx: list[int]) -> float:
    """Frames per second of the sampled frames in the clip's own time (the video part's time axis)."""
    if len(idx) < 2:
        return float(fps)
    return float(fps) * (len(idx) - 1) / max(1, idx[-1] - idx[0])


def _to_verdict(data: Any) -> Verdict:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    scores = data.get("scores")
    if not isinstance(scores, dict):
        raise ValueError("'scores' must be an object with " + ", ".join(SCORES))
    missing = [d for d in SCORES if d not in scores]
    if missing:
        raise ValueError(f"'scores' lacks {missing}; give all of {list(SCORES)} in [0, 1]")
    return Verdict.model_validate({**data, "observed_state": None})


def _memory_text(context: JudgeContext | None, sub_action: SubAction) -> str:
    if context is None:
        return "none"
    text = context.summary(sub_action.text)
    if context.state is not None:
        text += f" State before this clip: {json.dumps(context.state, sort_keys=True, default=str)}."
    return text


class VLMCriticOptions(BackendOptions):
    """The VLM critic's own options; its transport's (``ChatClient``: base_url, model, ...) come on top."""

    frames: int = Field(4, ge=1, description="frames of the segment shown to the model")
    image_size: int | None = Field(None, ge=8, description="resize frames to this size before sending")
    send_images: bool = Field(True, description="show the model the frames (else only text)")
    score_levels: int = Field(21, ge=0, description="0: free numbers; n >= 2: scores on an n-level grid")
    prompt_version: str = Field("v1", description="prompt template version (spiral/prompts/critic_<v>.md)")
    prompt_file: str | None = Field(None, description="a prompt template file of your own")


class VLMCritic:
    """CriticAgent over an OpenAI-compatible VLM; validated verdict JSON with scores and a decision.

    The sampled frames travel as one neutral video part: the HTTP client sends them as images in
    order, a local backend (``backend_class``, see ``spiral.critics.transformers_vlm``) as a video.
    """

    name = "vlm"
    backend_class: ClassVar[type | None] = None
    own_options: ClassVar[type[BaseModel]] = VLMCriticOptions

    @classmethod
    def options_model(cls) -> type[BaseModel]:
        """The critic's options plus its transport's constructor options (spiral.options)."""
        return merged_model(f"{cls.__name__}Options", cls.own_options, cls.backend_class or ChatClient)

    def __init__(
        self,
        frames: int = 4,
        image_size: int | None = None,
        send_images: bool = True,
        score_levels: int = 21,
        prompt_version: str = "v1",
        prompt_file: str | None = None,
        **client_options: Any,
    ):
        if frames < 1:
            raise ValueError(f"critic {self.name}: frames must be >= 1, got {frames}")
        if score_levels == 1 or score_levels < 0:
            raise ValueError(f"critic {self.name}: score_levels must be 0 (free number) or >= 2, got {score_levels}")
        self.frames, self.image_size, self.send_images = frames, image_size, send_images
        self.score_levels = score_levels
        self.prompts = load_template("critic", prompt_version, prompt_file, required=_SECTIONS)
        self.client: ChatBackend = make_client(f"critic {self.name}", client_options, type(self), self.backend_class)
        self._task = JsonTask("verdict", verdict_schema(score_levels), _to_verdict, self.prompts.raw("repair"),
                              self.prompts.raw("format"))

    def check_health(self) -> None:
        """Whether the endpoint answers (``spiral.agents.ChecksHealth``); a local backend has nothing to check."""
        check = getattr(self.client, "check_health", None)
        if check is not None:
            check(f"critic {self.name}")

    @property
    def prompt_id(self) -> str:
        """Which template (file stem + content hash) produced this critic's prompts."""
        return self.prompts.id

    def messages(self, segment: Segment, sub_action: SubAction, context: JudgeContext | Memory | None = None
                 ) -> list[dict[str, Any]]:
        """The chat messages for one judgement (public so tests and users can inspect the payload)."""
        frames = segment.frames
        idx = sample_indices(len(frames), self.frames)
        action = f"{sub_action.verb}({', '.join(sub_action.objects)})"
        text = self.prompts.render(
            "judge", text=sub_action.text, action=action, pre=", ".join(sub_action.preconditions) or "none given",
            post=", ".join(sub_action.postconditions) or "none given", memory=_memory_text(JudgeContext.of(context), sub_action),
            n_frames=len(idx), frame_ids=", ".join(str(i) for i in idx), total_frames=len(frames))
        system = self.prompts.render("system", failures=", ".join(FAILURE_KINDS))
        content: Any = text
        if self.send_images:
            content = [text_part(text), video_input(frames[idx], _sampled_fps(segment.fps, idx), self.image_size)]
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def judge(self, segment: Segment, sub_action: SubAction, context: JudgeContext | Memory | None = None) -> Verdict:
        """Ask the model for a verdict on ``segment``; invalid replies are repaired, transient errors retried."""
        return complete_json(self.client, self.messages(segment, sub_action, context), self._task)
