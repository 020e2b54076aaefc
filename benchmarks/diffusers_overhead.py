"""What the diffusers adapters cost on top of a bare pipeline call.

The adapter adds size checks, a crop/resize of the conditioning frame, a CPU-seeded generator,
uint8 conversion, the restore to the run's size and the frame-0 replacement. This script times a
bare ``pipe(image=..., prompt=..., ...)`` call (what a user would write) against
``adapter.generate(request)`` on the *same* pipeline object with the same arguments, interleaved
so that machine load hits both alike, and reports medians.

    python benchmarks/diffusers_overhead.py                      # tiny random pipelines, CPU
    python benchmarks/diffusers_overhead.py --full-wan21         # GPU: Wan 2.1 1.3B-style I2V, 33 frames, 480p
    python benchmarks/diffusers_overhead.py --full-wan21 --lora-step   # + one LoRA forward/backward of the denoiser
    python benchmarks/diffusers_overhead.py --full-wan21 --dry-run     # build on the meta device, count parameters
    python benchmarks/diffusers_overhead.py --full-wan21 --lora-step --grpo-step   # + one real GRPO step
    python benchmarks/diffusers_overhead.py --backends wan21-i2v wan22-ti2v ltx-i2v --grpo-step --repeats 1

``--full-wan21`` builds the full-size architecture with random weights (nothing to download): the
1.3B transformer with I2V inputs, the Wan VAE, a ViT-H/14 image encoder and a UMT5-XXL text encoder,
in bfloat16 on the GPU (VAE in float32), ~14 GB of weights. Results go to
``benchmarks/results/diffusers_overhead.json`` (``--out`` to change); the full run also writes the
file after each part, so a run killed by a timeout keeps what it had measured.

``--grpo-step`` runs one ``GRPOTrainer.step()`` (``spiral.train.grpo``) on a ``DiffusersPolicy``
(LoRA on the transformer) wrapped around the same adapter: planner prompts from the tabletop world
(64x64 rendered conditioning frames), ``group_size`` 2 SDE rollouts of one prompt with the adapter's
guidance, critic rewards, and the clipped-ratio + KL update on ``timestep_fraction`` 0.25 of the
steps, with gradient checkpointing. The adapter's ``height``/``width``/``num_frames`` options are set
to the timed size, so the rollouts are generated at the model size (480x832x33 for ``--full-wan21``)
and restored to 64x64 for the critic. The first step of a fresh trainer, no warm-up step: it includes
the first backward's one-time costs. CogVideoX has no flow access and is skipped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import parser, write_result

from spiral.generators.diffusers import DiffusersI2V, require_diffusers
from spiral.generators.diffusers.testing import TINY_BUILDERS, build_wan21_i2v, save_tiny
from spiral.types import GenerationRequest

BACKENDS = list(TINY_BUILDERS)
PROMPT = "move the red block into the box"
CONTEXT = "Scene: a table with a red block and an open box. Done so far: nothing yet. Now: move the red block into the box."


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _request(height: int, width: int, frames: int, seed: int) -> GenerationRequest:
    cond = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return GenerationRequest(prompt=PROMPT, context=CONTEXT, cond_frame=cond, seed=seed, num_frames=frames,
                             height=height, width=width)


def bare_call(adapter: DiffusersI2V, request: GenerationRequest) -> np.ndarray:
    """The pipeline called the way its documentation shows, with the adapter's arguments."""
    size = adapter.model_size(request)
    kwargs = adapter.call_arguments(request, size)
    image = adapter.cond_image(request, size)
    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    return adapter.pipe(image=image, generator=generator, **kwargs).frames[0]


