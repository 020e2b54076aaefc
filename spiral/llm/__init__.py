"""Shared home of the chat agents: validated-JSON calls, chat backends, prompt templates, image encoding.

The planner (``spiral.planners.llm``) and the critic (``spiral.critics.vlm``) build neutral chat
messages and ask a chat backend for validated JSON (``spiral.llm.structured``: parsing, validation,
bounded repair). Backends: :class:`ChatClient` talks to any OpenAI-compatible server (vLLM,
llama.cpp, Ollama, hosted APIs) with retries and structured output;
``spiral.llm.transformers_chat.TransformersChat`` runs a local Qwen2-VL / Qwen2.5-VL with
JSON-schema-constrained decoding through llguidance (``spiral.llm.constrained``; planner and critic
``transformers-vlm``).
"""

from spiral.llm.client import (
    ChatClient,
    EndpointError,
    encode_png,
    image_part,
)
from spiral.llm.prompts import PromptTemplate, load_template
from spiral.llm.structured import (
    ChatBackend,
    JsonTask,
    LLMError,
    OutputError,
    complete_json,
    image_input,
    text_part,
    video_input,
)

__all__ = [
    "ChatBackend",
    "ChatClient",
    "EndpointError",
    "JsonTask",
    "LLMError",
    "OutputError",
    "PromptTemplate",
    "complete_json",
    "encode_png",
    "image_input",
    "image_part",
    "load_template",
    "text_part",
    "video_input",
]
