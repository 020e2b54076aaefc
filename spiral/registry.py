"""Backend registry: names in configs → classes. Third-party backends register through
the ``spiral.backends`` entry point group, named ``<kind>.<name>`` (e.g. ``generator.mygen``).
A backend's options are checked against its typed options model (``spiral.options``) before it is built.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

KINDS = ("planner", "generator", "critic")
# Built-in backends are imported lazily by module path, so optional extras stay optional.
_BUILTIN: dict[str, dict[str, str]] = {
    "planner": {"symbolic": "spiral.planners.symbolic:SymbolicPlanner", "llm": "spiral.planners.llm:LLMPlanner",
                "transformers-vlm": "spiral.planners.transformers_vlm:TransformersVLMPlanner"},
    "generator": {
        "world": "spiral.generators.world:WorldGenerator",
        "tiny": "spiral.generators.tiny:TinyGenerator",
        "tiny-evolved": "spiral.generators.tiny:TinyEvolvedGenerator",
        "diffusers": "spiral.generators.diffusers.base:DiffusersI2V",
        "wan21-i2v": "spiral.generators.diffusers.wan:WanI2VAdapter",
        "wan22-ti2v": "spiral.generators.diffusers.wan:Wan22TI2VAdapter",
        "cogvideox-i2v": "spiral.generators.diffusers.cogvideox:CogVideoXI2VAdapter",
        "ltx-i2v": "spiral.generators.diffusers.ltx:LTXI2VAdapter",
    },
    "critic": {"tabletop": "spiral.critics.tabletop:TabletopCritic", "vlm": "spiral.critics.vlm:VLMCritic",
               "transformers-vlm": "spiral.critics.transformers_vlm:TransformersVLMCritic"},
}
_REGISTERED: dict[str, dict[str, Any]] = {k: {} for k in KINDS}


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: make ``name`` usable in configs for this ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown backend kind {kind!r}; kinds: {', '.join(KINDS)}")

    def deco(cls: type) -> type:
        _REGISTERED[kind][name] = cls
        return cls

    return deco


def _entry_points(kind: str) -> dict[str, Any]:
    found = {}
    for ep in entry_points(group="spiral.backends"):
        k, _, n = ep.name.partition(".")
        if k == kind and n:
            found[n] = ep
    return found


def available(kind: str) -> list[str]:
    """Every backend name known for ``kind`` (built-in, registered, entry points)."""
    return sorted(set(_BUILTIN.get(kind, {})) | set(_REGISTERED.get(kind, {})) | set(_entry_points(kind)))


def resolve(kind: str, name: str) -> type:
    """The class registered as ``name``; an unknown name gets an error listing the known ones."""
    if kind not in KINDS:
        raise ValueError(f"unknown backend kind {kind!r}; kinds: {', '.join(KINDS)}")
    if name in _REGISTERED[kind]:
        return _REGISTERED[kind][name]
    if name in _BUILTIN[kind]:
        module, _, attr = _BUILTIN[kind][name].partition(":")
        return getattr(importlib.import_module(module), attr)
    eps = _entry_points(kind)
    if name in eps:
        return eps[name].load()
    known = available(kind)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {kind} backend {name!r}{hint}; known: {', '.join(known)}")


def check_options(kind: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The backend's options checked against its typed options model (``spiral.options``), values coerced;
    an unknown name or a wrong type raises :class:`spiral.options.OptionError`."""
    from spiral.options import validate_options

    return validate_options(kind, name, resolve(kind, name), options)


def create(kind: str, name: str, **options: Any) -> Any:
    """Instantiate a backend by name with its config options (checked first, see :func:`check_options`)."""
    return resolve(kind, name)(**check_options(kind, name, options))


def builtin(kind: str, name: str, target: str) -> None:
    """Declare a built-in backend by import path (used by modules that add optional backends)."""
    _BUILTIN[kind][name] = target
