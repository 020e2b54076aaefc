"""Python API mirroring the CLI: ``spiral.run(goal, image=..., scene=..., config=..., out=...)``."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spiral import registry
from spiral.config import Config, config_with_overrides, dump_config, load_config
from spiral.loop import Agents, Event, run_loop
from spiral.rundir import RunDir
from spiral.types import RunRecord

_LAST_RUN: list[Path] = []


def last_run_dir() -> Path:
    """The directory of the most recent run in this process (the CLI prints it)."""
    return _LAST_RUN[-1]


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "run" / "tabletop.yaml"


def resolve_config(config: str | Path | Config | None, overrides: list[str] | None = None) -> Config:
    """A Config from an object, a YAML path, or the embedded default (``configs/run/tabletop.yaml``)."""
    if isinstance(config, Config):
        return config_with_overrides(config, overrides or [])
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    return load_config(config, overrides)


def build_agents(cfg: Config) -> Agents:
    """Instantiate the configured backends by name."""
    return Agents(
        planner=registry.create("planner", cfg.planner.name, **cfg.planner.options),
        generator=registry.create("generator", cfg.generator.name, **cfg.generator.options),
        critic=registry.create("critic", cfg.critic.name, **cfg.critic.options),
    )


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a first frame as RGB uint8 at the run's size; non-RGB or unreadable files are errors."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if img.mode not in ("RGB", "RGBA"):
        raise ValueError(f"image {path} is {img.mode}, not RGB; convert it (e.g. PIL: img.convert('RGB'))")
    img = img.convert("RGB")
    h, w = size
    if img.size != (w, h):
        img = img.resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def scene_frame(scene: int, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """The first frame and true state of a sampled tabletop scene."""
    from spiral.world.render import Appearance, render_state
    from spiral.world.tasks import sample_state

    state = sample_state(np.random.default_rng(scene))
    if size[0] != size[1]:
        raise ValueError(f"tabletop scenes are square; got video size {size}")
    return render_state(state, appearance=Appearance.sample(scene), size=size[0]), state.to_dict()


def _slug(goal: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", goal.lower()).strip("-")[:40] or "run"


def run(
    goal: str | None = None,
    image: str | Path | None = None,
    scene: int | None = None,
    config: str | Path | Config | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    mode: str | None = None,
    resume: str | Path | None = None,
    overrides: list[str] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> RunRecord:
    """Run SPIRAL on a goal from a first frame (an image file or a tabletop scene seed)."""
    if resume is not None:
        rd = RunDir.open(resume)
        meta = rd.meta
        cfg = load_config(rd.path / "config.yaml")
        goal, first, state0 = meta["goal"], rd.first_frame(), meta.get("initial_state")
    else:
        if not goal or not goal.strip():
            raise ValueError("the goal is empty; say what should happen, e.g. 'put the red block in the box'")
        extra = list(overrides or [])
        if seed is not None:
            extra.append(f"loop.seed={seed}")
        if mode is not None:
            extra.append(f"loop.mode={mode}")
        cfg = resolve_config(config, extra)
        size = (cfg.video.height, cfg.video.width)
        if image is not None:
            first, state0 = load_image(image, size), None
        else:
            scene = 0 if scene is None else scene
            first, state0 = scene_frame(scene, size)
        _validate_goal(cfg, goal)
        for kind in ("planner", "generator", "critic"):  # unknown backend names fail before anything is written
            registry.resolve(kind, getattr(cfg, kind).name)
        out = Path(out) if out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(goal)}"
        meta: dict[str, Any] = {"goal": goal, "scene": scene, "image": str(image) if image else None,
                                "initial_state": state0}
        rd = RunDir.create(out, meta, dump_config(cfg), first)
    _LAST_RUN.append(rd.path)
    agents = build_agents(cfg)
    # The loop reads the start state from the frame when the critic can; the scene's truth is a fallback.
    observed = None if hasattr(agents.critic, "observe") else state0
    scene_seed = rd.meta.get("scene")
    hints = {"scene_seed": scene_seed} if scene_seed is not None else {}
    record, video = run_loop(goal, first, agents, cfg, rd, initial_state=observed, on_event=on_event, hints=hints)
    finish(rd, record, video, cfg)
    return record


def _validate_goal(cfg: Config, goal: str) -> None:
    """Fail before anything is written when the symbolic planner cannot read the goal."""
    if cfg.planner.name == "symbolic":
        from spiral.world.goals import parse_goal

        parse_goal(goal)


def finish(rd: RunDir, record: RunRecord, video: np.ndarray, cfg: Config) -> None:
    """Write final.mp4, record.json and report.html."""
    from spiral import atomic
    from spiral.video import write_video

    write_video(rd.path / "final.mp4", video, cfg.video.fps, quality="web")
    record.final_video = "final.mp4"
    atomic.write_text(rd.path / "record.json", record.model_dump_json(indent=2))
    if cfg.output.report:
        from spiral.report import write_report

        write_report(rd.path)