def time_pair(adapter: DiffusersI2V, request: GenerationRequest, repeats: int) -> dict[str, Any]:
    """Median seconds of bare calls and adapter calls, interleaved; one warm-up of each first."""
    device = adapter.pipe._execution_device
    bare_call(adapter, request)
    adapter.generate(request)
    bare, wrapped, inner = [], [], []
    for i in range(repeats):
        for kind in (("bare", "adapter") if i % 2 == 0 else ("adapter", "bare")):
            _sync(device)
            t0 = time.perf_counter()
            if kind == "bare":
                bare_call(adapter, request)
            else:
                seg = adapter.generate(request)
                inner.append(seg.timings)
            _sync(device)
            (bare if kind == "bare" else wrapped).append(time.perf_counter() - t0)
    b, a = statistics.median(bare), statistics.median(wrapped)
    extra = {k: statistics.median(t[k] for t in inner) for k in ("preprocess", "postprocess")}
    return {"bare_s": round(b, 4), "adapter_s": round(a, 4), "overhead_pct": round(100 * (a - b) / b, 2),
            "adapter_pre_s": round(extra["preprocess"], 5), "adapter_post_s": round(extra["postprocess"], 5),
            "bare_all_s": [round(x, 4) for x in bare], "adapter_all_s": [round(x, 4) for x in wrapped]}


def lora_step(adapter: Any, request: GenerationRequest, rank: int = 32) -> dict[str, Any]:
    """One LoRA forward + backward of the guided velocity at one mid-schedule timestep.

    A GRPO update costs about this × rollouts × trained timesteps (plus the sampling itself). The
    adapter (named ``lora_step``) is removed again afterwards, so the denoiser is back to its base
    layers for what comes next (``--grpo-step`` adds its own ``default`` adapter).
    """
    from peft import LoraConfig

    device = adapter.pipe._execution_device
    model = adapter.denoiser
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                      adapter_name="lora_step")
    if hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    inputs = adapter.prepare(request)
    i = len(inputs.timesteps) // 2
    noise = inputs.latents
    x_t = noise  # any state works for timing; the shapes and the graph are what cost
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    v = adapter.velocity(x_t, inputs.timesteps[i], inputs)
    loss = v.float().pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - t0
    model.eval()
    out = {"lora_rank": rank, "trainable_params": sum(p.numel() for p in params), "seconds": round(seconds, 3)}
    if device.type == "cuda":
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del opt, params, v, loss
    model.unload_lora()  # every peft layer back to its base layer, peft_config gone
    return out


def grpo_config(out: str | Path, args: argparse.Namespace, guidance: float, rank: int, device: str) -> Any:
    """The config of the one-step GRPO run: one prompt, a group of 2, the single-step curriculum stage."""
    from spiral.train.grpo import GRPOConfig, Stage

    return GRPOConfig(generator="diffusers", diffusers_model="unused-for-explicit-policy", out=str(out),
                      lora_rank=rank, group_size=2, prompts_per_step=1, sample_steps=args.steps, cfg_scale=guidance,
                      timestep_fraction=0.25, eval_every=0, sample_every=0, ckpt_every=0,
                      stages=[Stage(name="single", kind="single")], device=device)


