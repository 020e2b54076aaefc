"""Does the critic read every tabletop state? Exhaustive recogniser/judge coverage and the critic's false rejects.

Two parts (``spiral.critics.coverage`` says what "read right" means):

1. **Stills**: every valid state (2,721 block layouts × lid × lamp = 10,884), each rendered with the gripper
   at home in ``--looks`` appearances drawn by ``Appearance.sample`` (seeds in ``COVERAGE_SEEDS``, disjoint
   from training), read by the critic's recogniser and by the bench judge; the fraction decoded exactly
   (and exactly + sure, the critic's view), broken down by tallest tower, blocks in the box, lid and lamp,
   with every miss listed.
2. **Clips**: for every valid end state (or ``--clips N`` of them), a clean ``render_action`` success that
   ends there (a one-step predecessor drawn kind-first: stack onto level k, move to a slot, into the box,
   lid, lamp), and for every end state with a four-block tower also the clip that placed its top block, judged
   by the full critic with the loop's context (anchor, start state, the scene seed, so the
   artifact check runs): the critic's false-reject rate per action kind and per tower height of the end.

    python benchmarks/recognizer_coverage.py --looks 2 --out benchmarks/results/recognizer_coverage.json
    python benchmarks/recognizer_coverage.py --critic-weights ckpt/recognizer.safetensors --clips 2000 ...
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.bench.stats import wilson
from spiral.critics.coverage import (
    COVERAGE_SEEDS,
    action_kind,
    breakdown,
    pick_predecessor,
    read_states,
    render_states,
    state_class,
)
from spiral.critics.recognizer import load_recognizer
from spiral.critics.tabletop import TabletopCritic
from spiral.memory import Memory
from spiral.types import Segment, SubAction
from spiral.world import domain
from spiral.world.render import Appearance, render_action

KEYS = ("tower", "in_box", "lid", "lamp", "tower_slot")
CLIP_SEED_OFFSET = 40_000  # clip looks: COVERAGE_SEEDS.start + 40_000 + k, apart from the stills' looks


def stills(roles: dict[str, Any], looks: int, every: int = 1) -> dict[str, Any]:
    states = domain.all_states()[::every]
    all_states = [s for s in states for _ in range(looks)]
    seeds = [COVERAGE_SEEDS.start + i for i in range(len(all_states))]
    t = time.perf_counter()
    frames = render_states(all_states, seeds)
    out: dict[str, Any] = {"states": len(states), "looks_per_state": looks, "frames": len(frames),
                           "render_seconds": round(time.perf_counter() - t, 1), "roles": {}}
    for role, rec in roles.items():
        t = time.perf_counter()
        r = read_states(rec, frames, all_states)
        # a state is read right when every look of it is
        exact = r.exact.reshape(len(states), looks).all(1)
        sure = r.sure.reshape(len(states), looks).all(1)
        misses = [{"state": str(all_states[i]), "look_seed": seeds[i], "read": str(r.read[i]),
                   "least_prob": round(float(r.least[i]), 4), **state_class(all_states[i])}
                  for i in np.nonzero(~r.sure)[0]]
        out["roles"][role] = {
            "weights": str(rec.path), "seconds": round(time.perf_counter() - t, 1),
            "exact": float(exact.mean()), "exact_ci95": wilson(int(exact.sum()), len(exact)),
            "sure": float(sure.mean()), "sure_ci95": wilson(int(sure.sum()), len(sure)),
            "frames_exact": float(r.exact.mean()), "frames_sure": float(r.sure.mean()),
            "by_class_exact": breakdown(states, exact, KEYS), "by_class_sure": breakdown(states, sure, KEYS),
            "misses": misses[:500], "n_missed_frames": len(misses)}
    return out


def clips(critic: TabletopCritic, n: int | None, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 2121])
    ends = domain.all_states()
    if n is not None and n < len(ends):
        ends = [ends[i] for i in np.sort(rng.choice(len(ends), n, replace=False))]
    # plus the clip that puts the top block on every four-block tower (the tallest the domain allows)
    jobs = [(e, None) for e in ends] + [(e, "stack_level4") for e in ends if state_class(e)["tower"] == 4]
    rows = []
    t = time.perf_counter()
    for k, (end, kind) in enumerate(jobs):
        s0, a = pick_predecessor(end, rng, kind)
        look = COVERAGE_SEEDS.start + CLIP_SEED_OFFSET + k
        res = render_action(s0, a, appearance=Appearance.sample(look), seed=int(rng.integers(2**31)))
        sub = SubAction(text=a.text(), verb=a.verb, objects=list(a.args), preconditions=domain.preconditions(s0, a),
                        postconditions=domain.effects(s0, a))
        mem = Memory.start(res.frames[0], s0.to_dict(), hints={"scene_seed": look})
        v = critic.judge(Segment(frames=res.frames), sub, mem)
        rows.append({"start": str(s0), "action": str(a), "kind": action_kind(s0, a), "tower": state_class(end)["tower"],
                     "passed": v.passed, "failure": v.failure, "feedback": v.feedback, "look_seed": look})
    out: dict[str, Any] = {"clips": len(rows), "seconds": round(time.perf_counter() - t, 1)}
    rej = [r for r in rows if not r["passed"]]
    out["false_reject_rate"] = len(rej) / len(rows)
    out["false_reject_ci95"] = wilson(len(rej), len(rows))
    for key in ("kind", "tower"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for r in rows:
            groups[str(r[key])].append(not r["passed"])
        out[f"by_{key}"] = {g: {"n": len(v), "false_rejects": int(sum(v)), "rate": sum(v) / len(v),
                                "ci95": wilson(int(sum(v)), len(v))} for g, v in sorted(groups.items())}
    out["rejections_by_failure"] = dict(Counter(r["failure"] for r in rej))
    out["rejections"] = rej[:300]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "recognizer_coverage.json")
    ap.add_argument("--looks", type=int, default=2, help="appearances per state for the stills (each a new look)")
    ap.add_argument("--clips", default="all", help="success clips to judge: 'all' (one per valid end state), N, or 0")
    ap.add_argument("--critic-weights", type=Path, default=None, help="recogniser weights (default: shipped)")
    ap.add_argument("--judge-weights", type=Path, default=None, help="judge weights (default: shipped)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clips' predecessor and motion choices")
    ap.add_argument("--every", type=int, default=1, help="stills: every k-th valid state only (quick checks)")
    args = ap.parse_args(argv)
    if args.looks < 1 or args.every < 1:
        ap.error("--looks and --every must be >= 1")
    n_clips = None if args.clips == "all" else int(args.clips)
    torch.set_num_threads(1)
    roles = {"critic": load_recognizer(args.critic_weights, role="critic"),
             "judge": load_recognizer(args.judge_weights, role="judge")}
    result: dict[str, Any] = {"stills": stills(roles, args.looks, args.every)}
    if n_clips != 0:
        critic = TabletopCritic(recognizer=roles["critic"])
        result["clips"] = clips(critic, n_clips, args.seed)
    write_result(args.json, result, indent=1)
    report(result)
    return result


def report(result: dict[str, Any]) -> None:
    con = Console()
    st = result["stills"]
    t = Table(title=f"read right: {st['states']} valid states × {st['looks_per_state']} looks (every look right)")
    t.add_column("class")
    for role in st["roles"]:
        t.add_column(f"{role} exact")
        t.add_column(f"{role} sure")
    t.add_row("all", *[f"{r[k]:.4f}" for r in st["roles"].values() for k in ("exact", "sure")])
    first = next(iter(st["roles"].values()))
    for key in KEYS:
        for val, g in first["by_class_exact"][key].items():
            cells = []
            for r in st["roles"].values():
                cells += [f"{r['by_class_exact'][key][val]['right']:.4f}", f"{r['by_class_sure'][key][val]['right']:.4f}"]
            t.add_row(f"{key}={val} (n={g['n']})", *cells)
    con.print(t)
    if "clips" in result:
        c = result["clips"]
        t = Table(title=f"critic false rejects on {c['clips']} clean success clips: "
                        f"{c['false_reject_rate']:.4f} {c['false_reject_ci95']}")
        t.add_column("group")
        t.add_column("n")
        t.add_column("false rejects")
        t.add_column("rate [95 % CI]")
        for key in ("kind", "tower"):
            for g, v in c[f"by_{key}"].items():
                t.add_row(f"{key}={g}", str(v["n"]), str(v["false_rejects"]), f"{v['rate']:.4f} {v['ci95']}")
        con.print(t)
        con.print(f"rejections by failure kind: {c['rejections_by_failure']}")


if __name__ == "__main__":
    main()
