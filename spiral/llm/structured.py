"""What every chat backend shares: validated-JSON calls with bounded repair, independent of the transport.

An agent (``spiral.planners.llm``, ``spiral.critics.vlm`` and their local-model subclasses) builds
*neutral* chat messages and a :class:`JsonTask`; :func:`complete_json` asks a :class:`ChatBackend`
for a reply, parses it with ``json`` (never evaluated), validates it with the task's pydantic-backed
validator and, when that fails, sends the reply and the error back for a bounded number of repairs.

Backends differ only in how one request travels: :class:`spiral.llm.client.ChatClient` posts to an
OpenAI-compatible server; :class:`spiral.llm.transformers_chat.TransformersChat` runs a local
transformers VLM. Message content parts are neutral so that each backend can give the model what it
understands best:

- ``{"type": "text", "text": str}``;
- ``{"type": "image", "image": H×W×3 uint8, "size": int | None}``: the HTTP client sends a PNG, a local
  Qwen-VL gets vision patches;
- ``{"type": "video", "video": T×H×W×3 uint8, "size": int | None, "fps": float}``: the HTTP client sends
  one PNG per frame (the OpenAI API has no video part), a local Qwen-VL gets one video input.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from string import Template
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

log = logging.getLogger("spiral.llm")
T = TypeVar("T")


class LLMError(ValueError):
    """An agent's model call failed for a reason the user can fix (a ValueError, so the CLI prints one line)."""


class OutputError(LLMError):
    """The model's reply stayed unparseable or invalid after the repair retries."""


@dataclass
class JsonTask(Generic[T]):
    """What one structured call asks for: a schema, a validator, and the prompts around them.

    ``validate`` turns parsed JSON into the agent's type or raises ``ValueError`` (pydantic's
    ValidationError is one); ``repair_prompt`` holds ``$error``; ``format_prompt`` holds
    ``$schema`` and is appended to the system message when the backend does not enforce the schema.
    """

    name: str
    schema: dict[str, Any]
    validate: Callable[[Any], T]
    repair_prompt: str
    format_prompt: str


@runtime_checkable
class ChatBackend(Protocol):
    """One transport for chat requests; :func:`complete_json` adds parsing, validation and repair on top.

    ``where`` names the endpoint or model folder in logs; ``label`` names the model in errors.
    """

    where: str
    label: str
    repair_retries: int
    max_tokens: int
    stats: Counter[str]

    def request(self, messages: list[dict[str, Any]], task: JsonTask[Any]) -> tuple[str, str | None]:
        """One reply's text and finish reason (``"length"`` when cut off at ``max_tokens``)."""
        ...


# -- neutral content parts -------------------------------------------------------------------------


def text_part(text: str) -> dict[str, Any]:
    """A text content part."""
    return {"type": "text", "text": text}


def image_input(frame: np.ndarray, size: int | None = None) -> dict[str, Any]:
    """An image content part holding the frame itself (each backend encodes it its own way)."""
    return {"type": "image", "image": np.asarray(frame, dtype=np.uint8), "size": size}


def video_input(frames: np.ndarray, fps: float, size: int | None = None) -> dict[str, Any]:
    """A video content part: frames in order, sampled at ``fps`` frames per second of the clip's time."""
    return {"type": "video", "video": np.asarray(frames, dtype=np.uint8), "fps": float(fps), "size": size}


# -- parsing and errors ------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_json_text(text: str) -> Any:
    """The first JSON object in a reply (code fences and surrounding prose are tolerated)."""
    if text is None:
        raise ValueError("the reply has no text content")
    m = _FENCE.search(text)
    body = m.group(1) if m else text
    start = body.find("{")
    if start < 0:
        raise ValueError("the reply contains no JSON object (no '{' found)")
    # strict=False lets raw control characters through inside strings (a common glitch of models and
    # grammar samplers); the text is still only parsed as JSON.
    try:
        obj, _ = json.JSONDecoder(strict=False).raw_decode(body[start:])
    except RecursionError:  # found by fuzzing: '{"a": [[[[...' thousands deep
        raise ValueError("the reply's JSON is nested too deeply") from None
    return obj


def short_error(e: BaseException, limit: int = 600) -> str:
    """A compact, single-paragraph description of a parse or validation error for the repair prompt."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            parts = [f"{'.'.join(str(x) for x in err['loc']) or '(root)'}: {err['msg']}" for err in errors()[:8]]
            text = "; ".join(parts)
        except Exception:  # noqa: BLE001 - fall back to str() for foreign error types
            text = str(e)
    else:
        text = str(e)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def with_format(messages: list[dict[str, Any]], task: JsonTask[Any]) -> list[dict[str, Any]]:
    """The messages with the schema spelled out in the system message (for backends that do not enforce it)."""
    note = Template(task.format_prompt).substitute(schema=json.dumps(task.schema, separators=(",", ":")))
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = out[0]["content"].rstrip() + "\n\n" + note
    else:
        out.insert(0, {"role": "system", "content": note})
    return out


def complete_json(backend: ChatBackend, messages: list[dict[str, Any]], task: JsonTask[T]) -> T:
    """Ask ``backend`` for JSON matching ``task.schema``; parse, validate, and repair (bounded) until it is valid."""
    msgs = list(messages)
    err = ""
    for k in range(backend.repair_retries + 1):
        text, finish = backend.request(msgs, task)
        try:
            return task.validate(parse_json_text(text))
        except ValueError as e:
            err = short_error(e)
            if finish == "length":
                err = f"the reply was cut off at max_tokens={backend.max_tokens}; be shorter. {err}"
        if k == backend.repair_retries:
            break
        backend.stats["repairs"] += 1
        log.warning("%s: invalid %s reply (%s); repair %d/%d", backend.where, task.name, err, k + 1,
                    backend.repair_retries)
        msgs = msgs + [{"role": "assistant", "content": text[:4000]},
                       {"role": "user", "content": Template(task.repair_prompt).substitute(error=err)}]
    raise OutputError(f"{backend.label} gave no valid {task.name} after {backend.repair_retries} repair(s): {err}")


def check_options(owner: str, options: dict[str, Any], known: list[str]) -> None:
    """A typo'd option is an error naming the close one (configs are hand-written)."""
    import difflib

    for k in options:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{owner}: unknown option {k!r}{hint}; options: {', '.join(sorted(known))}")


def init_params(*classes: type) -> list[str]:
    """The keyword parameters of the ``__init__`` of these classes and of their bases."""
    import inspect

    names: list[str] = []
    for cls in classes:
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                    names.append(p.name)
    return names
