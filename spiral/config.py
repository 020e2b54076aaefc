"""Configuration: YAML files validated by pydantic; ``--set a.b=c`` overrides.

One parser for every config: the run config (:class:`Config`, :func:`load_config`) and each trainer's config
(:func:`load_yaml_model`: ``GRPOConfig``, ``ReverseConfig``, the generator's ``TrainConfig``). A typo'd key is an
error that names the key (and, for run configs, the closest valid one), never a silent default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spiral.options import printable

Mode = Literal["closed_loop", "plan_only", "single_shot"]
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Strict):
    """A backend chosen by name, with keyword options for its constructor."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


BudgetPolicy = Literal["stop", "keep_best"]


class LoopConfig(_Strict):
    """Budgets and switches of the think-act-reflect loop (DESIGN §1; spiral/loop.py says how they are spent)."""

    mode: Mode = Field("closed_loop", description="closed_loop, or an open-loop baseline: plan_only, single_shot")
    max_refines_per_step: int = Field(3, ge=0, description=(
        "retries of one step within one plan version (new seed, or refined instruction) before it is re-planned"))
    max_replans: int = Field(3, ge=0, description=(
        "re-plans per run (the critic asked for one, a step kept failing, or the goal was not met at the end)"))
    max_total_generations: int = Field(60, ge=1, description=(
        "generations per run; one per step still to come is held back, so a retry never takes the first "
        "generation of a later step"))
    on_budget_exhausted: BudgetPolicy = Field("keep_best", description=(
        "what to do with a step given up (its escalation or its budget was spent): keep_best keeps its "
        "best-scoring attempt as an unverified step and goes on (the run ends completed_unverified); stop ends "
        "the run there with what was accepted (budget_exhausted)"))
    open_loop_fallback: bool = Field(True, description=(
        "never worse than open loop: when a closed-loop run (keep_best) ends unverified after following another "
        "plan than its first, also roll the first plan out as plan_only does (one generation per step, judged, "
        "never retried) and keep whichever video the critic reads as better (goal met first, then fewer steps "
        "it did not pass; the closed loop's on a tie); costs one generation per step of the first plan, within "
        "max_total_generations"))
    seed: int = Field(0, description="run seed; every attempt's seed derives from it (spiral.loop.derive_seed)")


class VideoConfig(_Strict):
    """Segment and output video settings."""

    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    frames_per_step: int = Field(9, ge=2)
    fps: float = Field(8.0, gt=0)
    crossfade: int = Field(0, ge=0, description="frames blended at each step boundary in final.mp4")


class OutputConfig(_Strict):
    """What a run directory holds beyond the journal (benchmarks turn the viewing aids off)."""

    segment_videos: bool = Field(False, description="an mp4 beside each attempt's lossless .npz, for viewing")
    report: bool = Field(True, description="write report.html at the end")


class Config(_Strict):
    """Everything a run needs. It names its generator (no default: an unnamed one must never fall back to the
    oracle); files are read on top of the embedded default ``configs/run/tabletop.yaml`` (:func:`load_config`)."""

    planner: BackendConfig = BackendConfig(name="symbolic")
    generator: BackendConfig = Field(description="the video generator (configs/run/tabletop.yaml: the embedded default)")
    critic: BackendConfig = BackendConfig(name="tabletop")
    loop: LoopConfig = LoopConfig()
    video: VideoConfig = VideoConfig()
    output: OutputConfig = OutputConfig()


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "run" / "tabletop.yaml"
KINDS = ("planner", "generator", "critic")

# What an explicit --set may change when a run is resumed. The journal replays attempts keyed by (plan version,
# step, attempt), so a change is safe only if the decisions already journaled stay what they were:
# max_total_generations and max_replans only decide where a run stops (raising one continues a run that stopped
# there); the output options and the final video's fps / crossfade change files written at the end.
# max_refines_per_step is not here: it changes which attempt re-plans, so later journaled plans would be stale.
RESUME_SAFE = ("loop.max_total_generations", "loop.max_replans", "output.segment_videos", "output.report",
               "video.fps", "video.crossfade")


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for k, f in model.model_fields.items():
        keys.append(prefix + k)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, prefix + k + ".")
    return keys


