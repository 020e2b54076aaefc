"""Tiny generator speed on CPU: seconds per segment (batch 1 and batches of 16), peak memory, training samples/s.

Speed does not depend on the weights, so the default-config model is used with random weights
unless trained weights exist (``--weights``). The machine is shared, so every timing is the
median and the best of several repeats, with the load average next to them, and also the
process CPU time: with one thread, CPU seconds are what the work takes on an idle core. On an
oversubscribed machine OpenMP threads that spin-wait steal the core from the thread doing the
work (2 threads were 10-25× slower than 1 at batch 1, load 3-6 on 2 cores), so the script sets
``OMP_WAIT_POLICY=PASSIVE`` (unless set) before torch loads and measures each ``--threads`` setting.
The issue's budget is ≤ 0.25 s per segment at batch 1.

    python benchmarks/tiny_generator.py --threads 1,2 --out benchmarks/results/tiny_generator.json
"""

from __future__ import annotations

import os

# Before torch loads: spinning OpenMP waits make 2 threads 10× slower than 1 on a busy machine (see the docstring).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import resource
import statistics
import time

import numpy as np
import torch
from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.generators.tiny import DEFAULT_WEIGHTS, TinyGenerator
from spiral.models.text import HashEncoder, get_text_encoder
from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT, load_weights
from spiral.train.generator import flow_loss
from spiral.types import GenerationRequest


def _timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up
    ts, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"median": statistics.median(ts), "best": min(ts), "cpu": statistics.median(cpu)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure(model: TinyVideoDiT, encoder, steps: int, repeats: int, train_batch: int) -> dict:
    c = model.config
    gen = TinyGenerator(model=model.eval(), steps=steps, text_encoder=encoder)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, c.resolution, c.resolution, 3), dtype=np.uint8)
    reqs = [GenerationRequest(prompt=f"move the red block to the {s} slot", cond_frame=frames[i], seed=i,
                              num_frames=c.num_frames + 1, height=c.resolution, width=c.resolution)
            for i, s in zip(range(16), ["left", "right", "center", "far left"] * 4)]
    load0 = os.getloadavg()[0]
    b1 = _timed(lambda: gen.generate(reqs[0]), repeats)
    b16 = _timed(lambda: gen.generate_batch(reqs), max(2, repeats // 2))
    cfg3 = TinyGenerator(model=model, steps=steps, cfg_scale=3.0, text_encoder=encoder)
    b1_cfg = _timed(lambda: cfg3.generate(reqs[0]), max(2, repeats // 2))

    model.train()
    B = train_batch
    clips = torch.from_numpy(rng.integers(0, 256, (B, c.num_frames + 1, c.resolution, c.resolution, 3),
                                          dtype=np.uint8))
    text, sigma = torch.randn(B, c.text_dim), torch.rand(B)
    noise = torch.randn(B, c.num_frames, 3, c.resolution, c.resolution)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step() -> None:
        loss = flow_loss(model, clips, clips[:, 0], text, sigma, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    tr = _timed(train_step, max(2, repeats // 2))
    model.eval()
    return {
        "seconds_per_segment_batch1": b1,
        "seconds_per_segment_batch16": {k: v / 16 for k, v in b16.items()},
        "seconds_per_segment_batch1_cfg": b1_cfg,
        "train_samples_per_s": {"median": B / tr["median"], "best": B / tr["best"], "per_cpu_second": B / tr["cpu"]},
        "load_average_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "tiny_generator.json", threads="1,2")
    ap.add_argument("--weights", default=None, help="trained weights (default: the shipped ones if present)")
    ap.add_argument("--steps", type=int, default=10, help="sampling steps (the backend's default is 10)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--text", default="hash", help="text encoder for the timing: hash (no load time) or minilm")
    args = ap.parse_args(argv)

    weights = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)
    if weights:
        model, _ = load_weights(weights)
    else:
        torch.manual_seed(0)
        model = TinyVideoDiT(TinyVideoConfig())
    encoder = HashEncoder() if args.text == "hash" else get_text_encoder(args.text)
    runs = {}
    for n in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(n)
        runs[str(n)] = _measure(model, encoder, args.steps, args.repeats, args.train_batch)
    result = {
        "model": {"params": model.num_params(), "config": json.loads(model.config.to_json()),
                  "weights": str(weights or "random")},
        "steps": args.steps,
        "train_batch": args.train_batch,
        "by_threads": runs,
        "peak_rss_mb": _peak_rss_mb(),
    }
    t = Table(title=f"tiny generator ({model.num_params() / 1e6:.2f} M params, {args.steps} steps); "
                    f"wall median / best / CPU s")
    t.add_column("measure")
    for n, r in runs.items():
        t.add_column(f"{n} thread(s), load {r['load_average_start_end'][0]:.1f}", justify="right")

    def row(name: str, key: str, scale: float = 1.0) -> None:
        t.add_row(name, *(f"{r[key]['median'] * scale:.3f} / {r[key]['best'] * scale:.3f} / {r[key]['cpu'] * scale:.3f}"
                          if "cpu" in r[key] else "" for r in runs.values()))

    row("s / segment, batch 1", "seconds_per_segment_batch1")
    t.add_row("s / segment, batch 16", *(f"{r['seconds_per_segment_batch16']['median']:.3f} / "
                                         f"{r['seconds_per_segment_batch16']['best']:.3f} / "
                                         f"{r['seconds_per_segment_batch16']['cpu']:.3f}" for r in runs.values()))
    row("s / segment, batch 1, CFG 3", "seconds_per_segment_batch1_cfg")
    t.add_row(f"training samples/s (batch {args.train_batch}): median / best / per CPU s",
              *(f"{r['train_samples_per_s']['median']:.1f} / {r['train_samples_per_s']['best']:.1f} / "
                f"{r['train_samples_per_s']['per_cpu_second']:.1f}" for r in runs.values()))
    t.add_row("peak RSS (MB)", f"{result['peak_rss_mb']:.0f}", *[""] * (len(runs) - 1))
    Console().print(t)
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
