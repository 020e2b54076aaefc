"""PlanAgent on a local Qwen2.5-VL / Qwen2-VL through transformers (planner ``transformers-vlm``; extra ``spiral[vlm]``).

The planner ``llm`` with a different transport: same prompts (``spiral/prompts/planner_v*.md``), plan
schema with the tabletop's action shapes, domain check and repair; the first frame goes to the model
as an image; decoding is constrained to the plan schema (``constrained: true``). Options are the
``llm`` planner's (``domain``, ``validate``, ``on_invalid``, ``send_image``, ``image_size``, ``max_steps``,
``max_conditions``, ``refine``, ``history_limit``, ``prompt_version``, ``prompt_file``) plus the
backend's (``model`` — a local checkpoint folder —, ``device``, ``dtype``, ``constrained``,
``temperature``, ``max_tokens``, ``seed``, ``repair_retries``, pixel bounds; see
``spiral.llm.transformers_chat.TransformersChat``).
"""

from __future__ import annotations

from spiral.llm.transformers_chat import TransformersChat
from spiral.planners.llm import LLMPlanner


class TransformersVLMPlanner(LLMPlanner):
    """LLMPlanner whose chat backend is a local transformers VLM."""

    name = "transformers-vlm"
    backend_class = TransformersChat