def _explain(e: ValidationError, source: str) -> str:
    known = _known_keys(Config)
    msgs = []
    for err in e.errors():
        loc = printable(".".join(str(x) for x in err["loc"]))
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            msgs.append(f"unknown config key '{loc}'{hint}")
        else:
            msgs.append(f"config key '{loc}': {err['msg']}")
    return f"{source}: " + "; ".join(msgs)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``a.b=c`` override in place; the value is parsed as YAML (numbers, bools, lists)."""
    key, raw = split_override(assignment)
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {printable(assignment)}: '{printable(p)}' is not a section")
        cur = nxt
    try:
        cur[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"--set {printable(assignment)}: the value is not valid YAML ({str(e).splitlines()[0]}); quote it, "
                         "e.g. --set 'a.b=\"text\"'") from None


def split_override(assignment: str) -> tuple[str, str]:
    """``"a.b=c"`` → ``("a.b", "c")``; anything else is a ValueError showing the expected form."""
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ValueError(f"--set expects key=value (e.g. loop.max_replans=2), got {assignment!r}")
    key, _, raw = assignment.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ValueError(f"--set {printable(assignment)}: the key must be dotted names, e.g. loop.max_replans=2")
    return key, raw


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` onto ``base``; a backend's options restart empty when its name changes."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            b = out[k]
            if "name" in v and "options" in b and v["name"] != b.get("name"):
                b = {**b, "options": {}}
            out[k] = _merge(b, v)
        else:
            out[k] = v
    return out


def _read_run_yaml(path: Path) -> dict:
    """A run config file's mapping (:func:`read_yaml`); an empty one is an error, not a silent default."""
    data = read_yaml(path, "config file")
    if not data:  # `{}` too (found by fuzzing): it would run the default without a word
        raise ValueError(f"{path} is empty; give at least one section (see configs/run/{DEFAULT_CONFIG.name}), or "
                         "leave out --config to run the embedded default")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config on top of the embedded default (``configs/run/tabletop.yaml``), apply ``--set``
    overrides, and validate everything, each backend's options included; errors name the file or the --set."""
    if not DEFAULT_CONFIG.is_file():
        raise FileNotFoundError(f"the embedded default config {DEFAULT_CONFIG} is missing; reinstall spiral or "
                                "pass --config")
    data = _read_run_yaml(DEFAULT_CONFIG)
    source = f"{DEFAULT_CONFIG} (the embedded default)"
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG:
        source = str(path)
        data = _merge(data, _read_run_yaml(Path(path)))
    return _build(data, source, overrides or [])


def config_with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of ``cfg`` with ``a.b=c`` overrides applied and validated."""
    return _build(cfg.model_dump(mode="json"), "the given Config", overrides)


def _build(data: dict, source: str, overrides: list[str]) -> Config:
    """Validate ``data`` (from ``source``), then each override in turn, then the backends' options."""
    _validate(data, source)
    keys = [split_override(o)[0] for o in overrides]
    for kind in KINDS:  # --set KIND.name=other: the options of the file's backend do not carry over
        renamed = [o for o, k in zip(overrides, keys) if k == f"{kind}.name"]
        section = data.get(kind)
        if renamed and isinstance(section, dict):
            try:
                new = yaml.safe_load(split_override(renamed[-1])[1])
            except yaml.YAMLError:
                new = None  # apply_override names the bad value below
            if new != section.get("name"):
                data[kind] = {**section, "options": {}}
    for o in overrides:
        apply_override(data, o)
        _validate(data, f"--set {printable(o)}")
    cfg = Config.model_validate(data)
    from spiral import registry
    from spiral.options import OptionError

    for kind in KINDS:
        backend: BackendConfig = getattr(cfg, kind)
        try:
            options = registry.check_options(kind, backend.name, backend.options)
        except OptionError as e:
            raise ValueError(f"{_blame(e, overrides, keys) or source}: {e}") from None
        except ValueError as e:  # unknown backend name
            raise ValueError(f"{_blame_name(kind, overrides, keys) or source}: {e}") from None
        backend.options = _plain(options)
    return cfg


def _blame(e: Any, overrides: list[str], keys: list[str]) -> str | None:
    """The --set that gave a bad backend option, if one did."""
    prefixes = [f"{e.kind}.options.{e.option}", f"{e.kind}.options"] if e.option else [f"{e.kind}.options"]
    for prefix in prefixes:
        for o, k in reversed(list(zip(overrides, keys))):
            if k == prefix or k.startswith(prefix + "."):
                return f"--set {printable(o)}"
    return _blame_name(e.kind, overrides, keys)


def _blame_name(kind: str, overrides: list[str], keys: list[str]) -> str | None:
    for o, k in reversed(list(zip(overrides, keys))):
        if k == f"{kind}.name":
            return f"--set {printable(o)}"
    return None


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """Validated option values as YAML-friendly data (paths become strings, models dicts)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):  # e.g. a generator's list of LoRA specs
            return [plain(x) for x in v]
        return v.model_dump(mode="json") if isinstance(v, BaseModel) else str(v) if isinstance(v, Path) else v

    return {k: plain(v) for k, v in options.items()}


def _validate(data: dict, source: str) -> None:
    try:
        Config.model_validate(data)
    except ValidationError as e:
        raise ValueError(_explain(e, source)) from None


def flat(cfg: Config) -> dict[str, Any]:
    """Every setting of a config as dotted key → value (backend options included: ``generator.options.steps``)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", cfg.model_dump(mode="json"))
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def read_yaml(path: str | Path, what: str = "config", _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file. ``extends: FILE`` (relative to it) starts from another file's mapping,
    whose keys the file's own keys replace: a second stage of training names only what changes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found" + (f" (extended by {_seen[-1]})" if _seen else ""))
    if path.resolve() in _seen:
        raise ValueError(f"{what} {path} extends itself through {' -> '.join(map(str, _seen))}; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return {**read_yaml(path.parent / parent, what, (*_seen, path.resolve())), **data}


def load_yaml_model(cls: type[M], path: str | Path | None, overrides: list[str] | None = None, what: str = "config",
                    **fields: Any) -> M:
    """``cls`` validated from a YAML file (:func:`read_yaml`; None: the class defaults), then ``a.b=c`` overrides
    (:func:`apply_override`), then keyword ``fields`` (None leaves a key alone). Bad keys and values raise pydantic's
    ValidationError, which names each."""
    data = read_yaml(path, what) if path is not None else {}
    for o in overrides or []:
        apply_override(data, o)
    data.update({k: v for k, v in fields.items() if v is not None})
    return cls.model_validate(data)
