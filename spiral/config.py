"""Run configuration: YAML files validated by pydantic; ``--set a.b=c`` overrides.

A typo'd key is an error that names the key and the closest valid one, never a silent default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Mode = Literal["closed_loop", "plan_only", "single_shot"]


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
    """Everything a run needs; ``configs/tabletop.yaml`` is the embedded default."""

    planner: BackendConfig = BackendConfig(name="symbolic")
    generator: BackendConfig = BackendConfig(name="world")
    critic: BackendConfig = BackendConfig(name="tabletop")
    loop: LoopConfig = LoopConfig()
    video: VideoConfig = VideoConfig()
    output: OutputConfig = OutputConfig()


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
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            msgs.append(f"unknown config key '{loc}'{hint}")
        else:
            msgs.append(f"config key '{loc}': {err['msg']}")
    return f"{source}: " + "; ".join(msgs)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``a.b=c`` override in place; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value (e.g. loop.max_replans=2), got {assignment!r}")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {key}: '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = yaml.safe_load(raw)


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults) and apply ``--set`` overrides; validate strictly."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    data = _merge(Config().model_dump(mode="json"), data)
    for o in overrides or []:
        apply_override(data, o)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ValueError(_explain(e, source)) from None


def config_with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of ``cfg`` with ``a.b=c`` overrides applied and validated."""
    data = cfg.model_dump(mode="json")
    for o in overrides:
        apply_override(data, o)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ValueError(_explain(e, "--set")) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
