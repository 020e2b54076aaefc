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

Several processes (``torchrun --nproc_per_node N -m spiral.cli train sft ...``, or ``accelerate launch --multi_gpu
--num_processes N -m spiral.cli train sft ...`` on GPUs) go through HF Accelerate (:func:`make_accelerator`): it
starts the process group (nccl on CUDA, gloo on CPU), each rank computes on ``LOCAL_RANK``'s device
(:func:`spiral.train.common.rank_device`: ``cuda:<rank>``), takes its own share of the data (every N-th example of
a permutation all ranks agree on) and its own noise. ``distributed: ddp`` wraps the transformer (the LoRA-carrying
module) in DistributedDataParallel: rank 0's weights are broadcast at the start and gradients averaged in
backward; the adapters call the transformer through that wrapper (``denoiser_wrapper``), since DDP's hooks fire
only on calls through it. ``distributed: fsdp`` shards the transformer's blocks, gradients and optimizer state
with accelerate's FSDP2 plugin (torch ``fully_shard``); checkpoints and the LoRA export gather the shards into
whole tensors, so a run folder looks the same either way. The ``batch_size`` micro-batches of a step are
accumulated by accelerate (``accumulate``: no gradient sync until the last one) and ``mixed_precision: bf16``
is accelerate's autocast. One process runs the same code with nothing wrapped: the same numbers as a plain torch
loop (tested). On gloo CPU ranks accelerate would drop its FSDP plugin; :func:`make_accelerator` installs it as
accelerate does on GPUs, so the tests run the FSDP path on CPU. Checkpoints stay in the trainers' shared format
(:mod:`spiral.train.common`: safetensors + a ``weights_only`` state file) rather than ``accelerator.save_state``,
which pickles the random states and unpickles them on load.
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
    end_distributed,
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


# ------------------------------------------------------------------------------------------------- distribution


