"""On which sampling steps does classifier-free guidance let the tiny generator do a held-out move?

The tiny generator never saw "move the yellow block into the box" in training and, unguided, never does
it: it carries the block over the box and lets it vanish. Guidance makes the text win, but on every step
it also drifts the scene. This script guides only a range of the 10 ODE steps and counts, with the
critic, passes on one held-out move and on moves the model was trained on (same prompts and seeds for
every setting). It is why ``cfg_max_sigma`` exists (docs/self_evolution.md item 6).

    python benchmarks/guidance_steps.py                       # ~5 min on 2 CPU cores
    python benchmarks/guidance_steps.py --specs 8/0:10,12/7:10 --move "green block on the red"
    python benchmarks/guidance_steps.py --weights spiral/models/weights/tiny_evolved.safetensors \
        --specs 1/0:10,6/7:10,8/7:10,10/7:10,12/7:10 --out benchmarks/results/guidance_steps_evolved.json

A spec is ``scale/first:end`` (guidance on steps first..end-1; 1/0:10 is the unguided baseline).
Results go to ``benchmarks/results/guidance_steps.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def generate(trainer: Any, prompts: list, scale: float, steps: range) -> list:
    """ODE segments with guidance ``scale`` on the sampler steps in ``steps`` and none elsewhere."""
    from spiral import flow

    policy = trainer.policy
    reqs = [trainer.request(p.sub_action.text, p.cond_frame, p.anchor_frame, 1000 + i) for i, p in enumerate(prompts)]
    batch = policy.prepare(reqs)
    guided, plain = dataclasses.replace(batch.cond, cfg_scale=scale), dataclasses.replace(batch.cond, cfg_scale=1.0)
    sigmas = policy.sigmas()
    on = {float(sigmas[i]) for i in steps}
    x0, _, _ = flow.sample(lambda x, s: policy.gen.denoiser(x, s, guided if float(s[0]) in on else plain),
                           policy.initial_noise(batch), sigmas)
    return policy.decode(x0, batch)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from spiral.train.grpo import GRPOConfig, GRPOTrainer, Stage
    from spiral.world.splits import is_heldout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default="1/0:10,8/0:10,8/0:7,8/5:10,8/7:10,12/7:10,16/7:10")
    ap.add_argument("--move", default="yellow block into the box", help="held-out sub-action text to look for")
    ap.add_argument("--n-move", type=int, default=16)
    ap.add_argument("--n-trained", type=int, default=32)
    ap.add_argument("--weights", default=None, help="tiny weights to test (default: the shipped tiny)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default="benchmarks/results/guidance_steps.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stage = Stage(name="single", kind="single", min_steps=1, max_steps=8)
    tmp = Path(tempfile.mkdtemp(prefix="guidance_steps_"))
    try:
        trainer = GRPOTrainer(GRPOConfig(out=str(tmp), weights=args.weights, heldout_moves="include",
                                          stages=[stage]), progress=False)
        pool = trainer.sample_prompts(400, stage, np.random.default_rng(args.seed))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sets = {"move": [p for p in pool if args.move in p.sub_action.text][:args.n_move],
            "trained": [p for p in pool if not is_heldout(p.sub_action.verb, p.sub_action.objects)][:args.n_trained]}
    if not sets["move"]:
        raise SystemExit(f"no sampled prompt contains {args.move!r}")
    sigmas = [round(float(s), 3) for s in trainer.policy.sigmas()]
    rows = []
    for spec in args.specs.split(","):
        scale, span = spec.split("/")
        first, end = (int(x) for x in span.split(":"))
        row: dict[str, Any] = {"cfg_scale": float(scale), "steps": [first, end],
                               "sigma_range": [sigmas[end - 1], sigmas[first]]}
        for name, prompts in sets.items():
            segs = generate(trainer, prompts, float(scale), range(first, end))
            verdicts = [trainer.critic.judge(s, p.sub_action, trainer.context(p))
                        for p, s in zip(prompts, segs)]
            row[name] = {"n": len(verdicts), "passed": sum(v.passed for v in verdicts),
                         "scene_drift": sum(v.failure == "scene_drift" for v in verdicts),
                         "max_action": round(max(v.scores["action"] for v in verdicts), 4),
                         "preservation": round(float(np.mean([v.scores["preservation"] for v in verdicts])), 4)}
        rows.append(row)
    table = Table(title=f"guidance by sampler step, tiny generator, ODE 10 steps, critic ({args.move!r})")
    for col in ("cfg", "steps", "σ range", "held-out move pass", "its max action", "trained pass", "scene drift",
                "preservation (trained)"):
        table.add_column(col, justify="right")
    for r in rows:
        m, t = r["move"], r["trained"]
        table.add_row(f"{r['cfg_scale']:g}", f"{r['steps'][0]}-{r['steps'][1] - 1}",
                      f"{r['sigma_range'][0]:.2f}-{r['sigma_range'][1]:.2f}", f"{m['passed']}/{m['n']}",
                      f"{m['max_action']:.2f}", f"{t['passed']}/{t['n']}", f"{m['scene_drift'] + t['scene_drift']}",
                      f"{t['preservation']:.4f}")
    Console().print(table)
    res = {"rows": rows, "sigmas": sigmas, "args": vars(args),
           "machine": {"platform": platform.platform(), "torch": torch.__version__}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
