"""Which moves did a GRPO checkpoint learn, and which did it forget? Scores every kept checkpoint of runs.

A run's gold evaluation mixes the moves, and learning a held-out move while forgetting trained ones can
leave it flat. To pick a checkpoint to ship, this script samples (ODE, the run's own sampler) fixed
single-step prompts from sampled tabletop scenes, grouped by class: each held-out move
(``spiral.world.splits.HELDOUT_MOVES``) and the trained sub-actions. It scores them with the critic and
with the benchmark's independent judge, and estimates the plan-only step success on ``tabletop-v1``.
Each judge success is also checked for render faithfulness (``GRPOTrainer.faithful``: the last frame must
look like a render of what the judge read, artifact area ≤ 0.4 %): a patch of colour noise the judge reads as a
block counts under "judge" but not under "faithful", and checkpoints are ranked by faithful success first.
It also measures the benchmark's drift (``spiral.bench.metrics.DriftReference``: untouched pixels of the
last frame against the conditioning frame, relit), so a sampler can be chosen off the benchmark. The
estimate weights each class by its share of the suite's optimal-plan steps. The same prompts and seeds are
used for every checkpoint and for the base weights, under each run's sampler.

    python benchmarks/grpo_moves.py --runs runs/grpo-tiny-reverse-anchor
    python benchmarks/grpo_moves.py --runs runs/sweep/* --export-best 2 --export-dir out/  # best as tiny weights
    python benchmarks/grpo_moves.py --weights spiral/models/weights/tiny.safetensors \
        spiral/models/weights/tiny_evolved.safetensors --per-move 16 --trained 32 --out benchmarks/results/grpo_moves_reverse.json

Kept checkpoints are ``checkpoint/ema_*.safetensors`` (``keep_ema: true``); a run without them is scored
on its last ``checkpoint/ema.safetensors``. Results go to ``benchmarks/results/grpo_moves.json``.
"""

from __future__ import annotations

import collections
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import parser, write_result

TRAINED = "trained"
MIN_STEPS, MAX_STEPS = 1, 8  # plan lengths of the sampled tasks (drift_reference redraws them)


def move_class(verb: str, objects: Any) -> str:
    from spiral.world.splits import is_heldout

    short = [o.removesuffix("_block") for o in objects[:2]]
    return f"{short[0]}->{short[1]}" if is_heldout(verb, objects) else TRAINED


def suite_weights(suite: str = "tabletop-v1") -> dict[str, float]:
    """Share of each class among the steps of the suite's optimal plans (what plan-only step success counts)."""
    from spiral.bench.suite import load_suite
    from spiral.planners.symbolic import SymbolicPlanner
    from spiral.world.goals import parse_goal
    from spiral.world.splits import HELDOUT_MOVES
    from spiral.world.tasks import sample_state

    counts = collections.Counter({move_class("move", m): 0 for m in HELDOUT_MOVES})
    for case in load_suite(suite, check_plans=False).cases:
        state = sample_state(np.random.default_rng(case.scene))
        for action in SymbolicPlanner().solve(state, parse_goal(case.goal)):
            counts[move_class(action.verb, action.args)] += 1
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())}


def prompt_sets(trainer: Any, per_move: int, trained: int, seed: int) -> dict[str, list]:
    from spiral.train.grpo import Stage

    stage = Stage(name="single", kind="single", min_steps=MIN_STEPS, max_steps=MAX_STEPS)
    sets: dict[str, list] = collections.defaultdict(list)
    rng = np.random.default_rng(seed)
    for _ in range(20):  # held-out prompts: each draw is one of the four moves
        for p in trainer.sample_prompts(8 * per_move, stage, rng, "only"):
            key = move_class(p.sub_action.verb, p.sub_action.objects)
            if len(sets[key]) < per_move:
                sets[key].append(p)
        if len(sets) == 4 and all(len(v) == per_move for v in sets.values()):
            break
    sets[TRAINED] = trainer.sample_prompts(trained, stage, rng, "exclude")
    return dict(sorted(sets.items()))


