"""JSON-schema-constrained decoding for local models: a character-level automaton over a schema subset.

Why: a local model (and certainly a random-weight test model) does not reliably write JSON, let alone
JSON that matches the plan or verdict schema; servers such as vLLM constrain decoding with a grammar,
and the local transformers backend does the same with this automaton. At every decoding step the
backend keeps only tokens whose text keeps the output a *valid prefix*: a prefix that some
schema-valid document extends. Since every prefix it accepts can still be completed, the decoder
never paints itself into a corner, and when it stops the text is schema-valid JSON.

The automaton is a set of parser stacks (a set, because ``anyOf``/``enum``/number endings are
ambiguous until later characters decide). Each stack holds frames, the top one being what the
next character must match. It writes compact JSON (no whitespace outside strings) and covers the
subset of JSON Schema that SPIRAL's prompts use:

- ``type`` (one or a list), ``enum``, ``const``, ``anyOf``/``oneOf``, ``$ref`` to ``#/$defs/…`` or
  ``#/definitions/…``, a one-element ``allOf``;
- objects: the ``required`` properties, in the order of ``properties`` (optional properties are
  left out, so ``additionalProperties`` never comes into play);
- arrays: ``items``, ``prefixItems``, ``minItems``, ``maxItems`` (at most ``max_items`` when unbounded);
- strings: ``minLength``, ``maxLength`` (at most ``max_string`` when unbounded), ``pattern`` (checked on
  every prefix with the ``regex`` module's partial matching); characters are printable ASCII other than
  ``"`` and ``\\``, so no escape sequences are ever needed;
- numbers and integers: ``minimum``/``maximum`` (and the exclusive forms), at most 6 integer and 6
  fraction digits; booleans; null. A schema without ``type`` allows a string, number, boolean or null.

Other keywords are ignored here; the agent's pydantic validation still checks the result.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

Frame = tuple
Stack = tuple[Frame, ...]
States = frozenset[Stack]

STRING_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
_INT_DIGITS, _FRAC_DIGITS = 6, 6
_NUM_PREFIX = re.compile(r"-?(0|[1-9][0-9]*)?(\.[0-9]*)?")
_NUM_DONE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def _compile_pattern(pattern: str) -> Any:
    """A compiled pattern with partial matching; JSON Schema patterns search, so unanchored ends get ``.*``."""
    try:
        import regex
    except ImportError:  # pragma: no cover - transformers depends on regex
        return None
    body = pattern if pattern.startswith("^") else r"[\s\S]*(?:" + pattern + ")"
    body = body if pattern.endswith("$") and not pattern.endswith(r"\$") else "(?:" + body + r")[\s\S]*"
    return regex.compile(body)


class JsonSchemaConstraint:
    """Valid-prefix checks for compact JSON documents of one schema (see the module docstring)."""

    def __init__(self, schema: dict[str, Any], max_string: int = 256, max_items: int = 16):
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema must be an object")
        self.root, self.max_string, self.max_items = schema, int(max_string), int(max_items)
        self._schemas: list[dict[str, Any]] = []
        self._index: dict[int, int] = {}
        self._expansions: dict[int, list[tuple[Frame, ...]]] = {}
        self._specs: list[tuple] = []
        self._root = self._node(schema)

    # -- public API --------------------------------------------------------------------------------

    def start(self) -> States:
        """The state before any character."""
        return frozenset({(("val", self._root),)})

    def advance(self, states: States, text: str) -> States:
        """The states after ``text``; empty when ``text`` would leave the valid prefixes."""
        cur: Iterable[Stack] = states
        for ch in text:
            nxt: set[Stack] = set()
            for stack in cur:
                nxt.update(self._feed(stack, ch))
            if not nxt:
                return frozenset()
            cur = nxt
        return frozenset(cur)

    def complete(self, states: States) -> bool:
        """Is the text so far a whole schema-valid document?"""
        return any(self._can_end(s) for s in states)

    def accepts(self, text: str) -> bool:
        """Is ``text`` (compact JSON) a whole document of the schema? (for tests and checks)"""
        return self.complete(self.advance(self.start(), text))

    def allowed_chars(self, states: States, alphabet: Iterable[str] = STRING_CHARS | {'"', "\\"}) -> list[str]:
        """The characters that may come next (for tests and debugging; decoding checks whole tokens)."""
        return sorted(c for c in alphabet if self.advance(states, c))

    # -- compiling ---------------------------------------------------------------------------------

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                raise ValueError(f"only local $ref ('#/$defs/…') is supported, got {ref!r}")
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema, seen = node, seen + 1
            if seen > 64:
                raise ValueError(f"$ref cycle at {ref!r}")
        return schema

    def _node(self, schema: Any) -> int:
        if schema is True or schema is None:
            schema = {}
        if not isinstance(schema, dict):
            raise ValueError(f"unsupported schema {schema!r}")
        key = id(schema)
        if key not in self._index:
            self._index[key] = len(self._schemas)
            self._schemas.append(schema)
        return self._index[key]

    def _spec(self, spec: tuple) -> int:
        self._specs.append(spec)
        return len(self._specs) - 1

    def _expand(self, idx: int) -> list[tuple[Frame, ...]]:
        """The frame sequences (in matching order) that a value of schema ``idx`` can start with."""
        if idx not in self._expansions:
            self._expansions[idx] = self._alternatives(self._resolve(self._schemas[idx]))
        return self._expansions[idx]

    def _alternatives(self, s: dict[str, Any]) -> list[tuple[Frame, ...]]:
        if "const" in s:
            return [(("lit", _dump(s["const"]), 0),)]
        if "enum" in s:
            return [(("lit", _dump(v), 0),) for v in s["enum"]]
        for key in ("anyOf", "oneOf"):
            if key in s:
                return [seq for sub in s[key] for seq in self._expand(self._node(sub))]
        if "allOf" in s:
            if len(s["allOf"]) != 1:
                raise ValueError("allOf with several schemas is not supported by constrained decoding")
            return self._expand(self._node(s["allOf"][0]))
        types = s.get("type", ["string", "number", "boolean", "null"])
        if isinstance(types, list):
            return [seq for t in types for seq in self._typed(s, t)]
        return self._typed(s, types)

    def _typed(self, s: dict[str, Any], t: str) -> list[tuple[Frame, ...]]:
        if t == "null":
            return [(("lit", "null", 0),)]
        if t == "boolean":
            return [(("lit", "true", 0),), (("lit", "false", 0),)]
        if t == "string":
            hi = min(int(s.get("maxLength", self.max_string)), self.max_string)
            lo = int(s.get("minLength", 0))
            if lo > hi:
                raise ValueError(f"string minLength {lo} exceeds the maxLength {hi} that decoding allows")
            pat = s.get("pattern")
            spec = self._spec((lo, hi, _compile_pattern(pat) if pat else None))
            return [(("lit", '"', 0), ("str", spec, ""))]
        if t in ("number", "integer"):
            lo = max(float(s.get("minimum", -math.inf)), float(s.get("exclusiveMinimum", -math.inf)))
            hi = min(float(s.get("maximum", math.inf)), float(s.get("exclusiveMaximum", math.inf)))
            spec = self._spec((lo, hi, t == "integer", s.get("exclusiveMinimum"), s.get("exclusiveMaximum")))
            return [(("num", spec, ""),)]
        if t == "object":
            props = s.get("properties", {})
            required = list(s.get("required", []))
            keys = [k for k in props if k in required] + [k for k in required if k not in props]
            if not keys:
                return [(("lit", "{}", 0),)]
            seq: list[Frame] = []
            for i, k in enumerate(keys):
                seq.append(("lit", ("{" if i == 0 else ",") + _dump(k) + ":", 0))
                seq.append(("val", self._node(props.get(k, {}))))
            seq.append(("lit", "}", 0))
            return [tuple(seq)]
        if t == "array":
            prefix = tuple(self._node(x) for x in s.get("prefixItems", []))
            items = s.get("items", {})
            rest = None if items is False else self._node(items)
            hi = int(s.get("maxItems", self.max_items))
            hi = min(hi, len(prefix)) if rest is None else min(hi, max(self.max_items, len(prefix)))
            lo = int(s.get("minItems", 0))
            if lo > hi:
                raise ValueError(f"array minItems {lo} exceeds the maxItems {hi} that decoding allows")
            return [(("arr", self._spec((prefix, rest, lo, hi)), 0, 0),)]
        raise ValueError(f"unsupported JSON schema type {t!r}")

    # -- feeding characters ------------------------------------------------------------------------

    def _feed(self, stack: Stack, ch: str) -> list[Stack]:
        if not stack:
            return []
        top, rest = stack[-1], stack[:-1]
        kind = top[0]
        if kind == "val":
            out: list[Stack] = []
            for seq in self._expand(top[1]):
                out.extend(self._feed(rest + tuple(reversed(seq)), ch))
            return out
        if kind == "lit":
            _, text, pos = top
            if text[pos] != ch:
                return []
            return [rest] if pos + 1 == len(text) else [rest + (("lit", text, pos + 1),)]
        if kind == "str":
            return self._feed_string(top, rest, ch)
        if kind == "num":
            return self._feed_number(top, rest, ch)
        if kind == "arr":
            return self._feed_array(top, rest, ch)
        raise AssertionError(kind)

    def _feed_string(self, top: Frame, rest: Stack, ch: str) -> list[Stack]:
        _, spec, content = top
        lo, hi, pat = self._specs[spec]
        if ch == '"':
            ok = len(content) >= lo and (pat is None or pat.fullmatch(content) is not None)
            return [rest] if ok else []
        if ch not in STRING_CHARS or len(content) >= hi:
            return []
        new = content + ch
        if pat is not None and pat.fullmatch(new, partial=True) is None:
            return []
        return [rest + (("str", spec, new),)]

    def _feed_number(self, top: Frame, rest: Stack, ch: str) -> list[Stack]:
        _, spec, content = top
        out: list[Stack] = []
        new = content + ch
        if ch in "-.0123456789" and self._number_prefix_ok(spec, new):
            out.append(rest + (("num", spec, new),))
        if self._number_done(spec, content):
            out.extend(self._feed(rest, ch))
        return out

    def _number_prefix_ok(self, spec: int, text: str) -> bool:
        lo, hi, is_int, _, _ = self._specs[spec]
        if _NUM_PREFIX.fullmatch(text) is None or (is_int and "." in text):
            return False
        body = text.lstrip("-")
        ip, _, fp = body.partition(".")
        if len(ip) > _INT_DIGITS or len(fp) > _FRAC_DIGITS or (body.startswith(".")):
            return False
        return any(a <= hi and b >= lo for a, b in _reachable(text, is_int))

    def _number_done(self, spec: int, text: str) -> bool:
        lo, hi, is_int, xlo, xhi = self._specs[spec]
        if _NUM_DONE.fullmatch(text) is None or (is_int and "." in text):
            return False
        v = float(text)
        if xlo is not None and v <= float(xlo) or xhi is not None and v >= float(xhi):
            return False
        return lo <= v <= hi

    def _feed_array(self, top: Frame, rest: Stack, ch: str) -> list[Stack]:
        _, spec, count, phase = top
        prefix, items, lo, hi = self._specs[spec]

        def item(i: int) -> int:
            return prefix[i] if i < len(prefix) else items  # type: ignore[return-value]

        if phase == 0:
            return [rest + (("arr", spec, 0, 1),)] if ch == "[" else []
        if phase == 1:
            out = [rest] if ch == "]" and lo == 0 else []
            if hi >= 1:
                out.extend(self._feed(rest + (("arr", spec, 1, 2), ("val", item(0))), ch))
            return out
        if phase == 2:
            if ch == "," and count < hi:
                return [rest + (("arr", spec, count, 3),)]
            return [rest] if ch == "]" and count >= lo else []
        return self._feed(rest + (("arr", spec, count + 1, 2), ("val", item(count))), ch)

    def _can_end(self, stack: Stack) -> bool:
        if not stack:
            return True
        return len(stack) == 1 and stack[0][0] == "num" and self._number_done(stack[0][1], stack[0][2])


def _reachable(text: str, is_int: bool) -> list[tuple[float, float]]:
    """Closed intervals that hold every number a prefix can still become (bounded digits)."""
    neg = text.startswith("-")
    body = text[1:] if neg else text
    frac = 0.0 if is_int else 1.0
    if body == "":
        ivs = [(0.0, math.inf)]
    elif "." in body:
        ip, _, fp = body.partition(".")
        base = float(f"{ip}.{fp or '0'}")
        ivs = [(base, base + (10.0 ** -len(fp) if len(fp) < _FRAC_DIGITS else 0.0))]
    elif body == "0":
        ivs = [(0.0, frac)]
    else:
        n = int(body)
        ivs = [(float(n * 10**k), float((n + 1) * 10**k) - (1.0 if is_int else 0.0))
               for k in range(_INT_DIGITS - len(body) + 1)]
    return [(-b, -a) for a, b in ivs] if neg else ivs
