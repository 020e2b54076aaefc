"""Task-specific fine-tuning of a diffusers image-to-video generator on ActVideoGen-Dataset steps
(``spiral train sft``; DESIGN §6).

The model is the generator exactly as ``spiral run`` builds it (``registry.create`` with the config's
``generator: {name, options}``), so a trained step sees what the loop will give it:

* the **conditioning frame** is the step's first frame (or, with ``condition: previous_last``, the previous step's
  last frame, as the loop conditions a step on the accepted one before it), fitted to the model's size by the
  adapter's own crop/resize (``fit_frame``);
* the **prompt** is the step text composed with the episode's earlier steps by :func:`spiral.types.memory_prompt`
  (the function behind ``Memory.prompt``), then shaped by the adapter's ``prompt_source``/``prompt_template``;
* the **clip** is ``num_frames`` frames sampled evenly over the step's annotated range, at the model's size.

The loss is the backbone's own objective (:func:`flow_matching_loss` for Wan 2.1/2.2 and LTX, :func:`v_prediction_loss`
for CogVideoX), computed through the adapter's mirror of its pipeline (conditioning, latents, transformer call).
Only the transformer is trained: peft LoRA on its attention projections (saved in the format diffusers'
``load_lora_weights`` reads, :func:`spiral.generators.diffusers.lora.save_lora`) or all of its weights.

Several processes (``torchrun --nproc_per_node N``): each rank takes ``LOCAL_RANK``'s device (``cuda:<rank>`` on a
GPU machine), its own share of the data (every N-th example of a permutation all ranks agree on) and its own noise;
gradients are averaged with ``torch.distributed.all_reduce`` (gloo on CPU, nccl on CUDA) before each update. Not
DDP-wrapped: the adapters call their transformer directly (``pipe.transformer``), and the explicit all-reduce is the
same arithmetic.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spiral.train.common import (
    EMA,
    RunLog,
    load_state,
    rank_device,
    rng_state,
    save_state,
    save_tensors,
    set_rng_state,
)
from spiral.train.sft_config import RUNTIME_FIELDS, SFTConfig, load_config

__all__ = ["SFTConfig", "SFTTrainer", "Example", "flow_matching_loss", "flow_pair", "load_config", "load_examples",
           "read_frames", "train_sft", "v_pair", "v_prediction_loss"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- data


@dataclass
class Example:
    """One training step of a dataset episode: where its frames are and what conditions it."""

    episode: str
    step: int
    video: Path
    start: int  # the step's annotated frame range in the video (inclusive)
    end: int
    cond_index: int  # the conditioning frame's index in the video
    instruction: str
    context: str  # memory_prompt(scene, earlier steps, instruction)

    def frames(self, n: int) -> list[int]:
        """``n`` frame indices spread evenly over the step (repeats when the step is shorter than ``n``)."""
        return np.round(np.linspace(self.start, self.end, n)).astype(int).tolist()


def load_examples(cfg: SFTConfig) -> list[Example]:
    """The dataset's trainable steps as examples; a dataset with bad lines is refused with the first one."""
    from spiral.data.format import check_dataset
    from spiral.memory import describe_state
    from spiral.types import memory_prompt

    root = Path(cfg.data)
    if not (root / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"{root} is not an ActVideoGen-Dataset folder (no manifest.jsonl); fix: set data: to "
                                "a folder made by `spiral data build` or `spiral data import`")
    report = check_dataset(root)
    if report.errors:
        raise ValueError(f"{root}: {len(report.errors)} bad manifest line(s), first: {report.errors[0]}; fix: run "
                         f"`spiral data check {root}` and repair or remove them")
    out = []
    for ep in report.episodes:
        if cfg.split is not None and ep.split != cfg.split:
            continue
        scene = describe_state(ep.initial_state)
        for j, step in enumerate(ep.steps):
            if step.label not in cfg.labels:
                continue
            cond = ep.steps[j - 1].end_frame if cfg.condition == "previous_last" and j > 0 else step.start_frame
            done = [s.text for s in ep.steps[:j]]
            out.append(Example(ep.id, j, root / ep.video, step.start_frame, step.end_frame, cond, step.text,
                               memory_prompt(scene, done, step.text)))
    if not out:
        raise ValueError(f"{root} has no steps with labels {cfg.labels} in split {cfg.split!r}; fix: check split: "
                         "and labels: in the config")
    return out


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The frames ``indices`` of a video as H×W×3 uint8, decoding up to the last of them and keeping only those
    (a step of a long video never holds the whole video in memory)."""
    import av

    want, out = set(indices), {}
    last = max(want)
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in want:
                    out[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"cannot decode {path}: {str(e).splitlines()[0]}; fix: run `spiral data check` on the "
                         "dataset") from None
    if last not in out:
        raise ValueError(f"{path} has {len(out) and max(out) + 1 or 0} frames or fewer, but frame {last} is "
                         "annotated; fix: run `spiral data check` on the dataset")
    return out


# ------------------------------------------------------------------------------------------------- objectives


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    err = (pred - target) ** 2
    if mask is None:
        return err.mean()
    mask = mask.expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1)


def flow_matching_loss(adapter: Any, inputs: Any, x0: torch.Tensor, cfg: SFTConfig,
                       generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Rectified-flow loss ‖v(x_σ, σ) − (ε − x0)‖² with x_σ = (1 − σ)·x0 + σ·ε (Wan 2.1/2.2, LTX).

    σ: u from diffusers' ``compute_density_for_timestep_sampling`` (the flow-matching training scripts of
    diffusers, e.g. examples/dreambooth/train_dreambooth_lora_sd3.py: logit-normal by default), shifted by the
    model's scheduler as its inference schedule is (``adapter.train_sigmas``: Wan's ``flow_shift``, LTX's
    resolution-dependent ``mu``). Latents fixed by conditioning (``free_mask`` 0: Wan 2.2's and LTX's first latent
    frame) hold the conditioning latents, as the pipelines keep them while sampling, and are left out of the loss.
    """
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(cfg.timestep_sampling, 1, cfg.logit_mean, cfg.logit_std,
                                              cfg.mode_scale, generator=generator)
    sigma = adapter.train_sigmas(u, inputs).to(x0.device, torch.float32)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x, target = flow_pair(x0, noise, sigma)
    mask = inputs.free_mask
    if mask is not None:
        x = mask * x + (1 - mask) * inputs.latents
    v = adapter.flow_fn(inputs)(x, sigma)
    return _masked_mse(v, target, mask), {"sigma": float(sigma[0])}


