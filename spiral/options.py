"""Typed backend options: what a config's ``planner/generator/critic.options`` may hold, checked before a run.

Each built-in backend declares a pydantic model of its options beside its class (``options_model``, a
:class:`BackendOptions` subclass whose fields describe themselves). A backend that declares none, such as a
third-party one registered through ``spiral.backends``, gets a model derived from its constructor's keyword
parameters, typed by their annotations. Either way an unknown option name or a value of the wrong type is
one :class:`OptionError` line naming the backend, the option and the valid names, raised while the config
is loaded, before anything is built or written.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model


class BackendOptions(BaseModel):
    """Base of every backend's options model: unknown names are errors."""

    model_config = ConfigDict(extra="forbid")


class OptionError(ValueError):
    """A backend option that is unknown or invalid; ``option`` names it (for the caller to say where it came from)."""

    def __init__(self, message: str, kind: str, name: str, option: str | None):
        super().__init__(message)
        self.kind, self.name, self.option = kind, name, option


def options_model(cls: type) -> type[BaseModel]:
    """The options model of a backend class: the one it declares, else one derived from its constructor."""
    declared = getattr(cls, "options_model", None)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return declared
    if callable(declared):  # a classmethod building it (e.g. agent options + its transport's)
        return declared()
    return signature_model(cls)


@lru_cache(maxsize=64)
def signature_model(*classes: type, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A model of the keyword parameters of the constructors of ``classes`` and their bases (first one wins).

    Parameters are typed by their annotations (``Any`` where one cannot be resolved) and keep their defaults.
    Unknown names are refused unless the base-most constructor takes ``**kwargs`` it does not forward.
    """
    fields: dict[str, Any] = {}
    open_kwargs = False
    for cls in classes:
        inits = [k.__dict__["__init__"] for k in cls.__mro__ if k is not object and "__init__" in k.__dict__]
        for i, init in enumerate(inits):
            try:
                hints = typing.get_type_hints(init)
            except Exception:  # noqa: BLE001 - a forward reference that cannot be resolved here
                hints = {}
            for p in inspect.signature(init).parameters.values():
                if p.kind == p.VAR_KEYWORD:
                    open_kwargs |= i == len(inits) - 1
                    continue
                if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in exclude:
                    continue
                if p.name not in fields and p.name not in {f.alias for _, f in fields.values()}:
                    default = ... if p.default is p.empty else p.default
                    key = p.name + "_" if hasattr(BaseModel, p.name) else p.name  # e.g. `validate`
                    fields[key] = (_checkable(hints.get(p.name, Any)), Field(default, alias=p.name))
    config = ConfigDict(extra="allow" if open_kwargs else "forbid", arbitrary_types_allowed=True)
    return create_model(f"{classes[0].__name__}Options", __config__=config, **fields)


def _checkable(hint: Any) -> Any:
    """``hint`` if pydantic can check values against it, else ``Any`` (e.g. a union with a plain Protocol)."""
    try:
        TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # noqa: BLE001 - pydantic raises several error types for types it cannot build
        return Any
    return hint


@lru_cache(maxsize=64)
def merged_model(name: str, own: type[BaseModel], *transport: type) -> type[BaseModel]:
    """``own`` (an agent's declared options) plus the constructor options of its transport class(es)."""
    extra = signature_model(*transport, exclude=tuple(own.model_fields))
    fields = {k: (f.annotation, f) for k, f in extra.model_fields.items()}
    return create_model(name, __base__=own, **fields)


def validate_options(kind: str, name: str, cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The options checked against the backend's model, values coerced to their types (only those given)."""
    model = options_model(cls)
    if not isinstance(options, dict):
        raise OptionError(f"{kind} '{name}': options must be a mapping of option: value, got "
                          f"{type(options).__name__}", kind, name, None)
    bad = [k for k in options if not isinstance(k, str)]
    if bad:
        raise OptionError(f"{kind} '{name}': option names must be words, got {bad[0]!r}", kind, name, None)
    try:
        m = model.model_validate(options)
    except ValidationError as e:
        raise _explain(e, kind, name, model) from None
    fields = type(m).model_fields
    out = {fields[k].alias or k: getattr(m, k) for k in m.model_fields_set}
    out.update(m.model_extra or {})
    return out


def _explain(e: ValidationError, kind: str, name: str, model: type[BaseModel]) -> OptionError:
    known = sorted(f.alias or k for k, f in model.model_fields.items())
    err = e.errors()[0]
    option = str(err["loc"][0]) if err["loc"] else None
    where = printable(".".join(str(x) for x in err["loc"]))
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(option or "", known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        msg = f"{kind} '{name}' has no option '{where}'{hint}; its options: {', '.join(known) or 'none'}"
    else:
        msg = f"{kind} '{name}' option '{where}': {err['msg']} (got {_short(err.get('input'))})"
    more = len(e.errors()) - 1
    return OptionError(msg + (f"; and {more} more problem(s) with its options" if more else ""), kind, name, option)


def printable(text: str) -> str:
    """User text as it can stand in a one-line message: control characters (a newline in a --set) escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

