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

Mode = Literal["closed_loop", "plan_only", "single_shot"]
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Strict):
    """A backend chosen by name, with keyword options for its constructor."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class LoopConfig(_Strict):
    """Budgets and switches of the think-act-reflect loop (DESIGN §1)."""

    mode: Mode = "closed_loop"
    max_refines_per_step: int = Field(3, ge=0, description="inner-loop attempts (refine/regenerate) per step")
    max_replans: int = Field(3, ge=0)
    max_total_generations: int = Field(60, ge=1)
    seed: int = 0


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
    """Everything a run needs; ``configs/run/tabletop.yaml`` is the embedded default."""

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
    """Read a YAML config (or the defaults; :func:`read_yaml`) and apply ``--set`` overrides; validate strictly."""
    data = read_yaml(path, "config file") if path is not None else {}
    source = "defaults" if path is None else str(path)
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


def read_yaml(path: str | Path, what: str = "config", _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file. ``extends: FILE`` (relative to it) starts from another file's mapping,
    whose keys the file's own keys replace: a second stage of training names only what changes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found" + (f" (extended by {_seen[-1]})" if _seen else ""))
    if path.resolve() in _seen:
        raise ValueError(f"{what} {path} extends itself through {' -> '.join(map(str, _seen))}; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
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
