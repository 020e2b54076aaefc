"""Property-based fuzzing of every input SPIRAL parses (issue 22 item 6): strategies and properties, shared by
tests/test_fuzz.py (a few hundred cases per kind in CI) and benchmarks/fuzz.py (>= 1,000 per kind).

Each property feeds one generated input to the real parser and asserts the contract: the result is either a
value that reflects the whole input (nothing dropped or defaulted silently) or one of our clear validation
errors (a ValueError / FileNotFoundError with a one-line message). Any other exception is a crash to fix.
Strategies mix near-valid inputs (a valid document with one part changed) with arbitrary data, because
near-valid inputs reach the deep checks and arbitrary data reaches the parsers' edges.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

CASES: Counter[str] = Counter()  # generated cases run per kind (benchmarks/fuzz.py reports them)
ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT / "configs" / "run" / "tabletop-oracle.yaml"


def clear_error(e: BaseException) -> None:
    """Our contract for bad input: a ValueError / FileNotFoundError whose message is one non-empty line."""
    assert isinstance(e, (ValueError, FileNotFoundError)), f"{type(e).__name__}: {e}"
    text = str(e)
    assert text.strip() and "\n" not in text.strip(), repr(text)


# ---------------------------------------------------------------------------------------------- values
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def _known_keys() -> list[str]:
    from spiral.config import Config, _known_keys

    return _known_keys(Config)


KEYS = _known_keys()
OPTION_KEYS = [f"generator.options.{k}" for k in ("steps", "stepz", "weights", "cfg_scale", "failure_rate",
                                                  "failures", "read_state", "fps")] + \
              [f"critic.options.{k}" for k in ("thresholds", "recognizer", "threads", "artifact_area")] + \
              [f"planner.options.{k}" for k in ("max_expansions", "validate")]
BACKEND_NAMES = st.sampled_from(["symbolic", "llm", "tiny", "tiny-evolved", "world", "tabletop", "vlm", "wan21-i2v",
                                 "wrld", "", "transformers-vlm"])
dotted = st.one_of(st.sampled_from(KEYS + OPTION_KEYS), st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", max_size=24))


def _set_path(doc: dict, key: str, value: Any) -> None:
    cur = doc
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            return
        cur = nxt
    cur[parts[-1]] = value


@st.composite
def config_docs(draw) -> str:
    """YAML text: a config built key by key (known keys, typos, backend names, option values), or raw text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=80))
    doc: dict = {}
    for key in draw(st.lists(dotted, max_size=6)):
        if key.endswith(".name"):
            _set_path(doc, key, draw(st.one_of(BACKEND_NAMES, scalars)))
        else:
            _set_path(doc, key, draw(json_values))
    return yaml.safe_dump(doc) if doc or draw(st.booleans()) else ""


@st.composite
def set_strings(draw) -> str:
    """``--set`` arguments: dotted keys (known, typos, empty) = YAML text (scalars, lists, maps, garbage)."""
    key = draw(dotted)
    value = draw(st.one_of(st.sampled_from(["0", "1", "-1", "3.5", "ten", "true", "null", "[1, 2]", "{a: 1}", "[",
                                            "'", "{", "world", "tiny", "~", "1e999", ".nan"]),
                           st.text(max_size=16)))
    return draw(st.sampled_from([f"{key}={value}", f"{key} = {value}", key, f"={value}", f"{key}={value}={value}"]))


