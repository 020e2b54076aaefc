"""Shared home of the OpenAI-compatible agents: the chat client, prompt templates, image encoding.

The planner (``spiral.planners.llm``) and the critic (``spiral.critics.vlm``) both talk to
any server that speaks the OpenAI chat-completions API (vLLM, llama.cpp, Ollama, hosted APIs)
through :class:`ChatClient`, which owns retries, structured output and repair.
"""

from spiral.llm.client import (
    ChatClient,
    EndpointError,
    LLMError,
    OutputError,
    encode_png,
    image_part,
)
from spiral.llm.prompts import PromptTemplate, load_template

__all__ = [
    "ChatClient",
    "EndpointError",
    "LLMError",
    "OutputError",
    "PromptTemplate",
    "encode_png",
    "image_part",
    "load_template",
]