def _on_cpu(device: str) -> bool:
    """Whether this process computes on the CPU (``device`` after :func:`spiral.train.common.rank_device`)."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _block_classes(model: torch.nn.Module) -> list[str]:
    """Class names of the transformer's repeated blocks (the members of its ``nn.ModuleList`` children: Wan's
    ``blocks``, CogVideoX's and LTX's ``transformer_blocks``): FSDP shards each block as one unit. Read from the
    module because ``_no_split_modules`` is not set on every diffusers transformer (LTX's is None)."""
    return sorted({type(m).__name__ for child in model.children() if isinstance(child, torch.nn.ModuleList)
                   for m in child})


def make_accelerator(cfg: SFTConfig, device: str) -> Any:
    """The run's :class:`accelerate.Accelerator`: process group, this rank's device, DDP or FSDP2, bf16 autocast
    and gradient accumulation over ``batch_size`` micro-batches.

    ``cpu`` is passed explicitly: without it accelerate looks for an accelerator under torchrun and, finding none,
    runs every rank as a lone process (each would train alone and write the same run folder). The adapter places
    the pipeline itself (device, offloading), so accelerate moves nothing (``device_placement=False``).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    # accelerate keeps its settings in process-wide singletons that refuse a second, different Accelerator (and
    # carry the last one's distributed type over); the CLI builds one trainer per process, the Python API (tests,
    # notebooks) several in turn. The process group itself stays up.
    AcceleratorState._reset_state(reset_partial_state=True)
    plugin = None
    if cfg.distributed == "fsdp":
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                reshard_after_forward=True, state_dict_type="FULL_STATE_DICT")
    acc = Accelerator(cpu=_on_cpu(device), device_placement=False, mixed_precision=cfg.mixed_precision,
                      gradient_accumulation_steps=cfg.batch_size, fsdp_plugin=plugin)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:
        raise ValueError(f"{launched} processes were launched but accelerate runs {acc.num_processes} "
                         f"({acc.distributed_type.value}, generator.options.device {device!r}); fix: set "
                         "generator.options.device to cpu or cuda to match the machine")
    if plugin is not None and acc.num_processes > 1 and acc.distributed_type != DistributedType.FSDP:
        if acc.distributed_type != DistributedType.MULTI_CPU:
            raise ValueError(f"distributed: fsdp is not available to accelerate's {acc.distributed_type.value} "
                             "processes; fix: distributed: ddp")
        # accelerate reads its FSDP plugin only for accelerator (GPU, XPU, ...) processes and leaves gloo CPU ranks
        # to DDP, while torch's fully_shard itself runs on CPU ranks: install the plugin as accelerate does on a
        # GPU, so a CPU torchrun shards exactly as a GPU one (how the tests check the FSDP path)
        if cfg.mixed_precision != "no":
            plugin.set_mixed_precision(cfg.mixed_precision)
        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState.__init__ does
    got = acc.distributed_type
    if acc.num_processes > 1 and ((got == DistributedType.FSDP) != (cfg.distributed == "fsdp")
                                  or got in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)):
        raise ValueError(f"distributed: {cfg.distributed} was asked but accelerate's launch settings chose {got.value}; "
                         "fix: choose the strategy with the config's distributed: field and launch with torchrun or a "
                         "plain `accelerate launch --multi_gpu` (no --use_fsdp / --use_deepspeed / strategy in an "
                         "accelerate config file)")
    return acc


def check_processes(cfg: SFTConfig, world: int) -> None:
    """Refuse, before any weight loads, what cannot run over ``world`` processes: an offloaded transformer moves
    between CPU and GPU, which DDP (device-bound) and FSDP (its own placement) cannot wrap."""
    offload = cfg.generator.options.get("cpu_offload", False)
    if world > 1 and offload not in (False, None, "none"):
        raise ValueError(f"generator.options.cpu_offload: {offload} cannot be combined with {world} processes "
                         f"(distributed: {cfg.distributed} needs the transformer on each rank's GPU); fix: drop "
                         "cpu_offload and use distributed: fsdp to shard the transformer, or train in one process")


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (a collective: every rank calls it in the same order); others as given."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def _assign(dst: torch.Tensor, full: torch.Tensor) -> None:
    """``dst`` ← a whole saved tensor; an FSDP shard takes its own part of it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(dst, DTensor):
        dst.copy_(distribute_tensor(full.to(dst.device, dst.dtype), dst.device_mesh, dst.placements))
    else:
        dst.copy_(full)


# ------------------------------------------------------------------------------------------------- trainer


class SFTTrainer:
    """One fine-tuning run (see the module docstring); ``run()`` trains to ``cfg.steps`` and exports."""

    def __init__(self, cfg: SFTConfig, resume: bool = False):
        from spiral import registry

        self.cfg, self.out = cfg, Path(cfg.out)
        device = rank_device(str(cfg.generator.options.get("device", "auto")))
        self.accelerator = make_accelerator(cfg, device)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        check_processes(cfg, self.world)
        self._check_out(resume)  # refuses a bad --resume / an occupied out before any weight loads
        self.examples = load_examples(cfg)  # and a bad dataset
        self.adapter = registry.create("generator", cfg.generator.name, **{**cfg.generator.options, "device": device})
        if getattr(self.adapter.pipe, "transformer_2", None) is not None:
            raise ValueError(f"{self.adapter.model} is a two-expert Wan 2.2 checkpoint; spiral train sft trains one "
                             "transformer, so it is not supported yet; fix: fine-tune a single-transformer model "
                             "(Wan 2.1 I2V, Wan 2.2 TI2V-5B)")
        from spiral.types import GenerationRequest

        probe = GenerationRequest(prompt="", num_frames=cfg.num_frames, height=cfg.height, width=cfg.width)
        self.size = self.adapter.model_size(probe)
        if self.accelerator.is_main_process and not resume:  # written once everything it names has been checked
            from spiral.atomic import write_text

            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.json", self.cfg.model_dump_json(indent=2))
        self.cache: dict[int, tuple[Any, torch.Tensor]] = {}
        self.model = self.adapter.denoiser
        self._setup_params()
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                                      betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
        self._prepare(optimizer)
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank)
        self.step = 0
        self.log = RunLog(self.out, tensorboard=cfg.tensorboard) if self.accelerator.is_main_process else None
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
        for p in self.model.parameters():  # diffusers.training_utils.cast_training_params
            if p.requires_grad:
                p.data = p.data.to(dtype)
        if cfg.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()

    def _prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Hand the transformer and its optimizer to accelerate: DDP-wrapped (every rank starts from rank 0's
        weights, gradients averaged in backward) or FSDP2-sharded in place; the adapter's training calls then go
        through the wrapper (``denoiser_wrapper``). ``params`` are the trained parameters as the optimizer holds
        them (FSDP's are shards)."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if self.fsdp:
            acc.state.fsdp_plugin.transformer_cls_names_to_wrap = _block_classes(self.model)
        self.wrapped, self.optimizer = acc.prepare(self.model, optimizer)
        if self.world > 1:
            from torch.distributed.fsdp import FSDPModule
            from torch.nn.parallel import DistributedDataParallel

            done = isinstance(self.model, FSDPModule) if self.fsdp else isinstance(self.wrapped, DistributedDataParallel)
            if not done or (self.cfg.distributed == "fsdp") != self.fsdp:
                raise ValueError(f"distributed: {self.cfg.distributed} was asked but accelerate prepared "
                                 f"{type(self.wrapped).__name__} ({acc.distributed_type.value}); fix: report it with "
                                 "the output of `accelerate env`")
        if self.wrapped is not self.model:
            self.adapter.denoiser_wrapper = self.wrapped
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

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
        """One optimizer step over ``batch_size`` examples per rank, accumulated by accelerate (the gradients of
        the last one are averaged across ranks); returns the logged record."""
        from accelerate.utils import gather_object

        cfg, acc = self.cfg, self.accelerator
        loss_fn = flow_matching_loss if cfg.objective == "flow_matching" else v_prediction_loss
        t0 = time.perf_counter()
        self.model.train()
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.step)
        total, extras, used, norm = 0.0, [], [], None
        for micro in range(cfg.batch_size):
            k = self.order(self.step, micro)
            with acc.accumulate(self.wrapped):
                try:
                    inputs, x0 = self._inputs(k)
                    loss, extra = loss_fn(self.adapter, inputs, x0, cfg, self.generator)
                    acc.backward(loss)  # loss / batch_size: the mean over the micro-batches
                except torch.OutOfMemoryError:
                    raise self.adapter.out_of_memory(self.size, (
                        "gradient_checkpointing: true, mode: lora with a smaller lora_rank, smaller height/width/"
                        "num_frames, generator.options.cpu_offload: model with cache_latents: true, distributed: "
                        "fsdp, or a larger GPU")) from None
                if acc.sync_gradients:
                    norm = _full(acc.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm))
                self.optimizer.step()  # accelerate's: steps (and zeroes) only on the last micro-batch
                self.optimizer.zero_grad(set_to_none=True)
            total += float(loss.detach()) / cfg.batch_size
            extras.append(extra)
            used.append(f"{self.examples[k].episode}/{self.examples[k].step}")
        examples = gather_object([used]) if self.world > 1 else [used]
        if self.world > 1:
            total = float(acc.reduce(torch.tensor([total], device=acc.device), "mean")[0])
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

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state; under FSDP gathered whole (keyed by parameter name), so any world size resumes."""
        if not self.fsdp:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_checkpoint(self) -> Path:
        """Trained tensors (+ EMA), optimizer, step and this rank's random states; atomic files, whole tensors
        (FSDP shards are gathered first)."""
        ck, main = self.out / "checkpoint", self.accelerator.is_main_process
        tensors = {n: _full(p) for n, p in self.params.items()}
        ema = {n: _full(t) for n, t in self.ema.items()} if self.ema is not None else None
        optimizer = self._optimizer_state()
        if main:
            save_tensors(ck / "trainable.safetensors", tensors)
            if ema is not None:
                save_tensors(ck / "ema.safetensors", ema)
            save_state(ck / "optimizer.pt", {"optimizer": optimizer, "step": self.step})
        save_state(ck / f"rng-rank{self.rank}.pt", {"step": self.step, "rng": rng_state({"noise": self.generator,
                                                                                         "torch": None})})
        self.accelerator.wait_for_everyone()
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
        for n, p in self.params.items():
            _assign(p, tensors[n])
        if self.ema is not None and (ck / "ema.safetensors").is_file():
            saved = load_file(str(ck / "ema.safetensors"))
            for n, t in self.ema.items():
                _assign(t, saved[n])
        state = load_state(ck / "optimizer.pt")
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        rng = load_state(ck / f"rng-rank{self.rank}.pt")
        set_rng_state(rng["rng"], {"noise": self.generator, "torch": None})

    # ------------------------------------------------------------------------------------- samples, export

    @torch.no_grad()
    def sample(self) -> Path | None:
        """A validation video of the first example with the live (or EMA) weights: samples/step_N.mp4 (made on
        rank 0; under FSDP every rank takes part in the sharded transformer's calls)."""
        main = self.accelerator.is_main_process
        if not (main or self.fsdp):
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
        return write_video(self.out / "samples" / f"step_{self.step:06d}.mp4", seg.frames, fps=seg.fps) if main \
            else None

    def export(self) -> Path:
        """LoRA: ``out/lora/pytorch_lora_weights.safetensors`` (diffusers' load_lora_weights format, written by the
        pipeline's own ``save_lora_weights`` from the unwrapped transformer; FSDP shards gathered first); full
        fine-tuning: ``out/pipeline/`` (save_pretrained, loadable as ``model:``). EMA weights when EMA is on."""
        import contextlib

        acc, main = self.accelerator, self.accelerator.is_main_process
        path = self.out / ("lora" if self.cfg.mode == "lora" else "pipeline")
        model = acc.unwrap_model(self.wrapped)
        swap = self.ema.swapped_in(self.params) if self.ema is not None else contextlib.nullcontext()
        with swap:
            if self.cfg.mode == "lora":
                from spiral.generators.diffusers.lora import save_lora

                whole = ({n: _full(t) for n, t in model.state_dict().items() if "lora_" in n} if self.fsdp
                         else None)
                if main:
                    save_lora(type(self.adapter.pipe), model, path, state_dict=whole)
            elif main:  # full fine-tuning is DDP-only (SFTConfig refuses it with fsdp)
                self.adapter.pipe.save_pretrained(path)
        if main:
            from spiral.atomic import write_text

            card = {"generator": self.cfg.generator.name, "model": self.adapter.model, "mode": self.cfg.mode,
                    "steps": self.step, "objective": self.cfg.objective, "data": self.cfg.data,
                    "size": [self.size.height, self.size.width, self.size.num_frames],
                    "distributed": self.cfg.distributed if self.world > 1 else "none", "processes": self.world}
            write_text(path / "spiral_sft.json", json.dumps(card, indent=2))
        acc.wait_for_everyone()
        return path


def train_sft(cfg: SFTConfig, resume: bool = False, minutes: float | None = None) -> dict[str, Any]:
    """Run :class:`SFTTrainer` (the ``spiral train sft`` entry point)."""
    trainer = SFTTrainer(cfg, resume=resume)
    res = trainer.run(minutes=minutes)
    end_distributed()
    res["first_loss"] = res["losses"][0] if res["losses"] else math.nan
    res["last_loss"] = res["losses"][-1] if res["losses"] else math.nan
    return res
