"""Pretrain the tiny flow-matching generator (``spiral train generator``) on an ActVideoGen-Dataset.

Rectified flow: x_t = (1 − σ)·x_0 + σ·ε with σ logit-normal and time-shifted (SD3), loss =
‖v̂ − v‖² on the new frames. The model predicts x_0 and returns v (see
``spiral.models.tiny_video``), so the target is ``(x_t − x_0)/max(σ, σ_min)``, which is the
velocity wherever σ ≥ σ_min. AdamW with warm-up and cosine decay, EMA weights, the text replaced
by the learned null embedding 10 % of the time (for CFG), training wordings from
``spiral.world.splits`` and the held-out (object, destination) combinations left out entirely.

The whole training set is decoded into RAM once (a few thousand 9×64×64 clips are a few
hundred MB) so a step is pure compute. Every random choice comes from one ``torch.Generator``
whose state is checkpointed with the model, EMA and optimizer, so ``--resume`` continues to the
identical next-step loss. Weights are safetensors; the optimizer/RNG state is a dict of tensors
and numbers read back with ``torch.load(weights_only=True)`` (``spiral.train.common``).

Configured like every trainer: :class:`TrainConfig` from YAML (``configs/train/generator-tiny.yaml``) and
``--set key=value`` overrides, or from the command's options.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from spiral.models.text import TextEncoder, get_text_encoder
from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT, load_weights, save_weights
from spiral.train.common import EMA, RunLog, load_state, rng_state, save_state, set_rng_state
from spiral.train.world_clips import WORLD_PREFIX, WorldClips, parse_world_spec, render_world_clips
from spiral.world.splits import all_train_texts, is_heldout, paraphrases

CKPT_DIR = "checkpoint"
EXPORT_NAME = "tiny.safetensors"


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run; saved as ``train_config.json`` in the output folder. Defaults are
    ours, sized for the 64×64 tabletop world (the shipped weights' recipe: ``configs/train/generator-tiny.yaml``)
    unless a field names another source."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="dataset folder from `spiral data build` (its success clips), or "
                                  "world:EPISODES[:SEED] to render that many episodes in memory on all cores")
    out: str = Field(description="run folder: checkpoint/, samples/, log.jsonl, tiny.safetensors, tiny.md")
    steps: int = Field(20000, description="total optimizer steps (the cosine schedule spans them)")
    batch: int = Field(32, description="clips per step")
    lr: float = Field(3e-4, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, description="AdamW weight decay of the matrices (not of norms, biases, "
                                                  "position and null-text embeddings)")
    warmup: int = Field(300, description="linear warm-up steps (at most a tenth of the run)")
    min_lr_ratio: float = Field(0.1, description="the cosine ends at this fraction of lr")
    grad_clip: float = Field(1.0, description="gradient norm clip (0: none)")
    ema: float = Field(0.999, description="EMA decay, ramped up as min(ema, (1 + k)/(10 + k)) over the first updates")
    text_drop: float = Field(0.1, description="share of clips trained with the null text (for classifier-free "
                                              "guidance)")
    canonical_prob: float = Field(0.5, description="share of clips worded canonically; the rest draw a training "
                                                   "paraphrase (spiral.world.splits)")
    ckpt_every: int = Field(500, description="checkpoint every N steps")
    sample_every: int = Field(500, description="val loss and a sample strip PNG every N steps")
    log_every: int = Field(10, description="samples/s in log.jsonl every N steps")
    sample_steps: int = Field(10, description="Euler steps of the sample strips")
    val_clips: int = Field(64, description="fixed validation clips (held-out combinations when the data has them)")
    minutes: float | None = Field(None, description="total wall-time budget of the run (resumes included); the "
                                                    "cosine then follows whichever ends first")
    seed: int = Field(0, description="seed of the model init and of every data/noise draw")
    device: str = Field("cpu", description="cpu or cuda")
    compile: bool = Field(False, description="torch.compile the training forward (~1.4× CPU throughput after ~2 min "
                                             "of compiling)")
    model: TinyVideoConfig = Field(default_factory=TinyVideoConfig, description="the network (TinyVideoConfig)")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """A saved ``train_config.json`` (keys this version does not know are dropped)."""
        d = json.loads(text)
        return cls.model_validate({k: v for k, v in d.items() if k in cls.model_fields})


class ClipBank:
    """Every usable training clip decoded once into a uint8 tensor, with its anchor and wording.

    ``clips`` (N, T, H, W, 3); ``anchor_of`` (N,) index into ``anchors`` (E, H, W, 3), the first
    frame of each clip's episode (the memory's scene anchor at generation time).
    """

    def __init__(self, root: str | Path, num_frames: int, resolution: int, heldout: bool = False,
                 progress: bool = True):
        from spiral.data.loaders import SegmentDataset
        from spiral.video import read_video

        ds = SegmentDataset(root, labels={"success"})
        if ds.report.errors:
            print(f"warning: {len(ds.report.errors)} bad manifest lines skipped (run `spiral data check {root}`)")
        picked = [(i, j) for i, j in ds.index
                  if is_heldout(ds.episodes[i].steps[j].verb, ds.episodes[i].steps[j].objects) == heldout]
        by_episode: dict[int, list[int]] = {}
        for i, j in picked:
            by_episode.setdefault(i, []).append(j)
        clips, anchors, anchor_of, actions = [], [], [], []
        items: Any = list(by_episode.items())
        if progress and items:
            from rich.progress import track

            items = track(items, description=f"decoding {len(items)} videos")
        for i, steps in items:
            ep = ds.episodes[i]
            video = read_video(ds.root / ep.video)
            if video.shape[1:3] != (resolution, resolution):
                raise ValueError(f"{ep.video} is {video.shape[1]}x{video.shape[2]}; the model is "
                                 f"{resolution}x{resolution} (rebuild the data with --resolution {resolution})")
            anchors.append(torch.from_numpy(video[0].copy()))
            for j in steps:
                s = ep.steps[j]
                clip = video[s.start_frame : s.end_frame + 1]
                if len(clip) != num_frames + 1:
                    raise ValueError(f"{ep.id} step {j} has {len(clip)} frames; the model needs {num_frames + 1} "
                                     f"(1 conditioning + {num_frames} new): rebuild with --frames {num_frames + 1}")
                clips.append(torch.from_numpy(np.ascontiguousarray(clip)))
                anchor_of.append(len(anchors) - 1)
                actions.append((s.verb, tuple(s.objects)))
        self._set(clips, anchors, anchor_of, actions, num_frames, resolution)

    def _set(self, clips: list, anchors: list, anchor_of: list[int], actions: list[tuple[str, tuple[str, ...]]],
             num_frames: int, resolution: int) -> None:
        as_t = torch.as_tensor
        self.clips = torch.stack([as_t(c) for c in clips]) if clips else torch.zeros(
            0, num_frames + 1, resolution, resolution, 3, dtype=torch.uint8)
        self.anchors = torch.stack([as_t(a) for a in anchors]) if anchors else torch.zeros(
            0, resolution, resolution, 3, dtype=torch.uint8)
        self.anchor_of = torch.tensor(anchor_of, dtype=torch.long)
        self.actions = actions
        self.wordings = [paraphrases(v, o, "train") for v, o in actions]

    @classmethod
    def from_world(cls, clips: WorldClips, num_frames: int, resolution: int) -> ClipBank:
        """A bank of clips rendered in memory by :func:`spiral.train.world_clips.render_world_clips`."""
        bank = cls.__new__(cls)
        bank._set(clips.clips, clips.anchors, clips.anchor_of, clips.actions, num_frames, resolution)
        return bank

    def to(self, device: torch.device) -> ClipBank:
        """Move the frames to ``device`` (a GPU then gathers batches without host copies)."""
        self.clips, self.anchors = self.clips.to(device), self.anchors.to(device)
        self.anchor_of = self.anchor_of.to(device)
        return self

    def __len__(self) -> int:
        return len(self.clips)


def _to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (…, H, W, 3) → float (…, 3, H, W) in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


def sample_sigmas(n: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Logit-normal noise levels, time-shifted like the sampling schedule (SD3)."""
    from spiral.flow import time_shift

    u = torch.sigmoid(torch.randn(n, generator=generator))
    return time_shift(u, shift).float()