def drift_reference(trainer: Any, prompt: Any) -> tuple[Any, Any]:
    """The bench's drift measure for one prompt: the true state before the step (its frame is the reference),
    the expected state after it, and the scene's look (``spiral.bench.metrics.DriftReference``)."""
    from spiral.bench.metrics import DriftReference
    from spiral.world import domain
    from spiral.world.tasks import sample_task

    task = sample_task(prompt.task_seed, MIN_STEPS, MAX_STEPS)  # as prompt_sets drew it
    state = task.state
    for sub in trainer.planner.plan(task.goal.text, task.state).steps[:prompt.index]:
        state = domain.apply(state, domain.Action(sub.verb, tuple(sub.objects)))
    after = domain.apply(state, domain.Action(prompt.sub_action.verb, tuple(prompt.sub_action.objects)))
    return DriftReference(anchor=np.asarray(prompt.cond_frame), anchor_state=state, scene=task.scene_seed), after


def score(trainer: Any, sets: dict[str, list], weights: dict[str, float], refs: dict[str, list]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, prompts in sets.items():
        critic_ok, judge_ok, segs = trainer.score_prompts(prompts, seed=2000)
        faithful = trainer.faithful(prompts, segs, judge_ok)
        drift = [ref.drift(seg.frames[-1], after) for (ref, after), seg in zip(refs[k], segs)]
        row[k] = {"n": len(prompts), "critic": int(sum(critic_ok)), "judge": int(sum(judge_ok)),
                  "faithful": int(sum(faithful)), "drift": round(float(np.mean([d for d in drift if d is not None])), 5)}
    for by in ("critic", "judge", "faithful"):
        row[f"est_step_success_{by}"] = round(sum(w * row[k][by] / row[k]["n"] for k, w in weights.items()), 4)
    row["est_drift"] = round(sum(w * row[k]["drift"] for k, w in weights.items()), 5)
    return row


def checkpoints(run: Path) -> list[Path]:
    kept = sorted((run / "checkpoint").glob("ema_*.safetensors"))
    return kept or [p for p in [run / "checkpoint" / "ema.safetensors"] if p.is_file()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from spiral.train.grpo import GRPOConfig, GRPOTrainer

    ap = parser(__doc__, "grpo_moves.json", threads=2)
    ap.add_argument("--runs", nargs="+", default=[], help="GRPO run folders (config.json + checkpoint/)")
    ap.add_argument("--weights", nargs="+", default=[], help="tiny weights files, each scored as it is")
    ap.add_argument("--cfg-scale", type=float, default=None, help="score under this guidance (default: each "
                    "run's, or the weights' own sampler)")
    ap.add_argument("--cfg-max-sigma", type=float, default=None, help="with --cfg-scale: guide only at σ ≤ this")
    ap.add_argument("--cfg-tau", type=float, default=None, help="guide only near pixels where the text changes "
                    "x̂_0 by ≥ this (TinyGenerator cfg_tau)")
    ap.add_argument("--sample-steps", type=int, default=None, help="ODE steps (default: each run's, or 10)")
    ap.add_argument("--per-move", type=int, default=16, help="prompts per held-out move")
    ap.add_argument("--trained", type=int, default=48, help="prompts of trained sub-actions")
    ap.add_argument("--suite", default="tabletop-v1", help="suite whose step mix weights the estimate")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: each run's own)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--export-best", type=int, default=0, help="export the K best checkpoints as tiny weights")
    ap.add_argument("--export-dir", default="runs/grpo-moves-best")
    ap.add_argument("--max-drift", type=float, default=None, help="export only checkpoints whose estimated drift "
                    "is at most this")
    args = ap.parse_args(argv)
    if not args.runs and not args.weights:
        raise SystemExit("nothing to score: pass --runs (GRPO run folders) and/or --weights (tiny weights files)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    weights = suite_weights(args.suite)
    override = {k: v for k, v in (("cfg_scale", args.cfg_scale), ("cfg_max_sigma", args.cfg_max_sigma),
                                  ("cfg_tau", args.cfg_tau), ("sample_steps", args.sample_steps),
                                  ("device", args.device)) if v is not None}
    rows: list[dict[str, Any]] = []
    base: dict[str, dict] = {}
    sets: dict[str, list] = {}
    refs: dict[str, list] = {}
    tmp = Path(tempfile.mkdtemp(prefix="grpo_moves_"))
    exported: list[str] = []

    def trainer_for(cfg: GRPOConfig) -> tuple[Any, dict]:
        tr = GRPOTrainer(cfg, progress=False)
        if not sets:  # the same prompts, seeds and drift references for every row
            sets.update(prompt_sets(tr, args.per_move, args.trained, args.seed))
            refs.update({k: [drift_reference(tr, p) for p in ps] for k, ps in sets.items()})
        return tr, {"cfg_scale": cfg.cfg_scale, "cfg_max_sigma": cfg.cfg_max_sigma, "cfg_tau": cfg.cfg_tau,
                    "steps": cfg.sample_steps}

    try:
        for i, path in enumerate(map(Path, args.weights)):
            from spiral.models.tiny_video import load_weights

            _, meta = load_weights(path)
            own = json.loads(meta.get("sampler", "{}"))
            cfg = GRPOConfig(out=str(tmp / f"weights{i}"), weights=str(path), heldout_moves="include",
                             **{**own, **override})
            tr, sampler = trainer_for(cfg)
            rows.append({"run": str(path), "step": int(meta.get("grpo_steps", 0)), "sampler": sampler,
                         **score(tr, sets, weights, refs)})
        trainers = {}
        for run in map(Path, args.runs):
            if not (run / "config.json").is_file():
                raise SystemExit(f"{run} is not a GRPO run folder (no config.json); pass folders made by "
                                 "`spiral train grpo`")
            cfg = GRPOConfig.from_saved({**json.loads((run / "config.json").read_text()), "out": str(tmp / run.name),
                                         **override})
            tr, sampler = trainer_for(cfg)
            trainers[str(run)] = tr
            key = json.dumps({**sampler, "weights": cfg.weights})
            if key not in base:  # the base weights under this run's sampler
                base[key] = {"run": "base", "weights": cfg.weights, "sampler": sampler, "step": 0,
                             **score(tr, sets, weights, refs)}
                rows.append(base[key])
            for ck in checkpoints(run):
                step = tr.load_ema(ck)
                rows.append({"run": str(run), "file": str(ck), "step": step, "sampler": sampler,
                             **score(tr, sets, weights, refs)})
        ranked = sorted((r for r in rows if r["run"] in trainers
                         and (args.max_drift is None or r["est_drift"] <= args.max_drift)),
                        key=lambda r: (r["est_step_success_faithful"], r["est_step_success_judge"],
                                       r["est_step_success_critic"]), reverse=True)
        for i, r in enumerate(ranked[:args.export_best]):
            tr = trainers[r["run"]]
            tr.load_ema(r["file"])
            dest = Path(args.export_dir) / f"best{i + 1}_{Path(r['run']).name}_step{r['step']}.safetensors"
            dest.parent.mkdir(parents=True, exist_ok=True)
            exported.append(str(tr.export(dest)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    classes = list(sets)
    table = Table(title=f"per-move success (judge / faithful / critic), ODE, same prompts; est. = {args.suite} step mix")
    for col in ("run", "step", "cfg", *classes, "est. judge", "est. faithful", "est. critic", "est. drift ↓"):
        table.add_column(col, justify="right")
    for r in rows:
        tau = r["sampler"].get("cfg_tau")
        cfg = f"{r['sampler']['cfg_scale']:g}" + (f" τ{tau:g}" if tau else "")
        table.add_row(Path(r["run"]).name, str(r["step"]), cfg,
                      *(f"{r[k]['judge']}/{r[k]['faithful']}/{r[k]['critic']} /{r[k]['n']}" for k in classes),
                      f"{r['est_step_success_judge']:.3f}", f"{r['est_step_success_faithful']:.3f}",
                      f"{r['est_step_success_critic']:.3f}",
                      f"{r['est_drift']:.4f}")
    Console(width=200).print(table)
    res = {"rows": rows, "suite_weights": weights, "exported": exported, "args": vars(args),
           "seconds": round(time.perf_counter() - t0, 1)}
    write_result(args.json, res, device="cuda" if torch.cuda.is_available() else None)
    return res


if __name__ == "__main__":
    main()
