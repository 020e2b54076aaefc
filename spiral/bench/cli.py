"""CLI of the benchmark: ``spiral bench`` (+ ``bench compare``) and ``spiral eval planner``.

Kept out of ``spiral/cli.py`` so that file only wires the commands in; everything heavy is
imported when a command runs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def make_bench_app(friendly: Callable) -> typer.Typer:
    """The ``spiral bench`` command group; ``friendly`` turns expected errors into one line."""
    app = typer.Typer(invoke_without_command=True, help="ActVideoGen-Bench: run a suite, compare two runs.")

    @app.callback()
    @friendly
    def bench(
        ctx: typer.Context,
        suite: str | None = typer.Option(None, help="suite name (tabletop-v1, tabletop-v2, tabletop-smoke, tabletop-dev) or a suite .json"),
        config: Path | None = typer.Option(None, help="YAML config (default: configs/run/tabletop.yaml)"),
        mode: str = typer.Option("closed_loop", help="closed_loop | plan_only | single_shot"),
        modes: str | None = typer.Option(None, help="several modes, comma-separated (overrides --mode)"),
        limit: int | None = typer.Option(None, help="only the first N cases"),
        out: Path | None = typer.Option(None, help="output folder (default: runs/bench/<suite>-<time>)"),
        workers: int = typer.Option(1, help="local worker processes"),
        ray: str | None = typer.Option(None, help="Ray cluster address (auto, ray://host:port) or 'local'"),
        gpus_per_worker: float = typer.Option(0.0, help="GPUs each Ray actor asks for (its agents run on them)"),
        resume: bool = typer.Option(False, help="continue a benchmark in --out, skipping finished cases"),
        seed: int = typer.Option(0, help="bench seed: each case's loop seed derives from it and the case id"),
        judge: str = typer.Option("recognizer", help="recognizer | recognizer:PATH | truth | vlm | transformers-vlm | "
                                                          "module:factory"),
        judge_set: list[str] = typer.Option([], "--judge-set", help="an option of the VLM judge, key=value, e.g. "
                                                                    "model=qwen2.5-vl (repeatable)"),
        subject_features: str | None = typer.Option(None, help="judge | pixels | module:factory (DINO, …)"),
        background_features: str | None = typer.Option(None, help="colour-layout | pixels | module:factory (CLIP, …)"),
        features: list[str] = typer.Option([], "--features", help="METRIC=SPEC (repeatable): subject=dino:PATH, "
                                           "background=clip:PATH, motion=vbench, aesthetic=laion:CLIP_PATH,HEAD, "
                                           "imaging=musiq:WEIGHTS (docs/bench.md, VBench comparability)"),
        set_: list[str] = typer.Option([], "--set", help="config override a.b=c (repeatable)"),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ) -> None:
        """Run every case of a suite in each mode, score it with the judge, write results.json + summary.md."""
        if ctx.invoked_subcommand is not None:
            return
        if suite is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(2)
        from spiral.bench.features import FeaturesConfig
        from spiral.bench.runner import BenchConfig, run_bench

        mode_list = [m.strip() for m in (modes or mode).split(",") if m.strip()]
        if out is None:
            out = Path("runs") / "bench" / f"{Path(suite).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        from spiral.config import apply_override

        judge_options: dict = {}
        for item in judge_set:
            apply_override(judge_options, item)
        cfg = BenchConfig(suite=suite, out=str(out), modes=mode_list, config=str(config) if config else None,
                          overrides=list(set_), limit=limit, seed=seed, judge=judge, judge_options=judge_options,
                          subject_features=subject_features, background_features=background_features,
                          features=FeaturesConfig.parse(features).model_dump(exclude_none=True),
                          workers=workers, ray=ray, gpus_per_worker=gpus_per_worker, resume=resume)
        results = run_bench(cfg, progress=not quiet)
        errors = results["errors"]
        if errors and errors[0].get("stage") == "suite":
            raise ValueError(errors[0]["error"])
        console.print(summary_table(results))
        for w in results["bench"].get("warnings", []):
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
        for e in errors:
            console.print(f"[red]✗[/] {e['mode']}/{e['case_id']} ({e['stage']}): {e['error']}", highlight=False)
        for e in results["invalid_cases"]:
            console.print(f"[red]✗[/] invalid case {e['case_id']} field '{e['field']}': {e['error']}; fix: {e['fix']}",
                          highlight=False)
        typer.echo(f"results: {out / 'results.json'}\nsummary: {out / 'summary.md'}")
        if errors or results["invalid_cases"]:
            raise typer.Exit(1)

    @app.command("rescore")
    @friendly
    def rescore_cmd(
        out: Path = typer.Argument(..., help="benchmark folder (made by `spiral bench --out`)"),
        workers: int | None = typer.Option(None, help="local worker processes (default: the folder's own)"),
    ) -> None:
        """Score a finished benchmark again with the current metrics and judge; nothing is generated again."""
        from spiral.bench.runner import rescore_bench

        results = rescore_bench(out, workers)
        console.print(summary_table(results))
        typer.echo(f"results: {out / 'results.json'}\nsummary: {out / 'summary.md'}")

    @app.command("make-suite")
    @friendly
    def make_suite_cmd(
        from_data: Path = typer.Option(..., "--from-data", help="an ActVideoGen-Dataset folder (imported or built)"),
        out: Path = typer.Option(..., help="the suite file to write (its first frames go to frames/ beside it)"),
        world: str = typer.Option("real", help="real (scored by --judge vlm), or tabletop for a tabletop dataset"),
        split: str | None = typer.Option(None, help="only episodes of this split (e.g. test)"),
        limit: int | None = typer.Option(None, help="only the first N cases"),
    ) -> None:
        """Make a suite from a dataset: each episode's first frame, goal and annotated steps (reference plan)."""
        from spiral.bench.suite_from_data import suite_from_dataset

        path, skipped = suite_from_dataset(from_data, out, world, split=split, limit=limit)
        for line in skipped[:10]:
            console.print(f"[yellow]left out[/] {line}", highlight=False)
        typer.echo(f"suite: {path}")

    @app.command("compare")
    @friendly
    def compare_cmd(
        dir_a: Path = typer.Argument(..., help="baseline benchmark folder (or its results.json)"),
        dir_b: Path = typer.Argument(..., help="benchmark folder to compare with it"),
        metric: list[str] = typer.Option([], help="only these metrics (repeatable)"),
        mode_a: str | None = typer.Option(None, help="pair this mode of A (e.g. plan_only) with --mode-b of B, "
                                                     "instead of each mode with itself; A and B may be one folder"),
        mode_b: str | None = typer.Option(None, help="the mode of B paired with --mode-a (e.g. closed_loop)"),
        by_length: bool = typer.Option(False, "--by-length", help="also one row per length class"),
        as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
    ) -> None:
        """Per-metric deltas B − A with paired 95 % bootstrap intervals (cases paired by id, per mode)."""
        from spiral.bench.report import ACTION, COST, LABELS, QUALITY, TEMPORAL, compare

        metrics = tuple(metric) or ACTION + TEMPORAL + QUALITY + COST
        unknown = [m for m in metrics if m not in LABELS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; metrics: {', '.join(LABELS)}")
        rows = compare(dir_a, dir_b, metrics, mode_a, mode_b, by_length)
        if not rows:
            raise ValueError("the two benchmarks share no scored case (same suite and modes?)")
        if as_json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        t = Table(title=f"B − A   (A = {dir_a}, B = {dir_b})")
        for col in ("mode", "length", "metric", "n", "A", "B", "Δ [95 % CI]"):
            t.add_column(col, justify="right" if col in ("n", "A", "B") else "left")
        for r in rows:
            d = r["delta"]
            delta = "–" if d["mean"] is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
            mode = r["mode"] if r["mode_a"] == r["mode"] else f"{r['mode_a']} → {r['mode']}"
            t.add_row(mode, r["length_class"], LABELS[r["metric"]], str(r["n"]), _f(r["a"]), _f(r["b"]),
                      f"[bold]{delta}[/]" if r["significant"] else delta)
        console.print(t)
        console.print("bold: the interval excludes 0")

    return app


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def summary_table(results: dict) -> Table:
    """The end-of-run table: per mode × length class, task completion (judge-read and faithful), step success,
    cost and unverified steps."""
    from spiral.bench.report import _iv, present_classes

    t = Table(title=f"bench {results['bench'].get('suite_name')}: mean [95 % CI]")
    for col in ("mode", "length", "n", "task completion", "faithful task compl.", "step success",
                "gens / accepted step", "unverified steps / video"):
        t.add_column(col)
    classes = present_classes(results["summary"], list(results["summary"]))
    for mode, per in results["summary"].items():
        for cls in (*classes, "all"):
            c = per.get(cls, {})
            tc = _iv(c.get("task_completion"))
            t.add_row(mode, cls, str(tc.n), tc.fmt(), _iv(c.get("faithful_task_completion")).fmt(),
                      _iv(c.get("step_success")).fmt(), _iv(c.get("generations_per_accepted_step")).fmt(),
                      _iv(c.get("unverified_steps")).fmt())
    return t


def eval_planner(
    questions: Path | None = typer.Option(None, help="EgoPlan-Bench JSON as published (EgoPlan_validation.json, "
                                                     "EgoPlan_Bench_*.json, EgoPlan-Bench2) or JSONL (default: the "
                                                     "tabletop set)"),
    planner: str | None = typer.Option(None, help="planner backend name (default: the config's, symbolic)"),
    config: Path | None = typer.Option(None, help="run config whose planner section is used (default: the embedded "
                                                  "configs/run/tabletop.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="config override, e.g. planner.options.model=gpt-4o (repeatable)"),
    epic_kitchens_frames: Path | None = typer.Option(None, help="EPIC-KITCHENS-100 RGB frames folder "
                                                                "(P01/rgb_frames/P01_13/frame_*.jpg)"),
    ego4d_videos: Path | None = typer.Option(None, help="Ego4D videos folder (<video_id>.mp4)"),
    n: int | None = typer.Option(None, help="only the first N questions"),
    predictions: Path | None = typer.Option(None, help="write the answers as EgoPlan's submission JSON "
                                                       "([{sample_id, label}])"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Score a planner on multiple-choice next-step questions (EgoPlan-Bench): accuracy per subset and overall."""
    from spiral.bench.planner_eval import FrameSources, run_eval

    sources = FrameSources(epic_kitchens=epic_kitchens_frames, ego4d=ego4d_videos)
    res = run_eval(questions, planner, n, config, list(set_), sources)
    if predictions:
        from spiral.atomic import write_text

        write_text(predictions, json.dumps(res["predictions"], indent=1) + "\n")
    if as_json:
        sys.stdout.write(json.dumps({k: v for k, v in res.items() if k != "predictions"}, indent=2) + "\n")
        return
    t = Table(title=f"planner {res['planner']}: next-step accuracy")
    t.add_column("subset")
    t.add_column("n", justify="right")
    t.add_column("accuracy", justify="right")
    for name, s in res["subsets"].items():
        t.add_row(name, str(s["n"]), f"{s['accuracy']:.3f}")
    t.add_row("[bold]overall[/]", str(res["n"]), f"[bold]{res['accuracy']:.3f}[/]" if res["accuracy"] is not None
              else "–")
    console.print(t)
    if res["n_unlabelled"]:
        console.print(f"{res['n_unlabelled']} questions have no published answer (answered, not scored)"
                      + (f"; answers: {predictions}" if predictions else "; --predictions FILE writes the answers"))
    if res["wrong_choice_kinds"]:
        console.print(f"wrong answers picked: {res['wrong_choice_kinds']}", highlight=False)
    if res["errors"]:
        console.print(f"[red]{len(res['errors'])} questions could not be answered (counted wrong):[/]")
    for e in res["errors"][:5]:
        console.print(f"[red]✗[/] {e['sample_id']}: {e['error']}", highlight=False)
    for line in res["bad_lines"][:5]:
        console.print(f"[red]✗[/] skipped {line}", highlight=False)


def eval_rewardbench(pairs: Path, videos: Path, critic: str | None, score: list[str], out: Path | None, limit: int | None,
                     json_out: Path | None, config: Path | None = None, overrides: list[str] | None = None) -> None:
    """``spiral eval critic --pairs FILE.csv``: VideoGen-RewardBench as published (spiral/bench/rewardbench.py)."""
    from rich.progress import Progress

    from spiral import registry
    from spiral.bench import rewardbench as rb
    from spiral.config import load_config

    mapping = {}
    for item in score:
        dim, sep, name = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--score {item!r}: write DIM=NAME, e.g. --score VQ=consistency")
        mapping[dim.strip()] = name.strip()
    cfg = load_config(config, ([f"critic.name={critic}"] if critic else []) + list(overrides or []))
    agent = registry.create("critic", cfg.critic.name, **cfg.critic.options)
    with Progress(console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task("scoring videos", total=None)
        result = rb.evaluate(agent, pairs, videos, out, mapping, limit,
                             progress=lambda i, n: prog.update(task, completed=i, total=n))
    console.print(rb.format_report(result), highlight=False)
    for e in result["errors"][:5]:
        console.print(f"[red]✗[/] skipped {e}", highlight=False)
    if json_out:
        from spiral.atomic import write_text

        write_text(json_out, json.dumps(result, indent=2))
        console.print(f"metrics: {json_out}")
    if result["errors"]:
        console.print(f"[red]{len(result['errors'])} rows or videos were skipped[/]")
        raise typer.Exit(1)