def flow_loss(model: TinyVideoDiT, clips: torch.Tensor, anchors: torch.Tensor, text: torch.Tensor,
              sigma: torch.Tensor, noise: torch.Tensor, forward: Callable[..., torch.Tensor] | None = None
              ) -> torch.Tensor:
    """Rectified-flow loss on the new frames of uint8 clips (B, T, H, W, 3); ``forward`` may be a compiled model."""
    video = _to_float(clips)
    cond, x0 = video[:, 0], video[:, 1:]
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    target = (x_t - x0) / s.clamp(min=model.config.sigma_min)
    v = (forward if forward is not None else model)(x_t, sigma, text, cond, _to_float(anchors))
    return torch.mean((v.float() - target) ** 2)


def _lr_at(step: int, cfg: TrainConfig, time_frac: float = 0.0) -> float:
    """Linear warm-up (at most a tenth of the run), then cosine down to ``min_lr_ratio``.

    The cosine follows whichever runs out first, steps or the time budget (``time_frac`` is the
    spent fraction of ``--minutes``), so a timed run on a slower machine still anneals; a run with
    a time budget is therefore not bit-reproducible, one without is.
    """
    warmup = max(1, min(cfg.warmup, cfg.steps // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    frac = min(1.0, max((step - warmup) / max(1, cfg.steps - warmup), time_frac))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class Trainer:
    """One training run: data, model, EMA, optimizer, RNG; ``run()`` trains until steps or minutes run out."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, text_encoder: TextEncoder | None = None,
                 progress: bool = True):
        self.out = Path(cfg.out)
        cfg_path = self.out / "train_config.json"
        if resume:
            if not (self.out / CKPT_DIR / "state.pt").is_file():
                raise FileNotFoundError(f"nothing to resume in {self.out} (no {CKPT_DIR}/state.pt)")
            saved = TrainConfig.from_json(cfg_path.read_text())
            # the run's identity stays as saved; how long to go on may change
            saved.steps, saved.minutes, saved.data, saved.device = cfg.steps, cfg.minutes, cfg.data, cfg.device
            saved.compile = cfg.compile
            cfg = saved
        elif (self.out / CKPT_DIR / "state.pt").is_file():
            raise FileExistsError(f"{self.out} already holds a training run: pass --resume to continue it "
                                  f"or choose another --out")
        self.cfg, self.progress = cfg, progress
        self.device = torch.device(cfg.device)
        self.out.mkdir(parents=True, exist_ok=True)
        from spiral.atomic import write_text

        write_text(cfg_path, cfg.to_json())
        mc = cfg.model
        if cfg.data.startswith(WORLD_PREFIX):
            episodes, data_seed = parse_world_spec(cfg.data)
            train, held = render_world_clips(episodes, data_seed, mc.num_frames + 1, mc.resolution, progress=progress)
            self.bank = ClipBank.from_world(train, mc.num_frames, mc.resolution)
            heldout = ClipBank.from_world(held, mc.num_frames, mc.resolution)
        else:
            self.bank = ClipBank(cfg.data, mc.num_frames, mc.resolution, progress=progress)
            heldout = ClipBank(cfg.data, mc.num_frames, mc.resolution, heldout=True, progress=False)
        if len(self.bank) == 0:
            raise ValueError(f"{cfg.data} has no usable success clips outside the held-out combinations")
        self.val_bank, self.val_is_heldout = (heldout, True) if len(heldout) else (self.bank, False)
        self.text_encoder = text_encoder or get_text_encoder(mc.text_encoder)
        texts = all_train_texts(self.bank.actions)
        canon_val = [self.val_bank.wordings[i][0] for i in range(len(self.val_bank))]
        self.texts = list(dict.fromkeys(texts + canon_val))
        self.text_index = {t: i for i, t in enumerate(self.texts)}
        self.text_table = self.text_encoder.encode(self.texts).to(self.device)

        torch.manual_seed(cfg.seed)
        self.model = TinyVideoDiT(mc).to(self.device)
        self.ema = TinyVideoDiT(mc).to(self.device)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False).eval()
        self._ema = EMA(dict(self.model.named_parameters()), cfg.ema, warmup=True,
                        shadow=dict(self.ema.named_parameters()))
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or n.startswith("pos_") or n == "null_text" else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.samples, self.elapsed = 0, 0, 0.0
        self.lr = cfg.lr
        self._forward: Callable[..., torch.Tensor] = torch.compile(self.model) if cfg.compile else self.model
        # on a GPU the frames live on the device and the noise comes from a device generator: a
        # batch of 1024 clips would otherwise spend longer in host randn and copies than in the model
        self.cuda = self.device.type == "cuda"
        self.noise_gen = torch.Generator(self.device).manual_seed(cfg.seed + 1) if self.cuda else self.gen
        if resume:
            self._load_checkpoint()
        self._val = self._fixed_val_batch()
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            self.bank.to(self.device)

    # --- data ---------------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, g = self.cfg, self.gen
        idx = torch.randint(len(self.bank), (cfg.batch,), generator=g)
        canon = torch.rand(cfg.batch, generator=g) < cfg.canonical_prob
        pick = torch.rand(cfg.batch, generator=g)
        text_ids = []
        for k, i in enumerate(idx.tolist()):
            words = self.bank.wordings[i]
            text_ids.append(self.text_index[words[0] if canon[k] else words[int(pick[k] * len(words))]])
        text = self.text_table[torch.tensor(text_ids)]
        drop = (torch.rand(cfg.batch, generator=g) < cfg.text_drop).to(self.device)
        sigma = sample_sigmas(cfg.batch, cfg.model.shift, g)
        c = cfg.model
        d = self.device
        noise = torch.randn(cfg.batch, c.num_frames, 3, c.resolution, c.resolution, generator=self.noise_gen,
                            device=self.noise_gen.device)
        idx = idx.to(self.bank.clips.device)
        clips, anchors = self.bank.clips[idx], self.bank.anchors[self.bank.anchor_of[idx]]
        return clips.to(d), anchors.to(d), self.model.embed_text(text, cfg.batch, drop), sigma.to(d), noise.to(d)

    def _fixed_val_batch(self) -> dict[str, torch.Tensor]:
        """A fixed set of clips, noise levels and noise: the val loss is comparable across steps and runs."""
        g = torch.Generator().manual_seed(1234)
        n = min(self.cfg.val_clips, len(self.val_bank))
        idx = torch.randperm(len(self.val_bank), generator=g)[:n]
        c = self.cfg.model
        text = self.text_table[torch.tensor([self.text_index[self.val_bank.wordings[i][0]] for i in idx.tolist()])]
        return {"idx": idx, "clips": self.val_bank.clips[idx], "anchors": self.val_bank.anchors[self.val_bank.anchor_of[idx]],
                "text": text, "sigma": (torch.arange(n) + 0.5) / n,
                "noise": torch.randn(n, c.num_frames, 3, c.resolution, c.resolution, generator=g)}

    @torch.no_grad()
    def val_loss(self) -> float:
        v, d, total = self._val, self.device, 0.0
        n = len(v["idx"])
        for i in range(0, n, 16):
            sl = slice(i, i + 16)
            loss = flow_loss(self.ema, v["clips"][sl].to(d), v["anchors"][sl].to(d), v["text"][sl].to(d),
                             v["sigma"][sl].to(d), v["noise"][sl].to(d))
            total += float(loss) * len(v["idx"][sl])
        return total / max(1, n)

    # --- one step -----------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step; returns the loss."""
        self.model.train()
        clips, anchors, text, sigma, noise = self._batch()
        self.lr = _lr_at(self.step, self.cfg, self._time_frac())
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):  # bf16 matmuls, fp32 weights and loss
            loss = flow_loss(self.model, clips, anchors, text, sigma, noise, forward=self._forward)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self._ema.update(dict(self.model.named_parameters()), self.step)
        self.step += 1
        self.samples += self.cfg.batch
        return loss.item()

    # --- checkpoints --------------------------------------------------------------------------
    def _time_frac(self) -> float:
        return self.total_seconds() / (self.cfg.minutes * 60) if self.cfg.minutes else 0.0

    def total_seconds(self) -> float:
        """Training wall time over every invocation of this run (checkpointed, so resumes add up)."""
        started = getattr(self, "_t_start", None)
        return self.elapsed + (time.perf_counter() - started if started is not None else 0.0)

    def save_checkpoint(self) -> Path:
        """Model + EMA (safetensors) and optimizer/RNG/counters (tensors and numbers only)."""
        ck = self.out / CKPT_DIR
        ck.mkdir(parents=True, exist_ok=True)
        meta = {"step": str(self.step)}
        save_weights(self.model, ck / "model.safetensors", meta)
        save_weights(self.ema, ck / "ema.safetensors", meta)
        state = {"step": self.step, "samples": self.samples, "elapsed": self.total_seconds(),
                 "optimizer": self.opt.state_dict(), **rng_state(self._generators())}
        save_state(ck / "state.pt", state)
        return ck

    def _generators(self) -> dict[str, torch.Generator]:
        """The generators a checkpoint keeps: the data stream, and the noise stream when it is a device's own."""
        return {"rng": self.gen, **({"noise_rng": self.noise_gen} if self.noise_gen is not self.gen else {})}

    def _load_checkpoint(self) -> None:
        ck = self.out / CKPT_DIR
        state = load_state(ck / "state.pt")
        model, meta_m = load_weights(ck / "model.safetensors", map_location=str(self.device))
        ema, meta_e = load_weights(ck / "ema.safetensors", map_location=str(self.device))
        if not meta_m.get("step") == meta_e.get("step") == str(state["step"]):
            raise ValueError(f"checkpoint in {ck} is inconsistent (model step {meta_m.get('step')}, "
                             f"EMA step {meta_e.get('step')}, state step {state['step']}): a save was interrupted")
        self.model.load_state_dict(model.state_dict())
        self.ema.load_state_dict(ema.state_dict())
        self.opt.load_state_dict(state["optimizer"])
        set_rng_state(state, self._generators())
        self.step, self.samples, self.elapsed = int(state["step"]), int(state["samples"]), float(state["elapsed"])

    def export(self, wall_seconds: float) -> Path:
        """EMA weights as the shippable ``tiny.safetensors`` + a model card beside it."""
        meta = {"steps": str(self.step), "samples": str(self.samples), "train_seconds": f"{wall_seconds:.0f}",
                "clips": str(len(self.bank)), "data": str(self.cfg.data), "hardware": _hardware(self.device)}
        path = save_weights(self.ema, self.out / EXPORT_NAME, meta)
        write_model_card(self.out / "tiny.md", self.ema, self.cfg, meta, self._last_val, self.val_is_heldout)
        return path

    # --- samples ------------------------------------------------------------------------------
    def sample_strip(self, path: Path, n: int = 4) -> Path:
        """PNG: for n fixed val clips, the ground truth row over the EMA model's row (same first frame)."""
        from PIL import Image

        from spiral.generators.tiny import TinyGenerator
        from spiral.types import GenerationRequest

        gen = TinyGenerator(model=self.ema, steps=self.cfg.sample_steps, text_encoder=self.text_encoder,
                            device=str(self.device))
        v = self._val
        n = min(n, len(v["idx"]))
        reqs, gts = [], []
        for k in range(n):
            i = int(v["idx"][k])
            clip = self.val_bank.clips[i].cpu().numpy()
            anchor = self.val_bank.anchors[int(self.val_bank.anchor_of[i])].cpu().numpy()
            reqs.append(GenerationRequest(prompt=self.val_bank.wordings[i][0], cond_frame=clip[0], anchor_frame=anchor,
                                          seed=k, num_frames=len(clip), height=clip.shape[1], width=clip.shape[2]))
            gts.append(clip)
        segs = gen.generate_batch(reqs)
        rows = []
        for gt, seg in zip(gts, segs):
            rows += [np.concatenate(list(gt), axis=1), np.concatenate(list(seg.frames), axis=1)]
            rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
        img = np.concatenate(rows[:-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)
        self.model.train()
        return path

    # --- the loop -----------------------------------------------------------------------------
    def run(self, stop_at: int | None = None, on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``stop_at``, or until ``cfg.minutes`` of wall time); checkpoint and export."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        cfg = self.cfg
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        budget = cfg.minutes * 60 if cfg.minutes else math.inf  # total over resumes, like the schedule
        log = RunLog(self.out)
        self._t_start = time.perf_counter()
        self._last_val: float | None = None
        smooth, window_t, window_n = None, time.perf_counter(), 0
        last: dict[str, Any] = {}
        progress = Progress(TextColumn("[bold]train generator"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"),
                            TimeElapsedColumn(), disable=not self.progress)
        with progress:
            task = progress.add_task("train", total=end, completed=self.step, loss="-", speed="-")
            if self.step == 0:  # the untrained model's val loss, the baseline every later one is read against
                log.write({"step": 0, "val_loss": self.val_loss(), "val_heldout": self.val_is_heldout})
            while self.step < end and self.total_seconds() < budget:
                loss = self.train_step()
                smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                window_n += cfg.batch
                record: dict[str, Any] = {"step": self.step, "loss": loss, "lr": self.lr}
                if self.step % cfg.log_every == 0 or self.step == end:
                    now = time.perf_counter()
                    record["samples_per_s"] = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    progress.update(task, speed=f"{record['samples_per_s']:.1f}")
                if self.step % cfg.sample_every == 0 or self.step == end:
                    record["val_loss"] = self._last_val = self.val_loss()
                    record["val_heldout"] = self.val_is_heldout
                    self.sample_strip(self.out / "samples" / f"step_{self.step:06d}.png")
                record["elapsed"] = self.total_seconds()
                log.write(record)
                log.scalars({f"train/{k}": record[k] for k in ("loss", "lr", "samples_per_s", "val_loss")
                             if k in record}, self.step)
                if on_log:
                    on_log(record)
                last = record
                progress.update(task, completed=self.step, loss=f"{smooth:.4f}")
                if self.step % cfg.ckpt_every == 0 and self.step < end:
                    self.save_checkpoint()
        wall = time.perf_counter() - self._t_start
        if "val_loss" not in last:  # stopped by the time budget between samples: finish with one
            self._last_val = self.val_loss()
            self.sample_strip(self.out / "samples" / f"step_{self.step:06d}.png")
            log.write({"step": self.step, "val_loss": self._last_val, "val_heldout": self.val_is_heldout,
                       "elapsed": self.total_seconds()})
        self.save_checkpoint()
        exported = self.export(self.total_seconds())
        log.close()
        return {"step": self.step, "samples": self.samples, "seconds": wall, "total_seconds": self.total_seconds(),
                "loss": last.get("loss"), "val_loss": self._last_val, "weights": str(exported)}


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores)"


def write_model_card(path: Path, model: TinyVideoDiT, cfg: TrainConfig, meta: dict[str, str], val: float | None,
                     heldout: bool = True) -> Path:
    """Markdown card: architecture, data, steps, wall time, hardware; the quality table is added by the eval."""
    from spiral.atomic import write_text

    c = model.config
    hours = float(meta["train_seconds"]) / 3600
    rebuild = (f"spiral train generator --data {cfg.data} --out <dir> --steps {cfg.steps} --batch {cfg.batch} "
               f"--lr {cfg.lr} --seed {cfg.seed} --dim {c.dim} --depth {c.depth} --tubelet {c.tubelet}"
               + (f" --minutes {cfg.minutes:g}" if cfg.minutes else "") + (" --compile" if cfg.compile else ""))
    text = f"""# TinyVideoDiT — the embedded tabletop video generator

Text+image-to-video rectified-flow transformer, {model.num_params() / 1e6:.2f} M parameters, safetensors.
Architecture and the reasons for it: `spiral/models/tiny_video.py` (module docstring).

| | |
|---|---|
| output | {c.resolution}×{c.resolution}, 1 conditioning + {c.num_frames} new frames |
| tokens | 8×8 pixel patches × tubelets of {c.tubelet} frames → {c.slices * c.patches_per_frame} + {c.text_tokens} text |
| width / depth / heads | {c.dim} / {c.depth} / {c.heads} |
| conditioning | conditioning frame ‖ scene anchor ‖ known-frame mask as input channels; MiniLM ({c.text_encoder}) text → adaLN + in-context tokens |
| prediction | x̂_0 as a residual on the conditioning frame, served as velocity (σ_min {c.sigma_min}) |
| schedule | time shift {c.shift}, Euler ODE, default 10 steps |

## Training

| | |
|---|---|
| data | `{meta['data']}` ({meta['clips']} success clips; held-out combinations `spiral.world.splits.HELDOUT_MOVES` excluded) |
| steps × batch | {meta['steps']} × {cfg.batch} ({meta['samples']} samples) |
| optimizer | AdamW lr {cfg.lr}, warm-up {max(1, min(cfg.warmup, cfg.steps // 10))} steps, cosine to {cfg.min_lr_ratio}× (over steps or --minutes, whichever ends first), EMA {cfg.ema}, text dropout {cfg.text_drop} |
| wall time | {hours:.2f} h |
| hardware | {meta['hardware']} |
| final val loss (EMA, fixed noise; {'held-out combinations' if heldout else 'training clips'}) | {val if val is None else f'{val:.4f}'} |

Rebuild: `{rebuild}`

## Quality

Measured by the critic on held-out pairs: see the generator evaluation (issue #5 acceptance) — to be filled in.
"""
    write_text(path, text)
    return path


def train_generator(cfg: TrainConfig, resume: bool = False, text_encoder: TextEncoder | None = None,
                    progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Python entry point of ``spiral train generator``."""
    trainer = Trainer(cfg, resume=resume, text_encoder=text_encoder, progress=progress)
    return trainer.run(stop_at=stop_at)