def flow_pair(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy input x_σ = (1 − σ)·x0 + σ·ε and the velocity target ε − x0 that the flow schedulers integrate
    (a FlowMatchEuler step x + (σ' − σ)·v then lands on x_σ')."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise, noise - x0


def v_pair(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy input ``scheduler.add_noise(x0, ε, t)`` and the v target ``scheduler.get_velocity(x0, ε, t)``."""
    return scheduler.add_noise(x0, noise, t), scheduler.get_velocity(x0, noise, t)


def v_prediction_loss(adapter: Any, inputs: Any, x0: torch.Tensor, cfg: SFTConfig,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """DDPM v-prediction loss ‖v̂(x_t, t) − v‖², v = scheduler.get_velocity(x0, ε, t) = √ᾱ_t·ε − √(1 − ᾱ_t)·x0 (CogVideoX).

    t uniform over the scheduler's training timesteps and x_t = scheduler.add_noise(x0, ε, t), as diffusers'
    examples/cogvideo/train_cogvideox_image_to_video_lora.py. That script compares the x0 recovered from v̂
    (weighted by 1/(1 − ᾱ_t)); the weighted x0 error equals this v error exactly, since x̂0 − x0 = −√(1 − ᾱ_t)·(v̂ − v).
    """
    sched = adapter.pipe.scheduler
    t = torch.randint(0, int(sched.config.num_train_timesteps), (1,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t_dev = t.to(x0.device)
    noisy, target = v_pair(sched, x0, noise, t_dev)
    pred = adapter.v_prediction(noisy, t_dev, inputs)
    return _masked_mse(pred, target, None), {"timestep": int(t[0])}


# ------------------------------------------------------------------------------------------------- trainer


def _dist() -> tuple[int, int]:
    """(rank, world size); starts torch.distributed under torchrun (gloo on CPU, nccl with CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _rank_device(options: dict[str, Any]) -> dict[str, Any]:
    """The generator's options with this rank's device (:func:`spiral.train.common.rank_device`)."""
    return {**options, "device": rank_device(str(options.get("device", "auto")))}


class SFTTrainer:
    """One fine-tuning run (see the module docstring); ``run()`` trains to ``cfg.steps`` and exports."""

    def __init__(self, cfg: SFTConfig, resume: bool = False):
        from spiral import registry

        self.cfg, self.out = cfg, Path(cfg.out)
        self.rank, self.world = _dist()
        self._check_out(resume)  # refuses a bad --resume / an occupied out before any weight loads
        self.examples = load_examples(cfg)  # and a bad dataset
        self.adapter = registry.create("generator", cfg.generator.name, **_rank_device(cfg.generator.options))
        if getattr(self.adapter.pipe, "transformer_2", None) is not None:
            raise ValueError(f"{self.adapter.model} is a two-expert Wan 2.2 checkpoint; spiral train sft trains one "
                             "transformer, so it is not supported yet; fix: fine-tune a single-transformer model "
                             "(Wan 2.1 I2V, Wan 2.2 TI2V-5B)")
        from spiral.types import GenerationRequest

        probe = GenerationRequest(prompt="", num_frames=cfg.num_frames, height=cfg.height, width=cfg.width)
        self.size = self.adapter.model_size(probe)
        if self.rank == 0 and not resume:  # written once everything it names has been checked
            from spiral.atomic import write_text

            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.json", self.cfg.model_dump_json(indent=2))
        self.cache: dict[int, tuple[Any, torch.Tensor]] = {}
        self.model = self.adapter.denoiser
        self._setup_params()
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay, eps=cfg.eps)
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank)
        self.step = 0
        self.log = RunLog(self.out, tensorboard=cfg.tensorboard) if self.rank == 0 else None
        if resume:
            self._load_checkpoint()

    # ---------------------------------------------------------------------------------------- set-up

    def _check_out(self, resume: bool) -> None:
        saved = self.out / "config.json"
        if resume:
            if not saved.is_file():
                raise FileNotFoundError(f"{self.out} has no config.json to resume; fix: drop --resume or point "
                                        "out: at a folder written by spiral train sft")
            old = SFTConfig.model_validate(json.loads(saved.read_text()))
            if old.identity() != self.cfg.identity():
                diff = sorted(k for k, v in self.cfg.model_dump(mode="json").items()
                              if old.model_dump(mode="json").get(k) != v and k not in RUNTIME_FIELDS)
                raise ValueError(f"--resume {self.out}: the config differs from the run's in {diff}; fix: resume "
                                 "with its own config.json or start a new out:")
        elif (self.out / "checkpoint" / "optimizer.pt").is_file():  # a run that died before it saved starts over
            raise FileExistsError(f"{self.out} already holds a run; fix: --resume to continue it, or set another "
                                  "out:")

    def _setup_params(self) -> None:
        """Freeze every pipeline component, then make the LoRA (or the whole transformer) trainable."""
        from spiral.train.policy import add_lora

        cfg, pipe = self.cfg, self.adapter.pipe
        for comp in pipe.components.values():
            if isinstance(comp, torch.nn.Module):
                comp.requires_grad_(False)
        if cfg.mode == "lora":
            torch.manual_seed(cfg.seed)  # peft draws lora_A from torch's global generator: the same start per seed
            add_lora(self.model, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank, cfg.lora_targets or self.adapter.lora_targets)
        else:
            self.model.requires_grad_(True)
        dtype = getattr(torch, cfg.trainable_dtype)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        for p in self.params.values():  # diffusers.training_utils.cast_training_params
            p.data = p.data.to(dtype)
        if cfg.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        if self.world > 1:  # every rank starts from rank 0's LoRA init
            import torch.distributed as dist

            for p in self.params.values():
                dist.broadcast(p.data, 0)

    # ------------------------------------------------------------------------------------------ data

    def order(self, step: int, micro: int) -> int:
        """The example index of micro-batch ``micro`` of optimizer ``step`` on this rank: ranks take disjoint
        slots of one permutation per epoch, all a function of (seed, epoch)."""
        n = len(self.examples)
        slot = (step * self.cfg.batch_size + micro) * self.world + self.rank
        epoch, pos = divmod(slot, n)
        return int(np.random.default_rng([self.cfg.seed, epoch]).permutation(n)[pos])

    def request(self, ex: Example, cond: np.ndarray) -> Any:
        """The generation request the loop would make for this step: its text, memory context and frame."""
        from spiral.types import GenerationRequest

        return GenerationRequest(prompt=ex.instruction, context=ex.context, cond_frame=cond,
                                 seed=self.cfg.seed, num_frames=self.cfg.num_frames, height=self.cfg.height,
                                 width=self.cfg.width)

    def _inputs(self, k: int) -> tuple[Any, torch.Tensor]:
        """Conditioning and clean latents of example ``k`` (cached with ``cache_latents``)."""
        if k in self.cache:
            return self.cache[k]
        ex = self.examples[k]
        indices = ex.frames(self.size.num_frames)
        video = read_frames(ex.video, [*indices, ex.cond_index])
        req = self.request(ex, video[ex.cond_index])
        frames = np.stack([self.adapter.fit_frame(video[i], self.size) for i in indices])
        with torch.no_grad():
            if self.cfg.objective == "flow_matching":
                inputs = self.adapter.prepare(req, num_inference_steps=1, guidance_scale=1.0)
            else:
                inputs = self.adapter.prepare_training(req)
            x0 = self.adapter.encode_video(frames, inputs)
        if self.cfg.cache_latents:
            self.cache[k] = (inputs, x0)
        return inputs, x0

    # -------------------------------------------------------------------------------------- training

    def lr_at(self, step: int) -> float:
        w = self.cfg.warmup_steps
        return self.cfg.lr * (min(1.0, (step + 1) / w) if w else 1.0)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``batch_size`` examples per rank; returns the logged record."""
        cfg = self.cfg
        loss_fn = flow_matching_loss if cfg.objective == "flow_matching" else v_prediction_loss
        t0 = time.perf_counter()
        self.model.train()
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.step)
        total, extras, used = 0.0, [], []
        for micro in range(cfg.batch_size):
            k = self.order(self.step, micro)
            try:
                inputs, x0 = self._inputs(k)
                loss, extra = loss_fn(self.adapter, inputs, x0, cfg, self.generator)
                (loss / cfg.batch_size).backward()
            except torch.OutOfMemoryError:
                raise self.adapter.out_of_memory(self.size, (
                    "gradient_checkpointing: true, mode: lora with a smaller lora_rank, smaller height/width/"
                    "num_frames, generator.options.cpu_offload: model with cache_latents: true, or a larger GPU"
                )) from None
            total += float(loss.detach()) / cfg.batch_size
            extras.append(extra)
            used.append(f"{self.examples[k].episode}/{self.examples[k].step}")
        examples = [used]
        if self.world > 1:
            import torch.distributed as dist

            examples = [None] * self.world
            dist.all_gather_object(examples, used)

            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()]
            for g in grads:
                dist.all_reduce(g)
                g /= self.world
            for p, g in zip(self.params.values(), grads):
                p.grad = g
            t = torch.tensor([total])
            dist.all_reduce(t)
            total = float(t[0]) / self.world
        norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.params, self.step)
        self.step += 1
        return {"step": self.step, "loss": total, "grad_norm": float(norm), "lr": self.lr_at(self.step - 1),
                "seconds": round(time.perf_counter() - t0, 4), "draws": extras, "examples": examples}

    @torch.no_grad()
    def evaluate(self, draws: int = 4, seed: int = 12345) -> float:
        """Mean loss over every example × ``draws`` noise/timestep draws from a fixed seed: the same draws at every
        call, so two calls differ only by the weights (training's own losses vary with their random draws)."""
        loss_fn = flow_matching_loss if self.cfg.objective == "flow_matching" else v_prediction_loss
        gen = torch.Generator().manual_seed(seed)
        self.model.eval()
        total = 0.0
        for k in range(len(self.examples)):
            inputs, x0 = self._inputs(k)
            for _ in range(draws):
                total += float(loss_fn(self.adapter, inputs, x0, self.cfg, gen)[0])
        return total / (len(self.examples) * draws)

    def run(self, minutes: float | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``minutes`` of wall time), checkpointing; export; returns a summary."""
        cfg, start, losses = self.cfg, time.perf_counter(), []
        while self.step < cfg.steps:
            rec = self.train_step()
            losses.append(rec["loss"])
            if self.log is not None and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                self.log.write(rec)
                self.log.scalars({"sft/loss": rec["loss"], "sft/grad_norm": rec["grad_norm"]}, self.step)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self.sample()
            if minutes is not None and time.perf_counter() - start > 60 * minutes:
                self.save_checkpoint()
                break
        result = {"steps": self.step, "losses": losses, "export": None}
        if self.step >= cfg.steps:
            result["export"] = str(self.export())
        if self.log is not None:
            self.log.close()
        return result

    # ------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        """Trained tensors (+ EMA), optimizer, step and this rank's random states; atomic files."""
        ck = self.out / "checkpoint"
        if self.rank == 0:
            save_tensors(ck / "trainable.safetensors", self.params)
            if self.ema is not None:
                save_tensors(ck / "ema.safetensors", self.ema.state_dict())
            save_state(ck / "optimizer.pt", {"optimizer": self.optimizer.state_dict(), "step": self.step})
        save_state(ck / f"rng-rank{self.rank}.pt", {"step": self.step, "rng": rng_state({"noise": self.generator,
                                                                                         "torch": None})})
        self._barrier()
        return ck

    def _load_checkpoint(self) -> None:
        from safetensors.torch import load_file

        ck = self.out / "checkpoint"
        if not (ck / "optimizer.pt").is_file():
            raise FileNotFoundError(f"{ck} has no checkpoint to resume from; fix: drop --resume and start again")
        tensors = load_file(str(ck / "trainable.safetensors"))
        missing = sorted(set(self.params) - set(tensors))
        if missing:
            raise ValueError(f"{ck}: the checkpoint lacks {len(missing)} trained tensors (e.g. {missing[0]}); fix: "
                             "resume with the run's own config")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(tensors[n])
        if self.ema is not None and (ck / "ema.safetensors").is_file():
            self.ema.load_state_dict(load_file(str(ck / "ema.safetensors")))
        state = load_state(ck / "optimizer.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        rng = load_state(ck / f"rng-rank{self.rank}.pt")
        set_rng_state(rng["rng"], {"noise": self.generator, "torch": None})

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------------------------- samples, export

    @torch.no_grad()
    def sample(self) -> Path | None:
        """A validation video of the first example with the live (or EMA) weights: samples/step_N.mp4."""
        if self.rank != 0:
            return None
        from spiral.video import write_video

        ex = self.examples[0]
        req = self.request(ex, read_frames(ex.video, [ex.cond_index])[ex.cond_index])
        steps, self.adapter.num_inference_steps = self.adapter.num_inference_steps, self.cfg.sample_steps
        self.model.eval()
        try:
            if self.ema is not None:
                with self.ema.swapped_in(self.params):
                    seg = self.adapter.generate(req)
            else:
                seg = self.adapter.generate(req)
        finally:
            self.adapter.num_inference_steps = steps
        return write_video(self.out / "samples" / f"step_{self.step:06d}.mp4", seg.frames, fps=seg.fps)

    def export(self) -> Path:
        """LoRA: ``out/lora/pytorch_lora_weights.safetensors`` (diffusers' load_lora_weights format); full
        fine-tuning: ``out/pipeline/`` (save_pretrained, loadable as ``model:``). EMA weights when EMA is on."""
        if self.rank != 0:
            self._barrier()
            return self.out / ("lora" if self.cfg.mode == "lora" else "pipeline")
        import contextlib

        swap = self.ema.swapped_in(self.params) if self.ema is not None else contextlib.nullcontext()
        with swap:
            if self.cfg.mode == "lora":
                from spiral.generators.diffusers.lora import save_lora

                path = save_lora(type(self.adapter.pipe), self.model, self.out / "lora").parent
            else:
                path = self.out / "pipeline"
                self.adapter.pipe.save_pretrained(path)
        card = {"generator": self.cfg.generator.name, "model": self.adapter.model, "mode": self.cfg.mode,
                "steps": self.step, "objective": self.cfg.objective, "data": self.cfg.data,
                "size": [self.size.height, self.size.width, self.size.num_frames]}
        from spiral.atomic import write_text

        write_text(path / "spiral_sft.json", json.dumps(card, indent=2))
        self._barrier()
        return path


def train_sft(cfg: SFTConfig, resume: bool = False, minutes: float | None = None) -> dict[str, Any]:
    """Run :class:`SFTTrainer` (the ``spiral train sft`` entry point)."""
    trainer = SFTTrainer(cfg, resume=resume)
    res = trainer.run(minutes=minutes)
    res["first_loss"] = res["losses"][0] if res["losses"] else math.nan
    res["last_loss"] = res["losses"][-1] if res["losses"] else math.nan
    return res
