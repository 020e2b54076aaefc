"""Python API mirroring the CLI: ``spiral.run(goal, image=..., scene=..., config=..., out=...)``.

Everything a run is given is checked before its folder is created: the config with every backend's options,
the first image, the goal, the output folder, and the agents themselves (building them loads and checks their
weights). A resume refuses what would differ from the run it continues (:func:`check_resume`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spiral import registry
from spiral.agents import ObservesState
from spiral.config import DEFAULT_CONFIG, Config, config_with_overrides, dump_config, load_config
from spiral.loop import Agents, Event, run_loop
from spiral.rundir import RunDir
from spiral.types import RunRecord, TaskGoal

_LAST_RUN: list[Path] = []


def last_run_dir() -> Path:
    """The directory of the most recent run in this process (the CLI prints it)."""
    return _LAST_RUN[-1]


def runs_started() -> int:
    """How many run folders this process has created or opened (the CLI tells a new one from none)."""
    return len(_LAST_RUN)


__all__ = ["DEFAULT_CONFIG", "run", "check_resume", "resolve_config", "build_agents", "load_image", "scene_frame",
           "last_run_dir", "runs_started"]


def resolve_config(config: str | Path | Config | None, overrides: list[str] | None = None) -> Config:
    """A Config from an object, a YAML path (read on top of the embedded default), or the embedded default."""
    if isinstance(config, Config):
        return config_with_overrides(config, overrides or [])
    return load_config(config, overrides)


def build_agents(cfg: Config) -> Agents:
    """Instantiate the configured backends by name: the planner and the critic first, and those that talk to an
    endpoint asked whether it answers (``spiral.agents.check_health``), so that a dead endpoint fails in seconds,
    before the generator loads its weights."""
    from spiral.agents import check_health

    planner = registry.create("planner", cfg.planner.name, **cfg.planner.options)
    critic = registry.create("critic", cfg.critic.name, **cfg.critic.options)
    check_health(planner=planner, critic=critic)
    generator = registry.create("generator", cfg.generator.name, **cfg.generator.options)
    return Agents(planner=planner, generator=generator, critic=critic)


MAX_IMAGE_PIXELS = 50_000_000  # a 48-megapixel phone photo passes (a 7000x7000 PNG: peak RSS 0.6 GB, 2.3 s)


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a first frame as RGB uint8 at the run's ``size`` (height, width), resized with bicubic filtering.

    Accepted: RGB, RGBA and palette images (PNG, JPEG, ... whatever PIL reads), turned upright by their EXIF
    orientation; transparent pixels are composited over black. Grey-scale and other modes are refused, and so
    are images above ``MAX_IMAGE_PIXELS``, before they are decoded (a huge PNG would take gigabytes).
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    limit = f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; downscale it first (the run uses {size[1]}x{size[0]})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image {path} is {img.width}x{img.height} pixels: too large; {limit}")
            img.load()
    except Image.DecompressionBombError as e:  # PIL refuses far larger ones itself while reading the header
        n = re.search(r"\((\d+) pixels\)", str(e))
        size_text = f"{int(n.group(1)) / 1e6:.0f} megapixels" if n else "far too many pixels"
        raise ValueError(f"image {path} has {size_text}: too large; {limit}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if img.mode not in ("RGB", "RGBA", "P", "PA"):
        raise ValueError(f"image {path} is {img.mode}, not RGB; convert it (e.g. PIL: img.convert('RGB'))")
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA")).convert("RGB")
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
    build: Callable[[Config], Agents] = build_agents,
) -> RunRecord:
    """Run SPIRAL on a goal from a first frame (an image file or a tabletop scene seed).

    Every input is checked before the run folder is created, the agents included (building them loads and
    checks their weights). ``resume`` continues a killed run; anything else given with it must match the run
    (:func:`check_resume`), except ``--set`` of the settings in ``spiral.config.RESUME_SAFE``, which the run
    then records. ``build`` makes the agents from the run's config (a bench worker passes its
    :class:`spiral.bench.workers.AgentCache`, which hands the same agents to every case with the same config).
    """
    if resume is not None:
        rd = RunDir(resume)
        rd.check_is_run()
        cfg, changes = check_resume(rd, goal=goal, image=image, scene=scene, config=config, out=out, seed=seed,
                                    mode=mode, overrides=overrides or [])
        rd = RunDir.open(resume)
        meta = rd.meta
        task, first, state0 = TaskGoal.read(meta["goal"]), rd.first_frame(), meta.get("initial_state")
        agents = build(cfg)
        if changes:
            rd.record_resume(changes, dump_config(cfg))
    else:
        if not isinstance(goal, str) or not goal.strip():
            raise ValueError("the goal is empty; say what should happen, e.g. 'put the red block in the box'")
        if image is not None and scene is not None:
            raise ValueError("give either an image or a scene, not both")
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
        task = read_goal(cfg, goal)
        out = Path(out) if out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(goal)}"
        RunDir.check_new(out)
        agents = build(cfg)
        _preflight(agents, cfg, first)
        meta: dict[str, Any] = {"goal": goal, "scene": scene, "image": str(image) if image else None,
                                "initial_state": state0}
        rd = RunDir.create(out, meta, dump_config(cfg), first)
    _LAST_RUN.append(rd.path)
    # The loop reads the start state from the frame when the critic can; the scene's truth is a fallback.
    observed = None if isinstance(agents.critic, ObservesState) else state0
    scene_seed = rd.meta.get("scene")
    hints = {"scene_seed": scene_seed} if scene_seed is not None else {}
    record, video = run_loop(task, first, agents, cfg, rd, initial_state=observed, on_event=on_event, hints=hints)
    if record.status == "success" and not record.attempts and not record.stop_reason:
        record.stop_reason = "the goal already holds in the first frame: nothing to generate"
    record.resumes = rd.meta.get("resumes", [])
    finish(rd, record, video, cfg)
    return record


def check_resume(rd: RunDir, *, goal: str | None = None, image: str | Path | None = None, scene: int | None = None,
                 config: str | Path | Config | None = None, out: str | Path | None = None, seed: int | None = None,
                 mode: str | None = None, overrides: Sequence[str] = ()) -> tuple[Config, dict[str, list[Any]]]:
    """The config a resume of ``rd`` runs with, and what ``--set`` changed ({key: [old, new]}).

    A goal, first frame, config, seed or mode that differs from the run's is refused (ValueError naming it):
    the journal would replay the old run under the new name. A ``--set`` may change only a key of
    ``spiral.config.RESUME_SAFE``; one that repeats the run's value is accepted and changes nothing.
    """
    from spiral.config import RESUME_SAFE, flat, split_override

    meta = rd.meta
    run_cfg = load_config(rd.path / "config.yaml")

    def refuse(why: str) -> None:
        raise ValueError(f"--resume {rd.path}: {why}; leave it out to continue the run as it was, or start a new "
                         "run to change it")

    if goal is not None and goal.strip() != str(meta.get("goal", "")).strip():
        refuse(f"the run's goal is {meta.get('goal')!r}, not {goal!r}")
    if out is not None and Path(out).resolve() != rd.path.resolve():
        refuse(f"--out {out} is not the run's folder")
    if scene is not None and scene != meta.get("scene"):
        started = f"scene {meta['scene']}" if meta.get("scene") is not None else f"image {meta.get('image')}"
        refuse(f"--scene {scene}: the run started from {started}")
    if image is not None:
        if meta.get("image") is None:
            refuse(f"--image {image}: the run started from scene {meta.get('scene')}")
        if not np.array_equal(load_image(image, (run_cfg.video.height, run_cfg.video.width)), rd.first_frame()):
            refuse(f"--image {image} is not the run's first frame (it started from {meta.get('image')})")
    if config is not None:
        given, have = flat(resolve_config(config)), flat(run_cfg)
        diff = sorted(k for k in set(given) | set(have) if given.get(k) != have.get(k))
        if diff:
            refuse(f"--config {config} differs from the run's config.yaml at {', '.join(diff[:3])}"
                   f"{' ...' if len(diff) > 3 else ''}")
    if seed is not None and seed != run_cfg.loop.seed:
        refuse(f"--seed {seed}: the run's seed is {run_cfg.loop.seed}")
    if mode is not None and mode != run_cfg.loop.mode:
        refuse(f"--mode {mode}: the run's mode is {run_cfg.loop.mode}")
    new_cfg = config_with_overrides(run_cfg, list(overrides))
    before, after = flat(run_cfg), flat(new_cfg)
    changed = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)}
    for key, (old, new) in changed.items():
        if key not in RESUME_SAFE:
            given = next((o for o in reversed(list(overrides)) if _names(split_override(o)[0], key)), key)
            refuse(f"--set {given} would change {key} ({old!r} -> {new!r}), which the journal depends on; a resume "
                   f"may change only {', '.join(RESUME_SAFE)}")
    return new_cfg, changed


def _names(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _preflight(agents: Agents, cfg: Config, first: np.ndarray) -> None:
    """Ask a generator that can tell whether it can make the run's segments, before the folder exists."""
    from spiral.agents import ChecksRequests
    from spiral.types import GenerationRequest

    if isinstance(agents.generator, ChecksRequests):
        agents.generator.check_request(GenerationRequest(
            prompt="preflight", cond_frame=first, anchor_frame=first, num_frames=cfg.video.frames_per_step,
            height=cfg.video.height, width=cfg.video.width))


def read_goal(cfg: Config, goal: str) -> TaskGoal:
    """The goal read once, for every later plan, re-plan and goal check; fails before anything is written when the
    symbolic planner cannot read it (GoalParseError names the clause)."""
    return TaskGoal.read(goal, required=cfg.planner.name == "symbolic")


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
