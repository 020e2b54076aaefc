"""How different are the G rollouts of one GRPO prompt? Group-relative advantages need them to differ.

For each (noise level, SDE window) setting, the same planner prompts are rolled out G times with
the trainer's own SDE sampler (``GRPOTrainer.rollout``) and scored by the critic. Per setting:

* ``reward std`` / ``action std`` — the mean within-group standard deviation of the reward and of
  the critic's action score (what the advantages are made of);
* ``mixed groups`` — the share of groups where some rollouts pass and some fail: the only groups
  that tell the policy what success looks like;
* ``pass`` — the critic's pass rate, to see when noise just breaks the segments;
* ``frame std`` — the mean per-pixel std (0..255) across a group's last frames: how much the
  videos differ at all (full-SDE rollouts also carry leftover sampling noise here).

Prompts come from ``--heldout`` (exclude: moves the base model was trained on; only: the held-out
(object, destination) moves it cannot do) and ``--stage`` (single: true states; continuation:
the model's own chained frames).

    python benchmarks/grpo_diversity.py                       # ~3 min on 2 CPU cores
    python benchmarks/grpo_diversity.py --heldout only --noise 0.7,1.5 --windows full,0:6
    python benchmarks/grpo_diversity.py --heldout only --noise 0.7 --windows 0:4 --cfg 0,0.5,1   # guidance

``--cfg`` below 1 mixes in the unconditional prediction: another source of spread between rollouts; above 1
(with ``--cfg-max-sigma`` 0.5: on the last three steps only) the judge reads more held-out moves as done, but
none of them is drawn faithfully (docs/self_evolution.md, Findings).

    python benchmarks/grpo_diversity.py --heldout only --text "yellow block into the box" --noise 0.7,1.5 \
        --windows 0:4,full --cfg 1,8 --cfg-max-sigma 0.5 --out benchmarks/results/grpo_diversity_faithful_yellow.json

``--text`` keeps only the prompts whose sub-action contains the string (one move at a time).

Results go to ``benchmarks/results/grpo_diversity.json`` (``--out`` to change).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import parser, write_result


def measure(trainer: Any, prompts: list, noise: float, window: tuple[int, int] | None, seed: int) -> dict[str, Any]:
    cfg = trainer.cfg
    cfg.noise_level, cfg.sde_window = noise, window
    t0 = time.perf_counter()
    ro = trainer.rollout(prompts, np.random.default_rng(seed))
    G = cfg.group_size
    rewards = ro["rewards"].view(-1, G)
    passed = ro["passed"].view(-1, G)
    action = torch.tensor([s["action"] for s in ro["scores"]]).view(-1, G)
    last = np.stack([s.frames[-1].astype(np.float32) for s in ro["segments"]]).reshape(len(prompts), G, -1)
    mixed = ((passed.sum(1) > 0) & (passed.sum(1) < G)).float()
    return {"noise_level": noise, "sde_window": list(window) if window else None,
            "reward_std": round(float(rewards.std(1).mean()), 5), "action_std": round(float(action.std(1).mean()), 5),
            "mixed_groups": round(float(mixed.mean()), 4), "pass": round(float(passed.mean()), 4),
            "frame_std": round(float(last.std(1).mean()), 3), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from spiral.train.grpo import GRPOConfig, GRPOTrainer, Stage

    ap = parser(__doc__, "grpo_diversity.json", threads=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--noise", default="0.3,0.7,1.5", help="comma-separated noise levels a")
    ap.add_argument("--windows", default="full,0:6,0:3", help="comma-separated SDE windows: full or start:end")
    ap.add_argument("--heldout", default="exclude,only", help="comma-separated heldout_moves settings")
    ap.add_argument("--cfg", default="1", help="comma-separated guidance scales of the rollouts")
    ap.add_argument("--cfg-max-sigma", type=float, default=None,
                    help="guidance only on the steps with sigma <= this (the late ones)")
    ap.add_argument("--text", default=None, help="keep only prompts whose sub-action text contains this")
    ap.add_argument("--stage", default="single", choices=("single", "continuation"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    windows = [None if w == "full" else tuple(int(x) for x in w.split(":")) for w in args.windows.split(",")]
    stage = Stage(name=args.stage, kind=args.stage, min_steps=1 if args.stage == "single" else 2, max_steps=8)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="grpo_diversity_"))
    try:
        for held in args.heldout.split(","):
            for w in (float(x) for x in args.cfg.split(",")):
                cfg = GRPOConfig(out=str(tmp / f"{held}-{w}"), heldout_moves=held, group_size=args.group,
                                 prompts_per_step=args.prompts, stages=[stage], seed=args.seed, cfg_scale=w,
                                 cfg_max_sigma=args.cfg_max_sigma)
                trainer = GRPOTrainer(cfg, progress=False)
                prompts = trainer.sample_prompts(args.prompts * (20 if args.text else 1), stage,
                                                 np.random.default_rng(args.seed))
                if args.text:
                    prompts = [p for p in prompts if args.text in p.sub_action.text][:args.prompts]
                    if not prompts:
                        raise SystemExit(f"no sampled prompt contains {args.text!r}")
                for noise in (float(x) for x in args.noise.split(",")):
                    for window in windows:
                        rows.append({"heldout_moves": held, "cfg_scale": w,
                                     **measure(trainer, prompts, noise, window, args.seed)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(title=f"within-group diversity of GRPO rollouts ({args.prompts} prompts x {args.group}, "
                        f"stage {args.stage}, tiny generator, 10 steps)")
    for col in ("prompts", "cfg", "noise a", "SDE window", "reward std", "action std", "mixed groups", "pass",
                "frame std"):
        table.add_column(col, justify="right")
    for r in rows:
        w = "all" if r["sde_window"] is None else f"{r['sde_window'][0]}-{r['sde_window'][1]}"
        table.add_row(r["heldout_moves"], f"{r['cfg_scale']:g}", f"{r['noise_level']:g}", w,
                      f"{r['reward_std']:.4f}", f"{r['action_std']:.4f}", f"{r['mixed_groups']:.2f}", f"{r['pass']:.2f}", f"{r['frame_std']:.2f}")
    Console().print(table)
    res = {"rows": rows, "args": vars(args)}
    write_result(args.json, res)
    return res


if __name__ == "__main__":
    main()