def grpo_step(adapter: Any, args: argparse.Namespace, height: int, width: int, frames: int, rank: int
              ) -> dict[str, Any]:
    """One real ``GRPOTrainer.step()`` on a LoRA ``DiffusersPolicy`` around ``adapter``, generating at height×width×frames.

    The trainer's requests are 64x64 (its rendered tabletop frames, the critic's size); the
    adapter's size options make the model generate at the given size and restore to 64x64.
    """
    from spiral.train.grpo import GRPOTrainer
    from spiral.train.policy import DiffusersPolicy

    device = adapter.pipe._execution_device
    adapter.height, adapter.width, adapter.num_frames = height, width, frames
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        policy = DiffusersPolicy(adapter, steps=args.steps, lora_rank=rank)
        checkpointing = hasattr(policy.model, "enable_gradient_checkpointing")
        if checkpointing:  # the update backpropagates through full-size activations (cond + uncond)
            policy.model.enable_gradient_checkpointing()
        cfg = grpo_config(tmp, args, adapter.guidance_scale, rank, str(device))
        trainer = GRPOTrainer(cfg, policy=policy, progress=False)
        build_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        rec = trainer.step()
        _sync(device)
        wall = time.perf_counter() - t0
    segs = trainer.last_rollout["segments"]
    out = {"first_step": True, "lora_rank": rank, "trainable_params": sum(p.numel() for p in trainer.params.values()),
           "gradient_checkpointing": checkpointing, "group_size": cfg.group_size,
           "prompts_per_step": cfg.prompts_per_step, "sample_steps": args.steps,
           "timestep_fraction": cfg.timestep_fraction, "cfg_scale": cfg.cfg_scale,
           "model_size": segs[0].meta["model_size"], "segment_shape": list(segs[0].frames.shape),
           "build_s": round(build_s, 2), "wall_s": round(wall, 3),
           **{k: round(rec[k], 4) for k in ("seconds_prompts", "seconds_rollout", "seconds_update", "seconds_step")},
           "trained_timesteps": rec["trained_timesteps"], "optimizer_steps": rec["optimizer_steps"],
           "skipped_updates": rec["skipped_updates"], "finite_loss": bool(np.isfinite(rec["loss"])),
           "loss": rec["loss"], "kl": rec["kl"], "grad_norm": rec["grad_norm"], "reward_mean": rec["reward_mean"],
           "prompt": trainer.last_rollout["requests"][0].prompt}
    if device.type == "cuda":
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if checkpointing:
        policy.model.disable_gradient_checkpointing()
    policy.model.unload_lora()  # the denoiser back to its base layers
    return out


