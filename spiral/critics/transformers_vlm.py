"""CriticAgent on a local Qwen2.5-VL / Qwen2-VL through transformers (critic ``transformers-vlm``; extra ``spiral[vlm]``).

The critic ``vlm`` with a different transport: same prompts, verdict schema, validation and repair;
the ``frames`` frames sampled from the segment reach the model as one *video* (Qwen-VL's temporal
patches and time-aware positions), not as separate images; decoding is constrained to the verdict
schema. It defaults to 8 sampled frames (4 temporal patches of 2); ``frames`` changes it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from spiral.critics.vlm import VLMCritic, VLMCriticOptions
from spiral.llm.transformers_chat import TransformersChat


class TransformersVLMCriticOptions(VLMCriticOptions):
    """The VLM critic's options with this critic's default of 8 frames (4 temporal patches of 2)."""

    frames: int = Field(8, ge=1, description="frames of the segment shown to the model as one video")


class TransformersVLMCritic(VLMCritic):
    """VLMCritic whose chat backend is a local transformers VLM, shown the clip as a video."""

    name = "transformers-vlm"
    backend_class = TransformersChat
    own_options = TransformersVLMCriticOptions

    def __init__(self, frames: int = 8, **options: Any):
        super().__init__(frames=frames, **options)