def flat_doc(doc: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            out.update(flat_doc(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = doc
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # NaN
        return True
    return a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b))


def prop_config_yaml(text: str, tmp: Path) -> None:
    """A YAML config file: loaded with every value it gives in force, or refused in one line."""
    from spiral.config import flat, load_config

    CASES["config YAML"] += 1
    path = tmp / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    try:
        cfg = load_config(path)
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
        clear_error(e)
        return
    assert isinstance(doc, dict) and doc, f"accepted a config that is not a mapping: {text!r}"
    got = flat(cfg)
    for key, value in flat_doc(doc).items():
        if isinstance(value, dict) or key.endswith(".options"):
            continue  # an empty section / options map: nothing to carry
        assert key in got, f"{key} was accepted but is not in the config"
        assert _same(got[key], value) or _coerced(got[key], value), (key, value, got[key])


_FALSE = {"0", "off", "f", "false", "n", "no"}  # pydantic's lax bool strings (case-insensitive), as a user types them
_TRUE = {"1", "on", "t", "true", "y", "yes"}


def _coerced(got: Any, given: Any) -> bool:
    """pydantic's lax mode turns 3.0 into 3, '3' into 3 and 'F' / 'off' into False; anything else must be kept as
    given (a bool string outside pydantic's set, e.g. 'nope', must have been refused)."""
    if isinstance(got, bool) and isinstance(given, str):
        return given.strip().lower() in (_TRUE if got else _FALSE)
    try:
        return type(got)(given) == got
    except (TypeError, ValueError, OverflowError):
        return False


def prop_set_string(assignment: str) -> None:
    """One ``--set``: applied and in force, or refused in one line naming the --set."""
    from spiral.config import flat, load_config, split_override

    CASES["--set strings"] += 1
    try:
        cfg = load_config(ORACLE, [assignment])
    except Exception as e:  # noqa: BLE001
        clear_error(e)
        assert "--set" in str(e) or "config" in str(e), str(e)
        return
    key, raw = split_override(assignment)
    value = yaml.safe_load(raw)
    got = flat(cfg)
    if isinstance(value, dict) or key.split(".")[-1] == "options" or key.split(".")[0] == key:
        return  # a whole section: its fields are checked by the config property
    if key.endswith(".name") and key.count(".") == 1:
        assert got[key] == value
        return
    assert key in got and (_same(got[key], value) or _coerced(got[key], value)), (assignment, got.get(key))


# ------------------------------------------------------------------------------------------ manifests
@st.composite
def manifest_lines(draw, good: list[dict]) -> list[str]:
    """Lines of a manifest: real episodes with one field changed, dropped or added, raw JSON, or raw text."""
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 5))
        ep = json.loads(json.dumps(draw(st.sampled_from(good))))
        if kind == 0:
            lines.append(draw(st.text(max_size=40)).replace("\n", " "))  # one line of raw text
            continue
        if kind == 1:
            lines.append(json.dumps(draw(json_values)))
            continue
        target = ep if kind in (2, 3) or not ep["steps"] else draw(st.sampled_from(ep["steps"]))
        field = draw(st.sampled_from(sorted(target) + ["extra", "objects", "initial_state"]))
        if kind == 3 and field in target:
            del target[field]
        else:
            target[field] = draw(st.one_of(json_values, st.sampled_from(
                ["../../etc/passwd", "purple_block", ["purple_block", "box"], {"loc": {"purple_block": "box"}},
                 -1, 10**9, "videos/missing.mp4"])))
        lines.append(json.dumps(ep))
    if draw(st.booleans()):
        lines.append(json.dumps(draw(st.sampled_from(good))))
    return lines


def prop_manifest(lines: list[str], root: Path, work: Path) -> None:
    """A manifest: every line is a usable episode or a reported error (none vanish); errors are one line."""
    from spiral.data.format import Episode, check_dataset

    CASES["manifests"] += 1
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("manifest.jsonl"))
    (work / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        report = check_dataset(work)
    except Exception as e:  # noqa: BLE001
        clear_error(e)
        assert not any(x.strip() for x in lines), f"refused a manifest with lines: {e}"
        return
    n = sum(1 for x in lines if x.strip())
    assert len(report.episodes) + len(report.errors) == n, (len(report.episodes), len(report.errors), n)
    for err in report.errors:
        assert "\n" not in str(err) and str(err).strip()
    for ep in report.episodes:
        Episode.model_validate(ep.model_dump())


# ----------------------------------------------------------------------------------------------- suites
@st.composite
def suite_docs(draw) -> str:
    """A suite file: a real one with cases changed, dropped or replaced, or other JSON, or raw text."""
    from spiral.bench.suite import resolve_suite

    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=60))
    if kind == 1:
        return json.dumps(draw(json_values))
    doc = json.loads(resolve_suite("tabletop-v1").read_text())
    cases = doc["cases"][: draw(st.integers(0, 6))]
    for c in cases:
        if draw(st.booleans()):
            field = draw(st.sampled_from(["id", "goal", "scene", "image", "length_class", "n_steps", "tags", "x"]))
            if draw(st.booleans()) and field in c:
                del c[field]
            else:
                c[field] = draw(st.one_of(json_values, st.sampled_from(
                    ["put teh red block in the box", "../../x.png", -3, "long", ["lamp"], 99])))
    doc["cases"] = cases if kind != 2 else draw(json_values)
    if kind == 3:
        doc[draw(st.sampled_from(["name", "version", "world", "cases"]))] = draw(json_values)
    return json.dumps(doc)


