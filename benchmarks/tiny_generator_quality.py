"""Quality of the tiny generator, measured by the CriticAgent (issue #5's acceptance).

Every segment is judged by :class:`spiral.critics.tabletop.TabletopCritic` against the sub-action
it was asked for; a step *succeeds* when ``verdict.passed`` (post-conditions hold and no failure
kind, in-between frames included). Five measurements:

1. **Open-loop step success** on ``--n`` held-out (scene, sub-action) pairs: scene ``S`` is
   ``sample_state(default_rng(S))`` drawn with ``Appearance.sample(S)`` (as ``api.run(scene=S)``),
   the sub-action one applicable action drawn uniformly (seeded by ``S``), never one of
   ``HELDOUT_MOVES``; canonical text ``Action.text()``. Reported overall (with a Wilson 95 %
   interval), per failure kind (``verdict.failure`` counts / n) and per action type (``Action.kind``).
2. **Long horizon**, plan-only: ``--long`` tasks ``sample_task(seed, min_steps=6, max_steps=8)``
   drawn with ``Appearance.sample(seed)``. As the loop does, the start state is the critic's
   ``observe()`` of the first frame and the symbolic planner plans once from it; every segment is
   conditioned on the previous *generated* last frame (a :class:`Memory` driven here, committed
   without a verdict as in ``plan_only``) and judged against its planned sub-action, with the
   memory's state set to the critic's ``observe()`` of the conditioning frame. Reported: step success
   by step index, all-steps-passed and goal-reached (critic's reading of the final frame) rates, and
   **drift of untouched regions**: the mean absolute pixel difference (0..255, over RGB) between a
   generated last frame and a render of the expected state (the plan applied to the true start
   state, gripper at home) restricted to the pixels that are *equal in the first and the expected
   final render*; per task for the final frame, and per step index against the expected state after
   that step (same mask), to show how it compounds.
3. **Compositional generalization**: step success on ``HELDOUT_MOVES`` (never in training), on
   ``--n-heldout`` scenes where the move is applicable, cycling over the combinations.
4. **Paraphrase robustness**: the pairs of (1) with one ``paraphrases(verb, objects, "eval")``
   wording each (same scene, same generation seed); step success and the delta vs canonical text.
5. Figures: ``--docs-grid`` (8 samples of (1), generated above ground truth ``render_action``
   with the same state, action, look and seed) and ``--docs-chain`` (the first long task: one
   row per step, plus the expected render after the step), upscaled ×2 nearest.

Seeds (reserved, inside ``spiral.bench.seeds.TESTS``, never training seeds): scenes of (1)/(4)
``10_950_000 + i``, scene scan for (3) from ``10_960_000``, long tasks ``10_970_000 + k``.
Generation seed = scene seed (long tasks: ``loop.derive_seed(task seed, 0, step, 0)``).
Segments are generated in batches (``--batch``); each request's noise comes from its own seed,
so batching does not change a result.

    python benchmarks/tiny_generator_quality.py --n 200 --long 50

That is about 850 segments (200 + 200 paraphrased + 100 held-out moves + ~350 long-task steps);
at ~0.33 s generation + ~0.03 s judging per segment (1 thread, batch 16, measured on the shared
2-core CPU while a training run used both cores) about 5-6 minutes; less on an idle core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see benchmarks/tiny_generator.py)

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.bench.stats import wilson
from spiral.critics.tabletop import TabletopCritic
from spiral.generators.tiny import DEFAULT_WEIGHTS, TinyGenerator
from spiral.loop import derive_seed
from spiral.memory import Memory
from spiral.planners.symbolic import SymbolicPlanner
from spiral.types import FAILURE_KINDS, Segment, SubAction, Verdict
from spiral.world import domain
from spiral.world.domain import Action, State
from spiral.world.render import Appearance, render_action, render_state
from spiral.world.splits import HELDOUT_MOVES, is_heldout, paraphrases
from spiral.world.tasks import sample_state, sample_task

STEP_SEEDS = 10_950_000  # (1) and (4): scene i
HELDOUT_SEEDS = 10_960_000  # (3): scanned for scenes where a held-out move applies
LONG_SEEDS = 10_970_000  # (2): sample_task seed k
KINDS = ("move", "open", "close", "lamp")


# ---------------------------------------------------------------- items
@dataclass
class Item:
    """One (scene, sub-action, wording) to generate and judge."""

    seed: int
    state: State
    app: Appearance
    action: Action
    text: str
    first: np.ndarray
    segment: Segment | None = None
    verdict: Verdict | None = None


def sub_action(state: State, action: Action, text: str, idx: int = 0) -> SubAction:
    return SubAction(id=idx, text=text, verb=action.verb, objects=list(action.args),
                     preconditions=domain.preconditions(state, action), postconditions=domain.effects(state, action))


def scene(seed: int, size: int) -> tuple[State, Appearance, np.ndarray]:
    state = sample_state(np.random.default_rng(seed))
    app = Appearance.sample(seed)
    return state, app, render_state(state, appearance=app, size=size)


def step_pairs(n: int, size: int) -> list[Item]:
    out = []
    for i in range(n):
        s = STEP_SEEDS + i
        state, app, first = scene(s, size)
        acts = [a for a in domain.applicable_actions(state) if not is_heldout(a.verb, a.args)]
        a = acts[int(np.random.default_rng([s, 1]).integers(len(acts)))]
        out.append(Item(s, state, app, a, a.text(), first))
    return out


def heldout_pairs(n: int, size: int) -> list[Item]:
    out: list[Item] = []
    s = HELDOUT_SEEDS
    while len(out) < n:
        b, d = HELDOUT_MOVES[len(out) % len(HELDOUT_MOVES)]
        a = Action("move", (b, d))
        while not domain.is_applicable(sample_state(np.random.default_rng(s)), a):
            s += 1
        state, app, first = scene(s, size)
        out.append(Item(s, state, app, a, a.text(), first))
        s += 1
    return out


def paraphrased(items: list[Item]) -> list[Item]:
    out = []
    for it in items:
        texts = paraphrases(it.action.verb, it.action.args, "eval")
        text = texts[int(np.random.default_rng([it.seed, 2]).integers(len(texts)))]
        out.append(Item(it.seed, it.state, it.app, it.action, text, it.first))
    return out


# ---------------------------------------------------------------- generate + judge
class Runner:
    def __init__(self, gen: TinyGenerator, critic: TabletopCritic, batch: int):
        self.gen, self.critic, self.batch = gen, critic, batch
        c = gen.config
        self.frames, self.size = c.num_frames + 1, c.resolution
        self.seconds = {"generate": 0.0, "judge": 0.0}
        self.segments = 0

    def generate(self, memories: list[Memory], subs: list[SubAction], texts: list[str], seeds: list[int]
                 ) -> list[Segment]:
        out: list[Segment] = []
        for i in range(0, len(subs), self.batch):
            reqs = [m.context(s, t, sd, self.frames, self.size, self.size)
                    for m, s, t, sd in zip(memories[i:i + self.batch], subs[i:i + self.batch],
                                           texts[i:i + self.batch], seeds[i:i + self.batch])]
            t0 = time.perf_counter()
            out += self.gen.generate_batch(reqs)
            self.seconds["generate"] += time.perf_counter() - t0
        self.segments += len(subs)
        return out

    def judge(self, segment: Segment, sub: SubAction, memory: Memory) -> Verdict:
        t0 = time.perf_counter()
        v = self.critic.judge(segment, sub, memory)
        self.seconds["judge"] += time.perf_counter() - t0
        return v

    def run_items(self, items: list[Item]) -> None:
        mems = [Memory.start(it.first, it.state.to_dict()) for it in items]
        subs = [sub_action(it.state, it.action, it.text) for it in items]
        segs = self.generate(mems, subs, [it.text for it in items], [it.seed for it in items])
        for it, m, s, seg in zip(items, mems, subs, segs):
            it.segment, it.verdict = seg, self.judge(seg, s, m)


def summarize(items: list[Item]) -> dict[str, Any]:
    n = len(items)
    ok = sum(it.verdict.passed for it in items)
    fails = Counter(it.verdict.failure for it in items if it.verdict.failure)
    by_type = {}
    for k in KINDS:
        sel = [it for it in items if it.action.kind == k]
        by_type[k] = {"n": len(sel), "success": round(sum(it.verdict.passed for it in sel) / len(sel), 4) if sel else None}
    scores = {s: round(float(np.mean([it.verdict.scores[s] for it in items])), 4) for s in items[0].verdict.scores} if n else {}
    return {"n": n, "success": round(ok / n, 4) if n else None, "success_ci95": wilson(ok, n),
            "failure_rates": {f: round(fails.get(f, 0) / n, 4) for f in FAILURE_KINDS} if n else {},
            "by_type": by_type, "mean_scores": scores}


# ---------------------------------------------------------------- long horizon
@dataclass
class Chain:
    task: Any
    app: Appearance
    first: np.ndarray
    memory: Memory
    subs: list[SubAction]
    expected: list[State] | None  # true start state, then after each planned step (None: plan not applicable)
    start_read_ok: bool
    verdicts: list[Verdict] = field(default_factory=list)
    last_frames: list[np.ndarray] = field(default_factory=list)
    segments: list[np.ndarray] = field(default_factory=list)


def long_horizon(runner: Runner, critic: TabletopCritic, n_tasks: int, keep_frames: int = 1) -> tuple[dict, list[Chain]]:
    planner = SymbolicPlanner()
    chains: list[Chain] = []
    t0 = time.perf_counter()
    for k in range(n_tasks):
        task = sample_task(LONG_SEEDS + k, min_steps=6, max_steps=8)
        app = Appearance.sample(task.seed)
        first = render_state(task.state, appearance=app, size=runner.size)
        obs = critic.observe(first)
        plan = planner.plan(task.goal, obs)
        expected: list[State] | None = [task.state]
        for sub in plan.steps:
            a = Action(sub.verb, tuple(sub.objects))
            if not domain.is_applicable(expected[-1], a):
                expected = None
                break
            expected.append(domain.apply(expected[-1], a))
        chains.append(Chain(task, app, first, Memory.start(first, obs.to_dict()), plan.steps, expected,
                            obs == task.state))
    t_setup = time.perf_counter() - t0
    for step in range(max((len(c.subs) for c in chains), default=0)):
        active = [c for c in chains if step < len(c.subs)]
        for c in active:  # the start state of this step as the critic reads it from the conditioning frame
            c.memory.state = critic.observe(c.memory.last_frame).to_dict()
        subs = [c.subs[step] for c in active]
        segs = runner.generate([c.memory for c in active], subs, [s.text for s in subs],
                               [derive_seed(c.task.seed, 0, step, 0) for c in active])
        for c, sub, seg in zip(active, subs, segs):
            c.verdicts.append(runner.judge(seg, sub, c.memory))
            c.memory.commit(seg.frames, sub, None, None)  # plan_only: accept without a verdict
            c.last_frames.append(seg.frames[-1])
            if any(c is k for k in chains[:keep_frames]):
                c.segments.append(seg.frames)
    # metrics
    max_len = max((len(c.subs) for c in chains), default=0)
    by_step = []
    for i in range(max_len):
        vs = [c.verdicts[i] for c in chains if i < len(c.verdicts)]
        by_step.append({"step": i + 1, "n": len(vs), "success": round(sum(v.passed for v in vs) / len(vs), 4),
                        "failures": dict(Counter(v.failure for v in vs if v.failure))})
    drift_final, drift_by_step, mask_frac = [], [[] for _ in range(max_len)], []
    for c in chains:
        c_drift = drift(c, runner.size)
        if c_drift is None:
            continue
        mask_frac.append(c_drift["mask_fraction"])
        if c_drift["final"] is not None:
            drift_final.append(c_drift["final"])
            for i, d in enumerate(c_drift["by_step"]):
                drift_by_step[i].append(d)
    all_steps = [all(v.passed for v in c.verdicts) for c in chains]
    goal = [planner.achieved(c.task.goal, critic.observe(c.memory.last_frame)) for c in chains]
    steps_total = sum(len(c.verdicts) for c in chains)
    res = {
        "tasks": len(chains),
        "steps": steps_total,
        "lengths": dict(Counter(len(c.subs) for c in chains)),
        "step_success": round(sum(v.passed for c in chains for v in c.verdicts) / steps_total, 4) if steps_total else None,
        "step_success_by_index": by_step,
        "all_steps_passed": round(float(np.mean(all_steps)), 4) if chains else None,
        "goal_reached_observed": round(float(np.mean(goal)), 4) if chains else None,
        "start_state_read_correctly": round(float(np.mean([c.start_read_ok for c in chains])), 4) if chains else None,
        "untouched_drift": {
            "definition": "mean |generated last frame - render of expected state| (0..255, RGB) over pixels equal in "
                          "the first and the expected final render",
            "final_mean": round(float(np.mean(drift_final)), 3) if drift_final else None,
            "final_median": round(float(np.median(drift_final)), 3) if drift_final else None,
            "by_step_mean": [round(float(np.mean(d)), 3) if d else None for d in drift_by_step],
            "tasks_measured": len(drift_final),
            "mask_fraction_mean": round(float(np.mean(mask_frac)), 4) if mask_frac else None,
        },
        "setup_seconds": round(t_setup, 3),
    }
    return res, chains


def drift(c: Chain, size: int) -> dict[str, Any] | None:
    if c.expected is None or len(c.last_frames) != len(c.subs):
        return None
    renders = [render_state(s, appearance=c.app, size=size).astype(np.float64) for s in c.expected]
    mask = np.all(renders[0] == renders[-1], axis=-1)
    if not mask.any():
        return {"mask_fraction": 0.0, "final": None, "by_step": []}
    by_step = [float(np.abs(f.astype(np.float64) - r)[mask].mean()) for f, r in zip(c.last_frames, renders[1:])]
    return {"mask_fraction": float(mask.mean()), "final": by_step[-1], "by_step": by_step}


# ---------------------------------------------------------------- figures
def _label(img: Any, xy: tuple[int, int], text: str, fill: tuple[int, int, int] = (0, 0, 0)) -> None:
    from PIL import ImageDraw, ImageFont

    ImageDraw.Draw(img).text(xy, text, fill=fill, font=ImageFont.load_default())


def _strip(frames: np.ndarray, scale: int = 2) -> np.ndarray:
    return np.concatenate([f.repeat(scale, 0).repeat(scale, 1) for f in frames], axis=1)


def pick_grid(items: list[Item], k: int = 8) -> list[Item]:
    """Up to 2 per action type first (so the grid shows every type it can), then in order."""
    chosen: list[Item] = []
    for kind in KINDS:
        chosen += [it for it in items if it.action.kind == kind][:2]
    chosen += [it for it in items if it not in chosen]
    return sorted(chosen[:k], key=lambda it: it.seed)


def write_grid(items: list[Item], path: Path, frames: int, scale: int = 2) -> None:
    from PIL import Image

    head, lab, gap = 14, 28, 6
    rows = []
    for it in items:
        gt = render_action(it.state, it.action, appearance=it.app, seed=it.seed, size=it.first.shape[0],
                           frames=frames).frames
        rows.append((it, _strip(it.segment.frames, scale), _strip(gt, scale)))
    w = lab + rows[0][1].shape[1]
    h_one = head + 2 * rows[0][1].shape[0] + gap
    img = Image.new("RGB", (w, h_one * len(rows)), (255, 255, 255))
    for r, (it, g, t) in enumerate(rows):
        y = r * h_one
        v = it.verdict
        verdict = "passed" if v.passed else f"failed: {v.failure}"
        _label(img, (2, y + 1), f"scene {it.seed}: {it.text}  [critic: {verdict}]",
               (0, 110, 0) if v.passed else (170, 0, 0))
        img.paste(Image.fromarray(g), (lab, y + head))
        img.paste(Image.fromarray(t), (lab, y + head + g.shape[0]))
        _label(img, (2, y + head + g.shape[0] // 2 - 5), "gen")
        _label(img, (2, y + head + g.shape[0] + t.shape[0] // 2 - 5), "GT")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_chain(c: Chain, path: Path, size: int, scale: int = 2) -> None:
    from PIL import Image

    head, lab, gap = 14, 28, 10
    fw = size * scale
    n_frames = len(c.segments[0])
    w = lab + fw * n_frames + gap + fw
    row_h = head + fw
    img = Image.new("RGB", (w, 16 + row_h * len(c.segments)), (255, 255, 255))
    _label(img, (2, 2), f"task {c.task.seed}: {c.task.goal.text}"[:150])
    _label(img, (lab + fw * n_frames + gap, 2), "expected")
    for i, (frames, sub, v) in enumerate(zip(c.segments, c.subs, c.verdicts)):
        y = 16 + i * row_h
        verdict = "passed" if v.passed else f"failed: {v.failure}"
        _label(img, (lab, y + 1), f"{sub.text}  [critic: {verdict}]", (0, 110, 0) if v.passed else (170, 0, 0))
        _label(img, (2, y + head + fw // 2 - 5), f"{i + 1}")
        img.paste(Image.fromarray(_strip(frames, scale)), (lab, y + head))
        if c.expected is not None:
            exp = render_state(c.expected[i + 1], appearance=c.app, size=size)
            img.paste(Image.fromarray(_strip(exp[None], scale)), (lab + fw * n_frames + gap, y + head))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ---------------------------------------------------------------- main
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_tables(res: dict[str, Any]) -> None:
    con = Console()
    t = Table(title=f"tiny generator quality ({res['config']['weights']}, {res['config']['steps']} steps), "
                    "step success = critic verdict.passed")
    t.add_column("pairs")
    t.add_column("n", justify="right")
    t.add_column("success", justify="right")
    t.add_column("95% CI", justify="right")
    for k in KINDS:
        t.add_column(k, justify="right")
    for name, key in (("open-loop", "open_loop"), ("paraphrased", "paraphrase"),
                      ("held-out moves", "compositional")):
        s = res[key]
        ci = s["success_ci95"]
        t.add_row(name, str(s["n"]), _fmt(s["success"]), f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-",
                  *(f"{_fmt(s['by_type'][k]['success'])} ({s['by_type'][k]['n']})" for k in KINDS))
    con.print(t)
    f = Table(title="failure kind rates (share of all pairs)")
    f.add_column("failure kind")
    for name in ("open-loop", "paraphrased", "held-out moves"):
        f.add_column(name, justify="right")
    for k in FAILURE_KINDS:
        f.add_row(k, *(_fmt(res[key]["failure_rates"].get(k)) for key in ("open_loop", "paraphrase", "compositional")))
    con.print(f)
    lh = res["long_horizon"]
    g = Table(title=f"long horizon, plan-only ({lh['tasks']} tasks, {lh['steps']} steps): step success "
                    f"{_fmt(lh['step_success'])}, all steps passed {_fmt(lh['all_steps_passed'])}, goal reached "
                    f"(observed) {_fmt(lh['goal_reached_observed'])}")
    g.add_column("step")
    g.add_column("n", justify="right")
    g.add_column("success", justify="right")
    g.add_column("untouched drift (0..255)", justify="right")
    g.add_column("failures")
    d = lh["untouched_drift"]["by_step_mean"]
    for i, s in enumerate(lh["step_success_by_index"]):
        g.add_row(str(s["step"]), str(s["n"]), _fmt(s["success"]), _fmt(d[i] if i < len(d) else None),
                  ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())))
    con.print(g)
    a = res["acceptance"]
    con.print(f"untouched drift of the final frame: mean {_fmt(lh['untouched_drift']['final_mean'])}, median "
              f"{_fmt(lh['untouched_drift']['final_median'])} over {lh['untouched_drift']['tasks_measured']} tasks")
    con.print(f"paraphrase delta {a['paraphrase_delta']:+.3f}; acceptance: step success >= 0.80: "
              f"{a['step_success_ok']}, paraphrase loss <= 0.10: {a['paraphrase_ok']}")
    tm = res["timing"]
    con.print(f"{tm['segments']} segments in {tm['wall_seconds']:.1f} s: generate {tm['generate_s_per_segment']:.3f} "
              f"s/segment (batch {res['config']['batch']}), judge {tm['judge_s_per_segment']:.4f} s/segment")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__, "tiny_generator_quality.json", threads=1)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="TinyVideoDiT safetensors (default: shipped)")
    ap.add_argument("--n", type=int, default=200, help="held-out (scene, sub-action) pairs")
    ap.add_argument("--long", type=int, default=50, help="long tasks (6-8 steps), plan-only")
    ap.add_argument("--n-heldout", type=int, default=None, help="HELDOUT_MOVES pairs (default: n // 2)")
    ap.add_argument("--steps", type=int, default=10, help="sampling steps (the backend default)")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the weights' sampler metadata, else 1")
    ap.add_argument("--batch", type=int, default=16, help="segments per generate_batch call")
    ap.add_argument("--docs-grid", default="docs/tiny_samples.png")
    ap.add_argument("--docs-chain", default="docs/tiny_long_chain.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    gen = TinyGenerator(weights=args.weights, steps=args.steps, cfg_scale=args.cfg_scale)
    critic = TabletopCritic()
    runner = Runner(gen, critic, args.batch)
    size, frames = runner.size, runner.frames

    pairs = step_pairs(args.n, size)
    runner.run_items(pairs)
    para = paraphrased(pairs)
    runner.run_items(para)
    held = heldout_pairs(args.n // 2 if args.n_heldout is None else args.n_heldout, size)
    runner.run_items(held)
    lh, chains = long_horizon(runner, critic, args.long)

    open_loop, paraphrase, comp = summarize(pairs), summarize(para), summarize(held)
    if held:
        comp["by_combination"] = {f"{b}->{d}": round(float(np.mean([it.verdict.passed for it in held
                                                                      if it.action.args == (b, d)])), 4)
                                  for b, d in HELDOUT_MOVES if any(it.action.args == (b, d) for it in held)}
    delta = (paraphrase["success"] or 0.0) - (open_loop["success"] or 0.0)
    paraphrase["delta_vs_canonical"] = round(delta, 4)
    paraphrase["changed_verdicts"] = sum(a.verdict.passed != b.verdict.passed for a, b in zip(pairs, para))

    if pairs and args.docs_grid:
        write_grid(pick_grid(pairs), Path(args.docs_grid), frames)
    if chains and chains[0].segments and args.docs_chain:
        write_chain(chains[0], Path(args.docs_chain), size)

    wall = time.perf_counter() - t_start
    segs = max(runner.segments, 1)
    res = {
        "config": {"weights": str(args.weights), "steps": args.steps, "cfg_scale": gen.cfg_scale, "cfg_max_sigma": gen.cfg_max_sigma, "n": args.n,
                   "long": args.long, "n_heldout": len(held), "batch": args.batch, "threads": args.threads,
                   "model_params": gen.model.num_params(), "model_config": json.loads(gen.config.to_json()),
                   "seeds": {"step_pairs": [STEP_SEEDS, STEP_SEEDS + args.n - 1], "heldout_scan_from": HELDOUT_SEEDS,
                             "long_tasks": [LONG_SEEDS, LONG_SEEDS + args.long - 1]},
                   "success": "critic verdict.passed (action post-conditions hold, no failure kind, every frame)"},
        "open_loop": open_loop,
        "paraphrase": paraphrase,
        "compositional": comp,
        "long_horizon": lh,
        "acceptance": {"step_success_ok": bool(open_loop["success"] is not None and open_loop["success"] >= 0.80),
                       "paraphrase_delta": round(delta, 4), "paraphrase_ok": bool(delta >= -0.10)},
        "timing": {"wall_seconds": round(wall, 2), "segments": runner.segments,
                   "generate_s_per_segment": round(runner.seconds["generate"] / segs, 4),
                   "judge_s_per_segment": round(runner.seconds["judge"] / segs, 4),
                   "load_average": round(os.getloadavg()[0], 2)},
        "figures": {"grid": args.docs_grid, "chain": args.docs_chain},
    }
    print_tables(res)
    write_result(args.json, res)
    return res


if __name__ == "__main__":
    main()
