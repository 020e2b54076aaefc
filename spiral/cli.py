"""The ``spiral`` command line (typer + rich). Every failure ends with one line naming the cause."""

from __future__ import annotations

import contextlib
import functools
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SPIRAL: plan, generate, reflect.")
world_app = typer.Typer(no_args_is_help=True, help="The embedded tabletop world.")
data_app = typer.Typer(no_args_is_help=True, help="ActVideoGen-Dataset: build, import, check, stats.")
app.add_typer(world_app, name="world")
app.add_typer(data_app, name="data")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate agents (critic, planner).")
app.add_typer(eval_app, name="eval")
console = Console()
err_console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # escaped: a message may quote brackets ("'segment' must be [start, end]") that rich would eat as markup
    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly(fn: Callable) -> Callable:
    """Turn expected errors (bad input, missing files) into one red line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError) as e:
            _fail(_one_line(e))

    return wrapper


def _one_line(e: Exception) -> str:
    """The message of an error on one line; a pydantic error names each bad field and why (its first line only
    says how many there are)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return f"{e.title}: " + "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _scene_state(scene: int):
    import numpy as np

    from spiral.world.tasks import sample_state

    return sample_state(np.random.default_rng(scene))


def _plan_table(plan) -> Table:
    t = Table(title=f"plan: {plan.goal}", show_lines=False)
    t.add_column("step", justify="right")
    t.add_column("action")
    t.add_column("pre", style="cyan")
    t.add_column("post", style="green")
    for s in plan.steps:
        t.add_row(str(s.id + 1), s.text, "\n".join(s.preconditions), "\n".join(s.postconditions))
    return t