def run_tiny(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends:
            from spiral import registry

            path = save_tiny(name, Path(tmp) / name)
            adapter = registry.create("generator", name, model=str(path), num_inference_steps=args.steps, device="cpu")
            req = _request(args.size, args.size, args.frames, seed=1)
            rows[name] = time_pair(adapter, req, args.repeats)
            rows[name]["model_size"] = list(vars(adapter.model_size(req)).values())
            if args.lora_step and hasattr(adapter, "velocity"):
                rows[name]["lora_step"] = lora_step(adapter, req, rank=4)
            if args.grpo_step:
                rows[name]["grpo_step"] = (grpo_step(adapter, args, args.size, args.size, args.frames, rank=4)
                                           if hasattr(adapter, "velocity") else "skipped: no flow access")
    return {"mode": "tiny", "device": "cpu", "threads": args.threads, "steps": args.steps, "frames": args.frames,
            "size": args.size, "repeats": args.repeats, "backends": rows}


def run_full_wan21(args: argparse.Namespace) -> dict[str, Any]:
    require_diffusers()
    from spiral.generators.diffusers import WanI2VAdapter

    if args.dry_run:
        pipe = build_wan21_i2v(full=True, device="meta")
        counts = {k: sum(p.numel() for p in getattr(pipe, k).parameters())
                  for k in ("transformer", "text_encoder", "image_encoder", "vae")}
        out = {"mode": "full-wan21-dry-run", "parameters": counts,
               "bf16_weights_gib": round(sum(counts.values()) * 2 / 2**30, 2)}
        if args.grpo_step:  # the config validates; nothing runs on the meta device
            out["grpo_config"] = grpo_config("unused", args, 5.0, 32, "cuda").model_dump(
                include={"group_size", "prompts_per_step", "sample_steps", "cfg_scale", "timestep_fraction"})
        return out
    if not torch.cuda.is_available():
        raise SystemExit("--full-wan21 needs a CUDA GPU (use --dry-run to check the build on CPU)")
    device = torch.device("cuda")
    t0 = time.perf_counter()
    pipe = build_wan21_i2v(full=True, device=device)
    for name in ("transformer", "text_encoder", "image_encoder"):
        getattr(pipe, name).to(torch.bfloat16)
    build_s = time.perf_counter() - t0
    # height/width/num_frames fix the model size: the GRPO step's 64x64 requests generate at 480x832x33 too
    adapter = WanI2VAdapter(pipeline=pipe, model="wan21-1.3b-i2v-random", device="cuda", dtype="bfloat16",
                            num_inference_steps=args.steps, guidance_scale=5.0, height=args.height,
                            width=args.width, num_frames=args.frames)
    req = _request(args.height, args.width, args.frames, seed=1)
    torch.cuda.reset_peak_memory_stats(device)
    timing = time_pair(adapter, req, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    out = {"mode": "full-wan21", "device": torch.cuda.get_device_name(device), "build_s": round(build_s, 1),
           "steps": args.steps, "frames": args.frames, "height": args.height, "width": args.width,
           "repeats": args.repeats, "peak_gpu_gib_generate": round(peak, 2), "wan21": timing,
           "parameters": {k: sum(p.numel() for p in getattr(pipe, k).parameters())
                          for k in ("transformer", "text_encoder", "image_encoder", "vae")}}
    _write(args, {**out, "partial": True})
    if args.lora_step:
        out["lora_step"] = lora_step(adapter, req)
        _write(args, {**out, "partial": True})
    if args.grpo_step:
        out["grpo_step"] = grpo_step(adapter, args, args.height, args.width, args.frames, rank=32)
    return out


def _write(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    """The JSON with the diffusers version and the time added (``*_dry_run.json`` for a dry run)."""
    result = {**result, "diffusers": require_diffusers().__version__, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = args.json if not args.dry_run else args.json.with_name(args.json.stem + "_dry_run.json")
    return write_result(out, result, device="cuda" if args.full_wan21 else None)


def main() -> None:
    ap = parser(__doc__, "diffusers_overhead.json", threads=1, threads_help="tiny: torch CPU threads")
    ap.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    ap.add_argument("--repeats", type=int, default=None, help="timed pairs (default 7 tiny, 2 full)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 4 tiny, 50 full)")
    ap.add_argument("--frames", type=int, default=None, help="frames per segment (default 9 tiny, 33 full)")
    ap.add_argument("--size", type=int, default=64, help="tiny: square frame size")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--full-wan21", action="store_true", help="full-size Wan 2.1 1.3B-style I2V on a GPU")
    ap.add_argument("--dry-run", action="store_true", help="with --full-wan21: build on the meta device only")
    ap.add_argument("--lora-step", action="store_true", help="also time one LoRA forward+backward of the denoiser")
    ap.add_argument("--grpo-step", action="store_true",
                    help="also run one GRPOTrainer step (LoRA DiffusersPolicy) on the flow-capable adapters")
    args = ap.parse_args()
    full = args.full_wan21
    args.repeats = args.repeats or (2 if full else 7)
    args.steps = args.steps or (50 if full else 4)
    args.frames = args.frames or (33 if full else 9)

    result = run_full_wan21(args) if full else run_tiny(args)
    rows = result.get("backends") or ({"wan21 (full)": result["wan21"]} if "wan21" in result else {})
    if rows:
        print(f"{'backend':<16}{'bare s':>10}{'adapter s':>11}{'overhead':>10}{'pre ms':>9}{'post ms':>9}")
        for name, r in rows.items():
            print(f"{name:<16}{r['bare_s']:>10.3f}{r['adapter_s']:>11.3f}{r['overhead_pct']:>9.1f}%"
                  f"{1000 * r['adapter_pre_s']:>9.2f}{1000 * r['adapter_post_s']:>9.2f}")
    for name, r in rows.items():
        for key in ("lora_step", "grpo_step"):
            if key in r:
                print(f"{key} {name}: {r[key]}")
    for key in ("parameters", "bf16_weights_gib", "peak_gpu_gib_generate", "lora_step", "grpo_step", "grpo_config"):
        if key in result:
            print(f"{key}: {result[key]}")
    print(f"wrote {_write(args, result)}")


if __name__ == "__main__":
    main()
