"""Tiny generator speed on CPU: seconds per segment (batch 1 and batches of 16), peak memory, training samples/s.

Speed does not depend on the weights, so the default-config model is used with random weights
unless trained weights exist (``--weights``). The machine is shared, so every timing is the
median and the best of several repeats, and the load average is recorded next to them; the
best is the closest to an idle machine. The issue's budget is ≤ 0.25 s per segment at batch 1.

    python benchmarks/tiny_generator.py --out benchmarks/results/tiny_generator.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from spiral.generators.tiny import DEFAULT_WEIGHTS, TinyGenerator
from spiral.models.text import HashEncoder, get_text_encoder
from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT, load_weights
from spiral.train.generator import flow_loss
from spiral.types import GenerationRequest


def _timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median": statistics.median(ts), "best": min(ts)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="trained weights (default: the shipped ones if present)")
    ap.add_argument("--steps", type=int, default=12, help="sampling steps (the backend's default is 12)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", default="hash", help="text encoder for the timing: hash (no load time) or minilm")
    ap.add_argument("--out", default="benchmarks/results/tiny_generator.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    weights = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)
    if weights:
        model, _ = load_weights(weights)
    else:
        torch.manual_seed(0)
        model = TinyVideoDiT(TinyVideoConfig())
    c = model.config
    encoder = HashEncoder() if args.text == "hash" else get_text_encoder(args.text)
    gen = TinyGenerator(model=model, steps=args.steps, text_encoder=encoder)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, c.resolution, c.resolution, 3), dtype=np.uint8)
    reqs = [GenerationRequest(prompt=f"move the red block to the {s} slot", cond_frame=frames[i], seed=i,
                              num_frames=c.num_frames + 1, height=c.resolution, width=c.resolution)
            for i, s in zip(range(16), ["left", "right", "center", "far left"] * 4)]
    load0 = os.getloadavg()[0]
    b1 = _timed(lambda: gen.generate(reqs[0]), args.repeats)
    b16 = _timed(lambda: gen.generate_batch(reqs), max(2, args.repeats // 2))
    cfg3 = TinyGenerator(model=model, steps=args.steps, cfg_scale=3.0, text_encoder=encoder)
    b1_cfg = _timed(lambda: cfg3.generate(reqs[0]), max(2, args.repeats // 2))

    model.train()
    B = args.train_batch
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

    tr = _timed(train_step, max(2, args.repeats // 2))
    load1 = os.getloadavg()[0]
    result = {
        "model": {"params": model.num_params(), "config": json.loads(c.to_json()), "weights": str(weights or "random")},
        "steps": args.steps,
        "seconds_per_segment_batch1": b1,
        "seconds_per_segment_batch16": {k: v / 16 for k, v in b16.items()},
        "seconds_per_segment_batch1_cfg": b1_cfg,
        "train_samples_per_s": {"median": B / tr["median"], "best": B / tr["best"]},
        "train_batch": B,
        "peak_rss_mb": _peak_rss_mb(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_start_end": [round(load0, 2), round(load1, 2)]},
    }
    t = Table(title=f"tiny generator ({model.num_params() / 1e6:.2f} M params, {args.steps} steps, "
                    f"{torch.get_num_threads()} threads, load {load0:.1f}→{load1:.1f})")
    t.add_column("measure")
    t.add_column("median", justify="right")
    t.add_column("best", justify="right")
    t.add_row("s / segment, batch 1", f"{b1['median']:.3f}", f"{b1['best']:.3f}")
    t.add_row("s / segment, batch 16", f"{b16['median'] / 16:.3f}", f"{b16['best'] / 16:.3f}")
    t.add_row("s / segment, batch 1, CFG 3", f"{b1_cfg['median']:.3f}", f"{b1_cfg['best']:.3f}")
    t.add_row(f"training samples/s (batch {B})", f"{B / tr['median']:.1f}", f"{B / tr['best']:.1f}")
    t.add_row("peak RSS (MB)", f"{result['peak_rss_mb']:.0f}", "")
    Console().print(t)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