def prop_suite(text: str, tmp: Path) -> None:
    """A suite file: every case is loaded or reported (none vanish), or the file is refused in one line."""
    from spiral.bench.suite import load_suite

    CASES["suite files"] += 1
    path = tmp / "suite.json"
    path.write_text(text, encoding="utf-8")
    try:
        suite = load_suite(path)
    except Exception as e:  # noqa: BLE001
        clear_error(e)
        return
    raw = json.loads(text)["cases"]
    bad = {err.index for err in suite.errors}  # a bad case may have several errors (one per field)
    assert len(suite.cases) + len(bad) == len(raw), (len(suite.cases), len(bad), len(raw))
    for err in suite.errors:
        assert "\n" not in str(err)


# ---------------------------------------------------------------------------------------------- journals
@st.composite
def journal_files(draw, good: list[bytes]) -> bytes:
    """A journal: the real lines of a run, some changed or replaced, maybe ending in a torn fragment."""
    out = []
    for line in good:
        kind = draw(st.integers(0, 7))
        rec = json.loads(line)
        if kind == 1:
            field = draw(st.sampled_from(sorted(rec)))
            rec[field] = draw(st.one_of(json_values, st.sampled_from(["../../../etc/passwd", -1, "accept", None])))
        elif kind == 2:
            del rec[draw(st.sampled_from(sorted(rec)))]
        elif kind == 3:
            out.append(draw(st.binary(max_size=30)).replace(b"\n", b" "))
            continue
        elif kind == 4 and rec.get("verdict"):
            rec["verdict"]["scores"] = draw(json_values)
        out.append(json.dumps(rec).encode())
    data = b"".join(x + b"\n" for x in out)
    if draw(st.booleans()):
        data += draw(st.sampled_from(good))[: draw(st.integers(1, 200))]  # torn tail
    return data


def prop_journal(data: bytes, ref: Path, work: Path) -> None:
    """Opening a run with this journal: every complete record is replayable, a torn tail is set aside, anything
    else is one JournalError; nothing is dropped without saying so."""
    from spiral import atomic
    from spiral.rundir import RunDir
    from spiral.types import Attempt

    CASES["journal lines"] += 1
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(ref, work)
    (work / "attempts.jsonl").write_bytes(data)
    try:
        rd = RunDir.open(work)
    except Exception as e:  # noqa: BLE001
        clear_error(e)
        return
    kept = atomic.read_jsonl(work / "attempts.jsonl")
    for line in kept:
        Attempt.model_validate({k: line[k] for k in Attempt.model_fields if k in line})
    complete = [x for x in data.split(b"\n")[:-1] if x.strip()]
    assert len(kept) + (1 if rd.torn else 0) >= len(complete), "a complete journal line vanished"


# ------------------------------------------------------------------------------------------ LLM replies
class ScriptedChat:
    """A ChatBackend that answers with the next scripted text (the transport is not under test; the parsing,
    validation and repair of :func:`spiral.llm.structured.complete_json` are)."""

    script: list[str] = []

    def __init__(self, **_: Any):
        from collections import Counter as _Counter

        self.where, self.label, self.repair_retries, self.max_tokens = "script", "the scripted model", 1, 512
        self.stats: _Counter[str] = _Counter()

    def request(self, messages: list[dict[str, Any]], task: Any) -> tuple[str, str | None]:
        self.stats["requests"] += 1
        return (self.script.pop(0) if self.script else ""), "stop"


