"""A small OpenAI-compatible chat client for agents that must return validated JSON.

Why not call ``openai`` directly from each agent: the planner and the critic need the same
four behaviours, and they are easy to get subtly wrong:

- **structured output** with a fallback ladder: ``response_format`` ``json_schema`` (OpenAI,
  vLLM, llama.cpp's llama-server) → ``json_object`` + ``schema`` (llama-cpp-python's server)
  → plain instructions + parsing; a 400/422 on a mode moves down the ladder once per client;
- **repair**: output that is not JSON, or fails validation, is sent back with the error for a
  bounded number of retries (model output is parsed with ``json``, never evaluated);
- **transient errors** (timeouts, dropped connections, malformed bodies, 429, 5xx) are retried
  with bounded exponential backoff and jitter (``Retry-After`` is honoured up to the cap);
- **secrets**: the API key is read from the environment variable *named* by ``api_key_env``
  at connect time; it is never stored in options, repr, logs, errors or run directories.

Everything else (unreachable endpoint, wrong key, unknown model) ends in one clear line that
names ``base_url`` and the fix.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import re
import time
from collections import Counter
from typing import Any, TypeVar

import numpy as np

from spiral.llm.structured import (  # noqa: F401 - re-exported: this module was their first home
    JsonTask,
    LLMError,
    OutputError,
    check_options,
    complete_json,
    init_params,
    parse_json_text,
    short_error,
    with_format,
)

log = logging.getLogger("spiral.llm")
T = TypeVar("T")

MODES: tuple[str, ...] = ("json_schema", "json_object", "off")
_INSTALL = "pip install 'spiral-video[api]'"


class EndpointError(LLMError):
    """The server could not be reached, refused the request, or kept failing past the retry budget."""


def require_openai() -> Any:
    """Import the ``openai`` client or explain which extra installs it."""
    try:
        import openai
    except ImportError as e:
        raise ImportError(f"the OpenAI-compatible agents need the openai client: {_INSTALL}") from e
    return openai


def encode_png(frame: np.ndarray, size: int | None = None) -> str:
    """An H×W×3 uint8 frame as a ``data:image/png;base64,…`` URL (optionally resized to size×size)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGB")
    if size and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_part(frame: np.ndarray, size: int | None = None) -> dict[str, Any]:
    """One ``image_url`` content part of a chat message."""
    return {"type": "image_url", "image_url": {"url": encode_png(frame, size)}}


def to_openai_content(content: Any) -> Any:
    """Neutral content parts (``spiral.llm.structured``) as OpenAI parts: images → PNG, a video → one PNG per frame."""
    if not isinstance(content, list):
        return content
    out: list[Any] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            out.append(image_part(part["image"], part.get("size")))
        elif kind == "video":
            out.extend(image_part(f, part.get("size")) for f in part["video"])
        else:
            out.append(part)
    return out


class _Transient(Exception):
    """A failed request worth retrying after a pause."""

    def __init__(self, cause: str, retry_after: float | None = None, detail: str = ""):
        super().__init__(cause)
        self.cause, self.retry_after, self.detail = cause, retry_after, detail


def _modes(use_json_schema: bool | str) -> list[str]:
    if use_json_schema is True or use_json_schema in ("true", "json_schema"):
        return ["json_schema"]
    if use_json_schema is False or use_json_schema in ("false", "off", "none"):
        return ["off"]
    if use_json_schema == "json_object":
        return ["json_object"]
    if use_json_schema == "auto":
        return list(MODES)
    raise ValueError(f"use_json_schema must be auto, true, false, json_schema, json_object or off; got {use_json_schema!r}")


def _rejects_format(e: Any, mode: str) -> bool:
    """Did the server refuse this structured-output mode (rather than fail for another reason)?

    400/422 in a structured mode count; so does a 5xx whose message names ``response_format``,
    since some servers (llama-cpp-python's) report request validation errors as HTTP 500.
    """
    if mode == "off":
        return False
    code = getattr(e, "status_code", 0)
    if code in (400, 422):
        return True
    return code >= 500 and "response_format" in str(getattr(e, "message", "") or e)