@app.command()
@friendly
def plan(
    goal: str = typer.Argument(..., help="natural-language goal"),
    scene: int = typer.Option(0, help="scene seed (tabletop layout)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Plan a goal in a tabletop scene and print the sub-actions with pre/post-conditions."""
    from spiral.planners.symbolic import SymbolicPlanner

    state = _scene_state(scene)
    p = SymbolicPlanner().plan(goal, state)
    if as_json:
        sys.stdout.write(p.model_dump_json(indent=2) + "\n")
        return
    console.print(f"scene {scene}: {state}", highlight=False)
    console.print(_plan_table(p))


@world_app.command("render")
@friendly
def world_render(
    goal: str = typer.Argument(..., help="natural-language goal"),
    scene: int = typer.Option(0, help="scene seed"),
    out: Path = typer.Option(Path("video.mp4"), help="output mp4"),
    seed: int = typer.Option(0, help="motion seed"),
    resolution: int = typer.Option(64, help="frame size in pixels"),
    frames: int = typer.Option(9, help="frames per step"),
) -> None:
    """Render the ground-truth video of a goal's plan."""
    from spiral.planners.symbolic import SymbolicPlanner
    from spiral.video import write_video
    from spiral.world.render import Appearance, render_plan

    state = _scene_state(scene)
    p = SymbolicPlanner().plan(goal, state)
    video, bounds, _ = render_plan(state, p, appearance=Appearance.sample(scene), seed=seed, size=resolution, frames=frames)
    write_video(out, video, 8.0, quality="web")
    console.print(f"{len(p.steps)} steps, {len(video)} frames → {out}")


@data_app.command("build")
@friendly
def data_build(
    out: Path = typer.Option(..., help="dataset folder to write"),
    world: str = typer.Option("tabletop", help="world to render (only 'tabletop')"),
    episodes: int = typer.Option(100, help="number of episodes"),
    seed: int = typer.Option(0, help="build seed; use disjoint seeds for train/val/test"),
    resolution: int = typer.Option(64, help="frame size"),
    failures: float = typer.Option(0.0, help="rate of labelled failure clips per step"),
    frames: int = typer.Option(9, help="frames per step"),
    min_steps: int = typer.Option(1, help="shortest plan"),
    max_steps: int = typer.Option(8, help="longest plan"),
    split: str = typer.Option("train", help="split name written into the manifest"),
) -> None:
    """Render tabletop episodes (mp4 + manifest.jsonl), with labelled failures at the given rate."""
    from spiral.data.build import BuildConfig, build_tabletop

    if world != "tabletop":
        _fail(f"unknown world {world!r}; only 'tabletop' is built in (use your own videos + annotations otherwise)")
    cfg = BuildConfig(episodes=episodes, seed=seed, resolution=resolution, failures=failures, frames_per_step=frames,
                      min_steps=min_steps, max_steps=max_steps, split=split)
    eps = build_tabletop(out, cfg)
    n_fail = sum(1 for e in eps if e.parent)
    console.print(f"wrote {len(eps) - n_fail} episodes and {n_fail} failure clips to {out}")


@data_app.command("check")
@friendly
def data_check(
    root: Path = typer.Argument(..., help="dataset folder"),
    fast: bool = typer.Option(False, "--fast", help="read each video's header only instead of decoding every frame"),
) -> None:
    """Validate every manifest line (fields, paths, objects and states of the tabletop world, every video decoded
    with the frames its steps need); bad lines are reported by number, the rest stay usable."""
    from spiral.data.format import check_dataset

    report = check_dataset(root, decode=not fast)
    for e in report.errors:
        err_console.print(f"[red]✗[/] {e}", highlight=False)
    steps = sum(len(e.steps) for e in report.episodes)
    console.print(f"{len(report.episodes)} usable episodes ({steps} steps), {len(report.errors)} bad lines"
                  + (" (videos not decoded: --fast)" if fast else ""))
    if report.errors:
        raise typer.Exit(1)


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size {text!r} must be HEIGHTxWIDTH, e.g. 480x832")
    return int(parts[0]), int(parts[1])


@data_app.command("import")
@friendly
def data_import(
    format: str = typer.Argument(..., help="coin | crosstask | ego4d-goalstep | csv | jsonl"),
    source: Path = typer.Argument(..., help="annotation file (COIN.json, goalstep_*.json, .csv, .jsonl) or the "
                                            "CrossTask release folder"),
    videos: Path = typer.Option(..., help="folder of the source videos (<video id>.<ext> anywhere below it)"),
    out: Path = typer.Option(..., help="dataset folder to write; run again with the same settings to resume"),
    fps: float | None = typer.Option(None, help="frame rate of the clips (default: each video's own)"),
    size: str | None = typer.Option(None, help="HEIGHTxWIDTH of the clips, e.g. 480x832 (default: the source's)"),
    quality: str = typer.Option("web", help="clip encoding: web (H.264 4:2:0) or data (near-lossless 4:4:4)"),
    level: str = typer.Option("step", help="ego4d-goalstep: step or substep"),
    parse: bool = typer.Option(True, "--parse/--no-parse", help="fill verb/objects from each step's text"),
    workers: int = typer.Option(1, help="parallel processes"),
    ray: str | None = typer.Option(None, help="Ray cluster address (auto, ray://host:port) or 'local'"),
    limit: int | None = typer.Option(None, help="only the first N episodes"),
) -> None:
    """Import annotated procedural videos (COIN, CrossTask, Ego4D GoalStep, CSV/JSONL) into an ActVideoGen-Dataset:
    each episode's span cut by seeking, resampled, checked; skipped videos are listed with their reason."""
    from rich.markup import escape

    from spiral.data.import_videos import REPORT, ImportConfig, import_dataset

    cfg = ImportConfig(format=format, source=source, videos=videos, out=out, fps=fps, size=_size(size),
                       quality=quality, level=level, parse_steps=parse, workers=workers, ray=ray, limit=limit)
    res = import_dataset(cfg)
    shown = 20  # a large source with many missing videos would flood the terminal: the report has every line
    for kind, items, text in (("[yellow]skipped[/]", res.skipped, "reason"), ("[dim]note[/]", res.notes, "note")):
        for s in items[:shown]:
            err_console.print(f"{kind} {escape(s['id'])}: {escape(s[text])}", highlight=False)
        if len(items) > shown:
            err_console.print(f"{kind} … and {len(items) - shown} more in {out / REPORT}", highlight=False)
    console.print(f"{len(res.imported)} episodes imported, {len(res.resumed)} already done, {len(res.skipped)} "
                  f"skipped → {out} (report: {out / REPORT}; check with `spiral data check {out}`)")
    if not res.imported and not res.resumed:
        raise typer.Exit(1)


@data_app.command("stats")
@friendly
def data_stats(
    root: Path = typer.Argument(..., help="dataset folder"),
    as_json: bool = typer.Option(False, "--json", help="print the numbers as JSON instead of tables"),
) -> None:
    """Counts, durations and step-length histograms of a dataset (from the manifest and video headers)."""
    import json

    from spiral.data.stats import dataset_stats, stats_tables

    stats = dataset_stats(root)
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    for t in stats_tables(stats):
        console.print(t)


class _LiveView:
    """Rich live view of a run: current step, attempt and decision; one line per decision. It appears with the
    first plan, so input that is refused before the run starts prints nothing but its error line."""

    COLORS = {"accept": "green", "refine": "yellow", "regenerate": "magenta", "replan": "cyan"}

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("planning", total=None)
        self.started = False

    def __enter__(self) -> _LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.stop()

    def __call__(self, e: dict) -> None:
        if not self.started:
            self.started = True
            self.progress.start()
        if e["type"] == "plan":
            why = f" (re-plan after {e['reason']})" if e.get("reason") else ""
            self.progress.console.print(f"[bold]plan v{e['version']}[/]{why}: {len(e['plan'].steps)} steps")
            self.progress.update(self.task, total=len(e["plan"].steps), completed=0, description="generating")
        elif e["type"] == "attempt":
            v, d, r = e["verdict"], e["decision"], e.get("response") or e["decision"]
            fb = f" — {v.feedback}" if v is not None and v.feedback and d != "accept" else ""
            loop = f"; loop: [bold]{r}[/] ({e['note']})" if r != d else ""
            self.progress.console.print(
                f"  step {e['step'] + 1}/{e['n_steps']} attempt {e['attempt'] + 1}: {e['text']} → "
                f"[{self.COLORS.get(d, 'white')}]{d}[/]{fb}{loop}", highlight=False)
            self.progress.update(self.task, completed=e["step"] + (d == "accept"),
                                 description=f"step {e['step'] + 1}: {e['text'][:40]}")
        elif e["type"] == "fallback":
            fb = e["fallback"]
            self.progress.console.print(f"  [yellow]open-loop fallback {'used' if fb.used else 'not used'}[/]: "
                                        f"{fb.reason}", highlight=False)
        elif e["type"] == "give_up":
            g = e["given_up"]
            what = f"kept its best attempt as [bold]unverified[/] ({g.kept})" if g.kept else "stopping here"
            self.progress.console.print(f"  [yellow]step {g.step + 1} of plan v{g.plan_version} given up[/] "
                                        f"({g.sub_action.text}) after {g.attempts} attempt(s) ({g.reason}): {what}",
                                        highlight=False)


_STATUS_STYLE = {"success": "green", "completed_unverified": "yellow"}


def _summary(record, out: Path) -> Table:
    from rich.markup import escape

    label = "stopped because" if record.status != "success" else "note"
    t = Table(title="run summary", show_header=False, caption_justify="left",
              caption=escape(f"{label}: {record.stop_reason}") if record.stop_reason else None)
    t.add_row("status", f"[{_STATUS_STYLE.get(record.status, 'red')}]{record.status}[/]")
    for r in record.resumes:
        t.add_row("changed on resume", escape(", ".join(f"{k}: {a} -> {b}" for k, (a, b) in r["changed"].items())))
    for k in ("generations", "accepted", "replans"):
        t.add_row(k, str(record.counts.get(k, 0)))
    if record.unverified:
        t.add_row("[yellow]unverified steps[/]", f"{len(record.unverified)} of {len(record.accepted)} kept steps: "
                  "no critic passed them")
    for g in record.given_up:
        kept = f"kept unverified: {g.kept}" if g.kept else "not kept (on_budget_exhausted: stop)"
        why = f"; last critic verdict: {g.failure}, {g.feedback}" if g.failure or g.feedback else ""
        t.add_row(f"[yellow]given up[/]: {g.sub_action.text}", f"{g.attempts} attempt(s), {g.reason}{why}; {kept}")
    if record.fallback is not None:
        t.add_row("[yellow]open-loop fallback[/]", ("used: the first plan rolled out open loop is the video" if
                                                    record.fallback.used else "not used: the closed loop's video is kept"))
    t.add_row("generations / accepted step", f"{record.costs.get('generations_per_accepted_step', 0):.2f}")
    t.add_row("seconds (generate / judge / wall)", " / ".join(
        f"{record.costs.get(k + '_seconds', 0):.2f}" for k in ("generate", "judge", "wall")))
    t.add_row("final video", str(out / "final.mp4"))
    if (out / "report.html").exists():
        t.add_row("report", str(out / "report.html"))
    return t


@app.command()
@friendly
def run(
    goal: str | None = typer.Argument(None, help="natural-language goal (omit with --resume)"),
    scene: int | None = typer.Option(None, help="tabletop scene seed for the first frame"),
    image: Path | None = typer.Option(None, help="first frame: an RGB, RGBA or palette PNG/JPEG up to 50 megapixels "
                                       "(transparent pixels become black)"),
    config: Path | None = typer.Option(None, help="YAML config (default: configs/run/tabletop.yaml)"),
    out: Path | None = typer.Option(None, help="run directory (default: runs/<time>-<goal>)"),
    seed: int | None = typer.Option(None, help="run seed"),
    mode: str | None = typer.Option(None, help="closed_loop | plan_only | single_shot"),
    resume: Path | None = typer.Option(None, help="continue a killed run from its directory"),
    set_: list[str] = typer.Option([], "--set", help="config override a.b=c (repeatable)"),
) -> None:
    """Run the think-act-reflect loop on a goal and write a run directory with final.mp4 and report.html.

    Exit status: 0 the plan was carried out and every step the critic checked passed (open-loop modes check
    none); 3 the closed loop kept unverified steps (the whole video is written; the summary says which); 1 the run
    stopped before the end of its plan; 2 bad input.
    """
    import spiral.api as api

    if resume is None and goal is None:
        _fail("give a GOAL, or --resume RUN_DIR to continue a run")
    if scene is not None and image is not None:
        _fail("give either --scene or --image, not both")
    with _interruptible(api), _LiveView() as view:
        record = api.run(goal, image=image, scene=scene, config=config, out=out, seed=seed, mode=mode,
                         resume=resume, overrides=set_, on_event=view)
    console.print(_summary(record, api.last_run_dir()))
    if record.status == "completed_unverified" and record.mode == "closed_loop":
        raise typer.Exit(3)
    if record.status not in ("success", "completed_unverified"):
        raise typer.Exit(1)


@contextlib.contextmanager
def _interruptible(api) -> Iterator[None]:
    """Ctrl-C: one line saying how to continue (the journal keeps every finished attempt), exit 130."""
    before = api.runs_started()
    try:
        yield
    except KeyboardInterrupt:
        if api.runs_started() > before:
            _fail(f"interrupted; continue with: spiral run --resume {shlex.quote(str(api.last_run_dir()))}", 130)
        _fail("interrupted before the run folder was created; nothing was written", 130)


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output folder (a previous demo run there is replaced)"),
    goal: str = typer.Option("put the red block in the box and close it, then turn on the lamp", help="goal"),
    scene: int = typer.Option(3, help="scene seed"),
    seed: int = typer.Option(0, help="run seed"),
) -> None:
    """Run the closed loop on a sample goal with the embedded default and print where the report is."""
    import shutil

    import spiral.api as api
    from spiral.rundir import RUN_MARKER

    if out.exists() and (out / RUN_MARKER).is_file():
        shutil.rmtree(out)  # only ever a previous demo run: RunDir.create refuses any other non-empty folder
    with _interruptible(api), _LiveView() as view:
        record = api.run(goal, scene=scene, out=out, seed=seed, on_event=view)
    console.print(_summary(record, out))
    console.print(f"open the report: {(out / 'report.html').resolve()}", highlight=False)


@app.command()
@friendly
def report(run_dir: Path = typer.Argument(..., help="a run folder written by `spiral run`")) -> None:
    """Re-render a run's self-contained report.html and print its path."""
    from spiral.report import write_report

    typer.echo(str(write_report(run_dir)))  # plain: a path with [brackets] is not rich markup


# ActVideoGen-Bench (spiral/bench/cli.py): `spiral bench`, `spiral bench compare`, `spiral eval planner`
from spiral.bench import cli as _bench_cli  # noqa: E402

app.add_typer(_bench_cli.make_bench_app(friendly), name="bench")
eval_app.command("planner")(friendly(_bench_cli.eval_planner))


# Training (spiral/train/): `spiral train generator`
train_app = typer.Typer(no_args_is_help=True, help="Train the embedded models.")
app.add_typer(train_app, name="train")


def _sets(items: list[str], example: str) -> list[str]:
    """``--set KEY=VALUE`` options of a training config, checked for their form (spiral.config parses them)."""
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: write KEY=VALUE, e.g. --set {example}")
    return items


def _given_once(sets: list[str], options: dict[str, object], flags: dict[str, str] | None = None) -> dict:
    """The options given on the command line (not None); a key set both by an option and by --set is refused."""
    keys = {item.partition("=")[0].strip() for item in sets}
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key in keys:
            flag = (flags or {}).get(key, f"--{key.replace('_', '-')}")
            raise typer.BadParameter(f"--set {key}=… and {flag} both set {key}; give it once")
    return given


@train_app.command("generator")
@friendly
def train_generator_cmd(
    config: Path | None = typer.Option(None, help="trainer config YAML (keys of spiral.train.generator.TrainConfig; "
                                       "the shipped weights' recipe: configs/train/generator-tiny.yaml)"),
    data: str | None = typer.Option(None, help="dataset folder from `spiral data build` (success clips are used), or "
                                    "world:EPISODES[:SEED] to render that many episodes in memory on all cores"),
    out: Path | None = typer.Option(None, help="run folder: checkpoint/, samples/, log.jsonl, tiny.safetensors, tiny.md"),
    steps: int | None = typer.Option(None, help="total optimizer steps (the cosine schedule spans them)"),
    batch: int | None = typer.Option(None, help="clips per step"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    minutes: float | None = typer.Option(None, help="wall-time budget of the whole run; the LR cosine ends with it"),
    seed: int | None = typer.Option(None, help="seed of the model init and of every data/noise draw"),
    lr: float | None = typer.Option(None, help="peak AdamW learning rate"),
    ckpt_every: int | None = typer.Option(None, help="checkpoint every N steps"),
    sample_every: int | None = typer.Option(None, help="val loss + sample strip PNG every N steps"),
    dim: int | None = typer.Option(None, help="transformer width (heads = dim // 64)"),
    depth: int | None = typer.Option(None, help="transformer blocks"),
    tubelet: int | None = typer.Option(None, help="new frames per token (4: two time slices of 64 patches; 8: one)"),
    threads: int = typer.Option(2, help="torch CPU threads (0: torch's default); on a busy machine 1 is faster"),
    device: str | None = typer.Option(None, help="cpu or cuda"),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the training forward (~2 min to compile)"),
    text_table: Path | None = typer.Option(None, help="precomputed text embeddings (spiral.models.text.write_text_table) "
                                           "for a machine without the text encoder's weights"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set model.depth=4 (YAML value)"),
) -> None:
    """Train the tiny flow-matching video generator; exports EMA weights as OUT/tiny.safetensors + model card.
    Defaults: spiral.train.generator.TrainConfig (each field says what it does)."""
    import os

    # OpenMP threads that spin while they wait steal the CPU on a shared machine (10× slower at load 3 on 2 cores);
    # this only takes effect if torch is not loaded yet, which is the case for this command.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from spiral.config import load_yaml_model
    from spiral.train.generator import TrainConfig, train_generator

    if threads:
        torch.set_num_threads(threads)
    sets = _sets(set_, "batch=64")
    if config is None and (data is None or out is None):
        raise ValueError("train generator needs --data (a dataset folder or world:EPISODES[:SEED]) and --out, or "
                         "--config FILE (e.g. configs/train/generator-tiny.yaml) that names them")
    given = _given_once(sets, {"data": data, "out": str(out) if out else None, "steps": steps, "batch": batch,
                               "lr": lr, "ckpt_every": ckpt_every, "sample_every": sample_every, "minutes": minutes,
                               "seed": seed, "device": device, "compile": compile_ or None})
    model = {k: v for k, v in (("dim", dim), ("depth", depth), ("tubelet", tubelet)) if v is not None}
    if dim is not None:
        model["heads"] = max(1, dim // 64)
    sets += [f"model.{k}={v}" for k, v in model.items()]  # after the file's and --set's own model keys
    cfg = load_yaml_model(TrainConfig, config, sets, what="generator config", **given)
    encoder = None
    if text_table is not None:
        from spiral.models.text import TableEncoder

        encoder = TableEncoder(text_table)
    res = train_generator(cfg, resume=resume, text_encoder=encoder)
    t = Table(title="generator training", show_header=False)
    for k in ("step", "samples", "seconds", "total_seconds", "loss", "val_loss", "weights"):
        v = res.get(k)
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) and k.endswith("loss") else
                  f"{v:.0f}" if isinstance(v, float) else str(v))
    console.print(t)
    console.print(f"ship it: cp {res['weights']} spiral/models/weights/ && cp {Path(cfg.out) / 'tiny.md'} "
                  f"spiral/models/weights/")


# ---- the critic's recogniser, the benchmark judge, and critic evaluation (spiral/train, spiral/bench/critic_eval.py)
def _train_recognizer(role: str, out: Path | None, steps: int | None, minutes: float | None, seed: int | None,
                      arch: str | None, resume: bool, checkpoints: Path | None) -> None:
    from spiral.train.recognizer import TrainConfig, judge_config, train

    kw = {"out": out, "steps": steps, "minutes": minutes, "seed": seed, "arch": arch, "resume": resume,
          "ckpt_dir": checkpoints}
    cfg = judge_config(**kw) if role == "judge" else TrainConfig(**{k: v for k, v in kw.items() if v is not None})
    m = train(cfg, log=lambda msg: console.print(msg, highlight=False))
    t = Table(title=f"{role} recogniser: held-out accuracy")
    t.add_column("attribute")
    for kind in ("clean", "generator"):
        t.add_column(kind, justify="right")
    for key in ("loc_acc", "loc_rest_acc", "loc_moving_acc", "lid_acc", "light_acc", "pull_acc", "state_acc"):
        t.add_row(key, *(f"{m[kind].get(key, float('nan')):.4f}" for kind in ("clean", "generator")))
    console.print(t)
    console.print(f"weights: {cfg.out}\ncard:    {Path(cfg.out).with_suffix('.md')}")


@train_app.command("grpo")
@friendly
def train_grpo_cmd(
    config: Path = typer.Option(..., help="GRPO config YAML (see configs/train/grpo-tiny.yaml; keys of GRPOConfig)"),
    resume: Path | None = typer.Option(None, help="continue the run in this folder (its config must match)"),
    out: Path | None = typer.Option(None, help="run folder (overrides the config's out)"),
    steps: int | None = typer.Option(None, help="total GRPO steps (overrides the config)"),
    minutes: float | None = typer.Option(None, help="stop after this much wall time (a checkpoint is written)"),
    device: str | None = typer.Option(None, help="cpu or cuda (overrides the config)"),
    export: Path | None = typer.Option(None, help="where the evolved weights go (default OUT/evolved.safetensors; a "
                                  "diffusers LoRA: the folder OUT/evolved/, for generator.options.lora)"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set prompts_per_step=16 or "
                                   "--set reward_weights.action=2 (YAML value)"),
) -> None:
    """Self-evolution: Flow-GRPO on PlanAgent sub-actions with CriticAgent rewards (torchrun for several ranks)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from spiral.train.grpo import load_config, train_grpo

    if threads:
        torch.set_num_threads(threads)
    sets = _sets(set_, "group_size=4")
    given = _given_once(sets, {"out": str(resume or out) if (resume or out) else None, "steps": steps,
                               "device": device}, {"out": "--out/--resume"})
    cfg = load_config(config, sets, **given)
    res = train_grpo(cfg, resume=resume is not None, minutes=minutes, export=str(export) if export else None)
    last = res.get("last") or {}
    console.print(f"GRPO: {res['steps']} steps; last reward {last.get('reward_mean', float('nan')):.4f}, "
                  f"critic pass {last.get('critic_pass', float('nan')):.3f}")
    if res.get("weights"):
        console.print(f"evolved weights: {res['weights']}")


@train_app.command("sft")
@friendly
def train_sft_cmd(
    config: Path = typer.Option(..., help="SFT config YAML (see configs/train/sft-wan21-i2v.yaml; keys of SFTConfig)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in the config's out from its checkpoint"),
    minutes: float | None = typer.Option(None, help="stop after this much wall time (a checkpoint is written)"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set steps=500 or "
                                   "--set generator.options.dtype=bfloat16 (YAML value)"),
) -> None:
    """Task-specific fine-tuning (LoRA or full) of a diffusers generator on ActVideoGen-Dataset steps, with the
    model's own objective; the LoRA loads in `spiral run` through generator.options.lora (torchrun for several ranks)."""
    import torch

    from spiral.train.sft import load_config, train_sft

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config, _sets(set_, "steps=500"))
    res = train_sft(cfg, resume=resume, minutes=minutes)
    console.print(f"SFT: {res['steps']} steps; loss {res['first_loss']:.4f} (first step) -> {res['last_loss']:.4f} "
                  "(last step)")
    if res.get("export"):
        console.print(f"exported: {res['export']}")


@train_app.command("reverse")
@friendly
def train_reverse_cmd(
    config: Path = typer.Option(..., help="reversal config YAML (see configs/train/reverse-tiny.yaml; keys of "
                                "ReverseConfig)"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set steps=200 (YAML value)"),
) -> None:
    """Hindsight by time reversal: fine-tune the tiny generator on its own trained moves played backwards, which the
    critic accepts as the PlanAgent's held-out moves (the start for GRPO on moves it could not draw)."""
    import torch

    from spiral.train.reverse import load_config, run_reverse

    if threads:
        torch.set_num_threads(threads)
    res = run_reverse(load_config(config, _sets(set_, "steps=200")))
    console.print(f"reversal: {res['accepted']} of {res['reversible']} reversed clips accepted; "
                  f"{res['steps']} fine-tuning steps\nweights: {res['weights']}")


@train_app.command("aligner")
@friendly
def train_aligner_cmd(
    out: Path | None = typer.Option(None, help="weights file (default: spiral/models/weights/text_aligner.safetensors)"),
    steps: int | None = typer.Option(None, help="full-batch optimiser steps (default 1000: ~7 min on a shared 2-core "
                                     "CPU)"),
    seed: int | None = typer.Option(None, help="seed of the validation split, variants and init (default 0)"),
    set_: list[str] = typer.Option([], "--set", help="override a key of AlignerConfig: --set hidden=256"),
) -> None:
    """Train the text aligner that maps re-worded sub-actions onto their canonical MiniLM vector; then
    regenerate the shipped text table with `python -m spiral.models.text`."""
    from spiral.config import load_yaml_model
    from spiral.models.aligner import ALIGNER_WEIGHTS
    from spiral.train.aligner import AlignerConfig, train_aligner

    sets = _sets(set_, "hidden=256")
    cfg = load_yaml_model(AlignerConfig, None, sets, what="aligner config",
                          **_given_once(sets, {"steps": steps, "seed": seed}))
    rep = train_aligner(out or ALIGNER_WEIGHTS, cfg)
    for k, v in rep["eval_nn_accuracy"].items():
        typer.echo(f"unseen paraphrases, {k} (n={v['n']}): nearest-canonical accuracy "
                   f"{v['mean_pooling']:.3f} (mean pooling) -> {v['aligned']:.3f} (aligned)")
    typer.echo(f"wrote {out or ALIGNER_WEIGHTS} and its .json report ({rep['seconds']} s)")


@train_app.command("recognizer")
@friendly
def train_recognizer(
    out: Path | None = typer.Option(None, help="weights file (default: spiral/models/weights/recognizer.safetensors)"),
    steps: int | None = typer.Option(None, help="optimiser steps (default 4000: ~50 min on a shared 2-core CPU)"),
    minutes: float | None = typer.Option(None, help="wall-time budget for the optimisation (default 120); stops "
                                         "early and checkpoints"),
    seed: int | None = typer.Option(None, help="seed of data, init and augmentation (default 0)"),
    arch: str | None = typer.Option(None, help="network: cnn (default) or cnn-wide"),
    resume: bool = typer.Option(False, help="continue from checkpoints/recognizer/ckpt.pt"),
    checkpoints: Path | None = typer.Option(None, help="checkpoint folder (default checkpoints/recognizer)"),
) -> None:
    """Train the critic's state recogniser on rendered frames; writes weights + model card."""
    _train_recognizer("critic", out, steps, minutes, seed, arch, resume, checkpoints)


@train_app.command("judge")
@friendly
def train_judge(
    out: Path | None = typer.Option(None, help="weights file (default: spiral/models/weights/judge.safetensors)"),
    steps: int | None = typer.Option(None, help="optimiser steps (default 2000, as the shipped judge: ~10 min on a shared 2-core CPU)"),
    minutes: float | None = typer.Option(None, help="wall-time budget for the optimisation (default 120)"),
    seed: int | None = typer.Option(None, help="seed (default 2, as the shipped judge; the critic's is 0)"),
    arch: str | None = typer.Option(None, help="network (default cnn-wide, unlike the critic's cnn)"),
    resume: bool = typer.Option(False, help="continue from checkpoints/judge/ckpt.pt"),
    checkpoints: Path | None = typer.Option(None, help="checkpoint folder (default checkpoints/judge)"),
) -> None:
    """Train the benchmark's independent judge: the recogniser trainer with another arch, seed and augmentations."""
    _train_recognizer("judge", out, steps, minutes, seed, arch, resume, checkpoints)


@eval_app.command("critic")
@friendly
def eval_critic(
    data: Path | None = typer.Option(None, help="labelled dataset folder (spiral data build --failures 0.5 --seed NEW)"),
    degrade: bool = typer.Option(False, help="also judge degraded clips and report the deltas"),
    degradation: str = typer.Option("generator", help="which degradation --degrade applies (see docs/critic_eval.md)"),
    critic: str | None = typer.Option(None, help="critic backend name (default: tabletop, or the --config's)"),
    weights: str | None = typer.Option(None, help="recogniser weights for the tabletop critic: a path or 'judge'"),
    pairs: Path | None = typer.Option(None, help="preference JSONL (default: DATA/pairs.jsonl, built if missing), or "
                                                 "VideoGen-RewardBench's CSV as published (then no --data)"),
    videos: Path | None = typer.Option(None, help="with a CSV: the folder its video paths start from (default: the "
                                                  "CSV's folder)"),
    score: list[str] = typer.Option([], help="with a CSV: DIM=NAME, the critic score standing for a dimension "
                                             "(VQ, MQ, TA, Overall; NAME a verdict score or 'overall'; repeatable)"),
    out: Path | None = typer.Option(None, help="with a CSV: folder for scores.jsonl (resumable) and results.json"),
    config: Path | None = typer.Option(None, help="with a CSV: run config whose critic section is used"),
    set_: list[str] = typer.Option([], "--set", help="with a CSV: config override, e.g. critic.options.model=... "
                                                    "(repeatable)"),
    limit: int | None = typer.Option(None, help="judge only the first N segments"),
    agree_with: str | None = typer.Option(None, help="also run the critic with other weights ('critic', 'judge' or "
                                                     "a path) and report the agreement"),
    card: Path | None = typer.Option(None, help="write the report into this model card's evaluation section"),
    json_out: Path | None = typer.Option(None, "--json", help="write all metrics as JSON"),
    threads: int = typer.Option(1, help="torch CPU threads (1 is fastest for small batches on a shared CPU)"),
) -> None:
    """Score a critic on a held-out labelled set (accuracy, false rejects, per-kind recall, confusion, pairs) or on
    VideoGen-RewardBench's CSV (accuracy with and without ties per dimension, exact and VideoAlign-compatible)."""
    import json

    if pairs is not None and pairs.suffix.lower() == ".csv":
        if data is not None:
            raise ValueError("--data and a CSV --pairs file are two different evaluations; give one of them")
        return _bench_cli.eval_rewardbench(pairs, videos or pairs.parent, critic, score, out, limit, json_out, config,
                                           list(set_))
    if data is None:
        raise ValueError("give --data DIR (a labelled dataset) or --pairs FILE.csv (VideoGen-RewardBench)")
    critic = critic or "tabletop"

    import torch
    from rich.progress import Progress

    torch.set_num_threads(threads)

    from spiral.atomic import write_text
    from spiral.bench import critic_eval as ce

    with Progress(console=err_console, transient=True) as prog:
        def progress(kind: str, total: int):
            task = prog.add_task(f"judging ({kind})", total=total)
            return lambda i: prog.update(task, completed=i)

        result, md = ce.run_eval(data, critic, weights, degradation if degrade else None, pairs, limit, agree_with,
                                 progress)
    console.print(md, highlight=False)
    if card:
        cmd = (f"spiral eval critic --data {data}" + (" --degrade" if degrade else "")
               + (f" --weights {weights}" if weights else "") + (f" --agree-with {agree_with}" if agree_with else ""))
        ce.write_card_section(card, "Held-out labelled set (critic evaluation)",
                              f"`{cmd}` — {data}: successes and every failure kind, seeds disjoint from training "
                              f"(how the set is built and what each metric means: docs/critic_eval.md).\n\n{md}")
        console.print(f"card: {card}")
    if json_out:
        write_text(json_out, json.dumps(result, indent=2))
        console.print(f"metrics: {json_out}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