@st.composite
def plan_replies(draw) -> str:
    """A planner reply: a plan for the scene (possibly broken), other JSON, fenced or chatty text, deep nesting."""
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.text(max_size=60))
    if kind == 1:
        return "[" * draw(st.integers(1, 5000)) + "]"
    if kind == 2:
        return '{"steps": ' + "[" * 3000 + "]" * 3000 + "}"
    steps = []
    for _ in range(draw(st.integers(0, 4))):
        verb = draw(st.sampled_from(["move", "open", "close", "switch_on", "switch_off", "fly", ""]))
        objects = draw(st.lists(st.sampled_from(["red_block", "green_block", "box", "lamp", "center", "purple_block",
                                                 "far_left"]), max_size=3))
        step = {"text": draw(st.text(max_size=20)) or "do it", "verb": verb, "objects": objects,
                "preconditions": draw(st.lists(st.sampled_from(["open(box)", "clear(red_block)", "on(lamp)", "x(",
                                                                "not open(box)"]), max_size=2)),
                "postconditions": draw(st.lists(st.sampled_from(["on(lamp)", "in(red_block, box)", "bad"]),
                                                max_size=2))}
        if draw(st.integers(0, 5)) == 0:
            step[draw(st.sampled_from(sorted(step)))] = draw(json_values)
        steps.append(step)
    body = {"rationale": draw(st.text(max_size=20)), "steps": steps}
    if kind == 3:
        body[draw(st.text(max_size=5))] = draw(json_values)
    text = json.dumps(body)
    return draw(st.sampled_from([text, f"```json\n{text}\n```", f"Here is the plan: {text} Done.", text[:-3]]))


@st.composite
def verdict_replies(draw) -> str:
    """A critic reply: a verdict (possibly broken: scores out of range, NaN, missing keys), or anything else."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=60))
    if kind == 1:
        return "{" + '"a":[' * draw(st.integers(1, 4000))
    scores = {d: draw(st.one_of(st.floats(allow_nan=True), st.integers(-2, 2), st.text(max_size=3)))
              for d in draw(st.lists(st.sampled_from(["action", "preservation", "continuity", "consistency", "x"]),
                                     unique=True, max_size=5))}
    body = {"scores": scores, "passed": draw(st.one_of(st.booleans(), json_values)),
            "failure": draw(st.one_of(st.none(), st.sampled_from(["wrong_object", "drift", "nope"]))),
            "decision": draw(st.sampled_from(["accept", "refine", "regenerate", "replan", "maybe"])),
            "feedback": draw(st.text(max_size=30))}
    if kind == 2 and body:
        del body[draw(st.sampled_from(sorted(body)))]
    return json.dumps(body)


def _scene_state() -> dict:
    import numpy as np

    from spiral.world.tasks import sample_state

    return sample_state(np.random.default_rng(4)).to_dict()


def prop_plan_reply(replies: list[str]) -> None:
    """The LLM planner on scripted replies: a plan that simulates from the scene, or one clear error."""
    from spiral.planners.llm import LLMPlanner
    from spiral.types import Observation
    from spiral.world import domain
    from spiral.world.domain import State

    CASES["LLM plan replies"] += 1

    class Planner(LLMPlanner):
        backend_class = ScriptedChat

    ScriptedChat.script = list(replies)
    state = _scene_state()
    try:
        plan = Planner(send_image=False).plan("turn on the lamp", Observation(state=state))
    except Exception as e:  # noqa: BLE001
        clear_error(e)
        return
    s = State.from_dict(state)  # an accepted plan was simulated: it runs in the domain and reaches the goal
    for step in plan.steps:
        s = domain.apply(s, domain.Action(step.verb, tuple(step.objects)))
    assert s.lamp_on, plan


def prop_verdict_reply(replies: list[str]) -> None:
    """The VLM critic on scripted replies: a verdict with scores in [0, 1], or one clear error."""
    import numpy as np

    from spiral.critics.vlm import VLMCritic
    from spiral.types import Segment, SubAction, Verdict

    CASES["VLM verdict replies"] += 1

    class Critic(VLMCritic):
        backend_class = ScriptedChat

    ScriptedChat.script = list(replies)
    seg = Segment(frames=np.zeros((3, 8, 8, 3), np.uint8))
    sub = SubAction(text="turn on the lamp", verb="switch_on", objects=["lamp"])
    try:
        v = Critic(send_images=False).judge(seg, sub)
    except Exception as e:  # noqa: BLE001
        clear_error(e)
        return
    assert isinstance(v, Verdict) and all(0 <= x <= 1 for x in v.scores.values())
    assert set(v.scores) >= {"action", "preservation", "continuity", "consistency"}