class ChatClient:
    """OpenAI-compatible chat completions that return validated JSON (see the module docstring)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "default",
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 4,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        use_json_schema: bool | str = "auto",
        repair_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        seed: int | None = 0,
        extra_body: dict[str, Any] | None = None,
    ):
        require_openai()
        if max_retries < 0 or repair_retries < 0:
            raise ValueError("max_retries and repair_retries must be >= 0")
        if timeout <= 0 or backoff_base < 0 or backoff_max < 0:
            raise ValueError("timeout must be > 0 and backoff times >= 0")
        if api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
            raise ValueError(
                "api_key_env names an environment variable (e.g. OPENAI_API_KEY), not the key itself; "
                "put the key in that variable"
            )
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key_env = model, api_key_env
        self.where, self.label = self.base_url, f"the model at {self.base_url} ({model})"
        self.timeout, self.max_retries, self.repair_retries = float(timeout), int(max_retries), int(repair_retries)
        self.temperature, self.max_tokens, self.seed = temperature, int(max_tokens), seed
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self.extra_body = dict(extra_body or {})
        self._ladder = _modes(use_json_schema)
        self._jitter = random.Random(0 if seed is None else seed)
        self._client: Any = None
        self.stats: Counter[str] = Counter()
        self.retry_causes: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def mode(self) -> str:
        """The structured-output mode in use now (the ladder's current rung)."""
        return self._ladder[0]

    # -- connection -------------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._client is None:
            openai = require_openai()
            key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
            # Local servers need no key, but the client insists on a non-empty one.
            self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "EMPTY", timeout=self.timeout,
                                         max_retries=0)
        return self._client

    def _unreachable(self, tr: _Transient) -> EndpointError:
        tries = self.max_retries + 1
        if tr.cause.startswith("HTTP"):
            return EndpointError(f"the server at {self.base_url} kept failing after {tries} tries ({tr.cause}: "
                                 f"{tr.detail}); fix: check the server's log, or raise max_retries/timeout")
        return EndpointError(
            f"cannot get an answer from the OpenAI-compatible server at {self.base_url} after {tries} tries "
            f"({tr.cause}); fix: start the server (e.g. `python -m llama_cpp.server --model M.gguf` or "
            f"`vllm serve MODEL`) or set the agent's base_url option"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        d = min(self.backoff_max, self.backoff_base * (2**attempt)) * self._jitter.uniform(0.5, 1.0)
        if retry_after is not None:
            d = max(d, min(self.backoff_max, retry_after))
        return d

    def _classify(self, e: Exception) -> _Transient | None:
        """Map an exception from the HTTP call to a retryable cause, or None when it is not transient."""
        openai = require_openai()
        if isinstance(e, openai.APITimeoutError):
            return _Transient("timeout")
        if isinstance(e, openai.APIConnectionError):
            return _Transient(f"connection error: {short_error(e.__cause__ or e, 120)}")
        if isinstance(e, openai.APIStatusError):
            code = e.status_code
            if code == 429 or code >= 500 or code in (408, 409):
                ra = None
                try:
                    ra = float(e.response.headers.get("retry-after", ""))
                except (TypeError, ValueError):
                    pass
                return _Transient(f"HTTP {code}", ra, short_error(e, 200))
            return None
        if isinstance(e, (openai.APIResponseValidationError, json.JSONDecodeError, UnicodeDecodeError)):
            return _Transient("malformed response body")
        return None

    def _fatal(self, e: Exception) -> LLMError:
        openai = require_openai()
        if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
            who = f"the environment variable {self.api_key_env}" if self.api_key_env else "api_key_env"
            return EndpointError(f"the server at {self.base_url} rejected the API key (HTTP {e.status_code}); "
                                 f"fix: put a valid key in {who}")
        if isinstance(e, openai.NotFoundError):
            return EndpointError(f"the server at {self.base_url} has no model {self.model!r} or no chat endpoint "
                                 f"(HTTP 404){self._known_models()}; fix: set the agent's model/base_url options")
        if isinstance(e, openai.APIStatusError):
            return EndpointError(f"the server at {self.base_url} refused the request (HTTP {e.status_code}: "
                                 f"{short_error(e, 200)})")
        return EndpointError(f"request to {self.base_url} failed: {type(e).__name__}: {short_error(e, 200)}")

    def _known_models(self) -> str:
        try:
            ids = [m.id for m in self._connect().models.list().data][:8]
        except Exception:  # noqa: BLE001 - this is only a hint
            return ""
        return f"; it serves: {', '.join(ids)}" if ids else ""

    # -- health ---------------------------------------------------------------------------------

    def check_health(self, owner: str = "agent", timeout: float = 5.0, tries: int = 2) -> None:
        """One cheap request (``GET {base_url}/models``) with a short timeout, before anything heavy loads: an endpoint
        that does not answer fails in seconds with one line naming ``base_url`` and the fix. Transient failures
        (connection refused, timeout, 5xx) get ``tries`` attempts a short pause apart; a rejected key is fatal; a
        server without the models route (404) answered, so it passes; a model it does not list is a warning (some
        servers serve any name)."""
        openai = require_openai()
        client = self._connect().with_options(timeout=min(self.timeout, timeout), max_retries=0)
        for attempt in range(max(1, tries)):
            try:
                served = [m.id for m in client.models.list().data]
                break
            except openai.NotFoundError:
                return
            except Exception as e:  # noqa: BLE001 - classified: transient ones retried, the rest named
                tr = self._classify(e)
                if tr is None:
                    raise EndpointError(f"{owner}: {self._fatal(e)}") from None
                if attempt + 1 >= max(1, tries):
                    raise EndpointError(
                        f"{owner}: the OpenAI-compatible server at {self.base_url} does not answer ({tr.cause}); fix: "
                        "start it (e.g. `vllm serve MODEL` or `python -m llama_cpp.server --model M.gguf`) or set "
                        "the agent's base_url option to where it runs") from None
                time.sleep(min(1.0, self._delay(attempt, tr.retry_after)))
        if served and self.model not in served:
            log.warning("%s: %s lists %s but not the configured model %r; requests may fail (set the model option)",
                        owner, self.base_url, ", ".join(served[:8]), self.model)

    # -- requests ---------------------------------------------------------------------------------

    def request(self, messages: list[dict[str, Any]], task: JsonTask[Any]) -> tuple[str, str | None]:
        """One completion (retrying transient failures, stepping down the structured-output ladder)."""
        openai = require_openai()
        messages = [{**m, "content": to_openai_content(m.get("content"))} for m in messages]
        attempt = 0
        while True:
            mode = self.mode
            kwargs: dict[str, Any] = {"model": self.model, "messages": self._with_format(messages, task, mode),
                                      "temperature": self.temperature, "max_tokens": self.max_tokens}
            if self.seed is not None:
                kwargs["seed"] = self.seed
            if mode == "json_schema":
                kwargs["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": task.name, "schema": task.schema, "strict": True}}
            elif mode == "json_object":
                kwargs["response_format"] = {"type": "json_object", "schema": task.schema}
            if self.extra_body:
                kwargs["extra_body"] = self.extra_body
            self.stats["requests"] += 1
            try:
                resp = self._connect().chat.completions.create(**kwargs)
                return self._content(resp)
            except openai.APIStatusError as e:
                if not _rejects_format(e, mode):
                    tr = self._classify(e)
                    if tr is None:
                        raise self._fatal(e) from None
                    attempt = self._pause(attempt, tr)
                    continue
                if len(self._ladder) > 1:
                    log.info("%s rejected response_format mode %s (HTTP %s); using %s from now on",
                             self.base_url, mode, e.status_code, self._ladder[1])
                    self._ladder.pop(0)
                    self.stats["fallbacks"] += 1
                    continue
                raise self._fatal(e) from None
            except Exception as e:  # noqa: BLE001 - classified below, re-raised when not transient
                tr = e if isinstance(e, _Transient) else self._classify(e)
                if tr is None:
                    raise self._fatal(e) from None
                attempt = self._pause(attempt, tr)

    def _pause(self, attempt: int, tr: _Transient) -> int:
        """Sleep before retry ``attempt + 1`` (or give up with one clear line); returns the new count."""
        if attempt >= self.max_retries:
            raise self._unreachable(tr) from None
        delay = self._delay(attempt, tr.retry_after)
        self.stats["retries"] += 1
        self.retry_causes[tr.cause.split(":")[0]] += 1
        log.warning("%s: %s; retry %d/%d in %.2fs", self.base_url, tr.cause, attempt + 1, self.max_retries, delay)
        time.sleep(delay)
        return attempt + 1

    @staticmethod
    def _content(resp: Any) -> tuple[str, str | None]:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise _Transient("malformed response (no choices)")
        msg = getattr(choices[0], "message", None)
        content = getattr(msg, "content", None)
        if not isinstance(content, str):
            raise _Transient("malformed response (no message content)")
        return content, getattr(choices[0], "finish_reason", None)

    @staticmethod
    def _with_format(messages: list[dict[str, Any]], task: JsonTask[Any], mode: str) -> list[dict[str, Any]]:
        """Spell the schema out in the system message unless the server enforces it."""
        return messages if mode == "json_schema" else with_format(messages, task)

    def complete_json(self, messages: list[dict[str, Any]], task: JsonTask[T]) -> T:
        """Ask for JSON matching ``task.schema``; parse, validate, and repair (bounded) until it is valid."""
        return complete_json(self, messages, task)


def make_client(owner: str, options: dict[str, Any], agent_class: type | None = None,
                backend_class: type | None = None) -> Any:
    """A chat backend (``ChatClient`` unless told) from an agent's leftover config options; typos are errors."""
    backend_class = backend_class or ChatClient
    known = init_params(backend_class) + (init_params(agent_class) if agent_class is not None else [])
    check_options(owner, options, known)
    return backend_class(**options)
