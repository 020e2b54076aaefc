"""Self-evolution: Flow-GRPO post-training of the generator on PlanAgent prompts with CriticAgent rewards.

One step (``GRPOTrainer.step``):

1. **Prompts.** The PlanAgent plans sampled tabletop tasks; the curriculum stage decides which
   sub-action becomes the prompt and from which frame: ``single`` (one step from a rendered true
   state), ``continuation`` / ``plan`` (step k of a medium / long plan, conditioned on the
   generator's *own* chained outputs for steps 0..k−1, the errors that compound over long horizons).
2. **Rollouts.** G SDE samples per prompt (``spiral.flow.sde_mean_std`` with the noise of
   ``spiral.flow.ExplorationNoise``: white, or white plus coarse), log-probabilities kept per step.
3. **Rewards.** ``CriticAgent.judge`` scores, combined with ``reward_weights``; with
   ``action_decades`` the action score (a probability) counts in orders of magnitude
   (:func:`combine_reward`), so a group whose rollouts all fail still ranks them.
4. **Advantages.** (r − mean_group) / std (group std, or the std of the whole batch with
   ``global_std``), clamped to ±``adv_clip``.
5. **Update.** On a random ``timestep_fraction`` of the SDE steps: PPO-clipped ratio of the new and
   old log-probabilities of the recorded transitions, plus β·KL to the frozen reference (the KL of
   the two Gaussian transitions, ‖μ_θ − μ_ref‖² / 2σ_t², as Flow-GRPO). Gradient accumulation,
   clipping, a NaN/inf guard that skips the update, EMA of the trained weights.

Every random draw is a function of (seed, rank, step), so ``--resume`` continues with exactly the
step an uninterrupted run would take. Under ``torchrun`` each rank rolls out its own prompts
(different seeds) and gradients are averaged over ranks (gloo on CPU, nccl on GPU).

Defaults and where they come from: noise level 0.7, lr 3e-4, AdamW weight decay 1e-4, grad
clip 1.0, advantage clamp 5, PPO clip 1e-4 (log-probs are per-dimension means, so ratios stay
near 1) and ``global_std`` are Flow-GRPO's ``config/base.py``; β = 0.04 is the Flow-GRPO paper's
KL weight for its GenEval/OCR runs; 10 sampling steps is Flow-GRPO's training-time sampler.
Group size 8 and 8 prompts per step are ours, sized for a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spiral import flow
from spiral.types import GenerationRequest, Segment, SubAction

SCORES = ("action", "preservation", "continuity", "consistency")
# what may change between a run and its resume: where and how long it runs, how often it reports
RUNTIME_FIELDS = {"out", "steps", "device", "text_table", "log_every", "sample_every", "eval_every", "ckpt_every",
                  "eval_prompts", "keep_ema"}
CKPT = "checkpoint"


class Stage(BaseModel):
    """One curriculum stage; the next starts at ``until_step`` or once the mean reward of the last
    ``reward_window`` steps reaches ``until_reward`` (whichever is set and comes first)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["single", "continuation", "plan"]
    min_steps: int = 1  # plan length of the sampled tasks
    max_steps: int = 4
    until_step: int | None = None
    until_reward: float | None = None
    reward_window: int = 5


def _default_stages() -> list[Stage]:
    return [Stage(name="single", kind="single", min_steps=1, max_steps=8, until_step=20),
            Stage(name="continuation", kind="continuation", min_steps=2, max_steps=5, until_step=45),
            Stage(name="plan", kind="plan", min_steps=6, max_steps=8)]


class GRPOConfig(BaseModel):
    """Everything one self-evolution run depends on; saved as ``config.json`` in the run folder."""

    model_config = ConfigDict(extra="forbid")
    out: str = "runs/grpo"
    seed: int = 0
    steps: int = 60
    # policy
    generator: Literal["tiny", "diffusers"] = "tiny"
    weights: str | None = None  # tiny: base weights (default: the shipped tiny.safetensors)
    # tiny, full fine-tuning: the frozen KL reference, when it is not the start weights (continuing an evolved
    # model with the KL to the model it was evolved from, as the original run had it)
    reference_weights: str | None = None
    diffusers_backend: str = "wan21-i2v"  # diffusers: registry name
    diffusers_model: str | None = None  # diffusers: model id or local folder
    lora_rank: int = 0  # 0: full fine-tuning (tiny only)
    lora_alpha: float | None = None
    lora_targets: list[str] | None = None
    device: str = "cpu"
    text_table: str | None = None  # precomputed text embeddings (spiral.models.text.TableEncoder) for offline GPUs
    # sampling
    sample_steps: int = 10
    noise_level: float = 0.7
    sde_window: tuple[int, int] | None = None
    # exploration noise of the SDE steps (spiral.flow.ExplorationNoise): white·ε + coarse·(noise constant over
    # time and coarse_patch² pixel cells). Flow-GRPO's default is white 1, coarse 0; coarse > 0 makes the
    # rollouts of a model that denoises white noise away differ in what happens (docs/self_evolution.md)
    white_noise: float = 1.0
    coarse_noise: float = 0.0
    coarse_patch: int = 8
    cfg_scale: float = 1.0
    # tiny only: guidance on the steps with σ ≤ cfg_max_sigma (the late ones; docs/self_evolution.md item 6)
    cfg_max_sigma: float | None = None
    # tiny only: guidance only near pixels where the text changes the predicted frame by ≥ cfg_tau (item 9)
    cfg_tau: float | None = None
    prompts_per_step: int = 8
    group_size: int = 8
    # reward and advantages
    # spiral.world.splits.HELDOUT_MOVES, never in the base model's supervised data: "exclude" keeps the
    # compositional-generalization eval zero-shot; "only" spends the run on the moves the base model cannot do
    # (self-evolution learning them from critic reward alone, with no ground-truth clip); "half" alternates
    # held-out and other prompts, so learning the first does not make the model forget the rest
    heldout_moves: Literal["exclude", "include", "only", "half"] = "exclude"
    # the held-out side ("only", half of "half") draws only these (block, destination) moves: a run spent on the
    # move the model still fails (docs/self_evolution.md item 11); gold evaluation keeps every held-out move
    focus_moves: list[tuple[str, str]] | None = None
    critic: str = "tabletop"
    planner: str = "symbolic"
    reward_weights: dict[str, float] = Field(default_factory=lambda: {k: 1.0 for k in SCORES})
    # None: the action score as the critic gives it (a probability). d: 1 + log10(max(p, 10^-d)) / d, partial
    # credit in orders of magnitude for a move the model cannot do yet (docs/self_evolution.md, item 5)
    action_decades: float | None = None
    # reward −= noise_penalty × the median pixel's change from frame 0 in grey levels (background_noise): the
    # critic's drift check reads band colours and misses the fine noise that guidance adds (item 9)
    noise_penalty: float = Field(0.0, ge=0)
    # reward −= artifact_penalty × the fraction of the last frame farther than 64 grey levels from a render of
    # the state the critic reads there (spiral.world.render.artifact_area, the prompt's scene look): a patch
    # of colour noise the critic reads as a block is no picture of it (item 12; 0 keeps the reward as it was)
    artifact_penalty: float = Field(0.0, ge=0)
    global_std: bool = True
    adv_clip: float = 5.0
    # groups whose reward std is below this get zero advantage, and a step where every group is that quiet makes no
    # update (DAPO's dynamic sampling, as a filter): otherwise normalisation turns reward differences of 1e-4 between
    # rollouts that all pass into full-size advantages, and Adam into full-size steps in a random direction, which
    # here showed up as drift (docs/self_evolution.md item 13). 0 keeps every group
    min_group_std: float = Field(0.0, ge=0)
    # objective
    clip_range: float = 1e-4
    beta: float = 0.04
    # KL weight on the deterministic (ODE) steps of each rollout, which exploration never reaches: keeps the late
    # steps that paint the background at the reference (docs/self_evolution.md item 9); 0 = Flow-GRPO's objective
    beta_ode: float = Field(0.0, ge=0)
    # tiny only: "background" holds the ODE steps at the reference only outside the pixels where the text changes
    # the predicted frame by ≥ anchor_tau (policy's or reference's), so the moved object stays free to learn
    # (item 10); "frame" anchors every pixel
    anchor_region: Literal["frame", "background"] = "frame"
    anchor_tau: float = Field(0.05, gt=0)
    # tiny only, white noise only: "action" takes the policy-gradient log-probabilities over the action region
    # alone (the pixels where the text changes the predicted frame by ≥ anchor_tau, found at rollout time), so the
    # background noise that comes with a better rollout is not reinforced; the KL (beta) still covers every pixel
    # (docs/self_evolution.md item 13). "frame": every pixel, Flow-GRPO's objective
    pg_region: Literal["frame", "action"] = "frame"
    timestep_fraction: float = 1.0
    lr: float = 3e-4
    weight_decay: float = 1e-4
    minibatches: int = 2  # slices of each step's rollouts; the first is on-policy, later ones are clipped
    grad_accum: int = 1  # minibatches whose gradients add up before one optimizer step
    grad_clip: float = 1.0
    ema: float = 0.9  # 0 disables the EMA
    # curriculum, logging, checkpoints
    stages: list[Stage] = Field(default_factory=_default_stages)
    log_every: int = 1
    sample_every: int = 10
    eval_every: int = 10
    eval_prompts: int = 32
    ckpt_every: int = 10
    # also keep the EMA weights of every checkpoint (checkpoint/ema_00010.safetensors, ...), so that the run can be
    # judged per checkpoint afterwards (benchmarks/grpo_moves.py) and the best one exported
    keep_ema: bool = False

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"group_size must be ≥ 2 (GRPO compares rollouts of one prompt), got {v}")
        return v

    @field_validator("reward_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(SCORES))
        if unknown:
            raise ValueError(f"reward_weights names unknown scores {unknown}; the critic's scores are {list(SCORES)}")
        if sum(v.values()) <= 0:
            raise ValueError("reward_weights must have a positive sum")
        return v

    @field_validator("action_decades")
    @classmethod
    def _decades(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 6:
            raise ValueError(f"action_decades must be in (0, 6] (the critic's scores have 6 decimals), got {v}; "
                             "leave it unset for the linear action score")
        return v

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.noise_level <= 0:
            raise ValueError("noise_level must be > 0: GRPO needs stochastic (SDE) steps")
        if self.white_noise <= 0 or self.coarse_noise < 0 or self.coarse_patch < 1:
            raise ValueError("exploration noise needs white_noise > 0 (the transition must keep a density), "
                             f"coarse_noise ≥ 0 and coarse_patch ≥ 1; got {self.white_noise}, {self.coarse_noise}, "
                             f"{self.coarse_patch}")
        if self.sde_window is not None and not 0 <= self.sde_window[0] < self.sde_window[1] <= self.sample_steps:
            raise ValueError(f"sde_window {self.sde_window} must satisfy 0 ≤ start < end ≤ sample_steps")
        if not self.stages:
            raise ValueError("stages must name at least one curriculum stage")
        if self.minibatches < 1 or self.grad_accum < 1 or self.minibatches % self.grad_accum:
            raise ValueError(f"minibatches ({self.minibatches}) must be a positive multiple of grad_accum "
                             f"({self.grad_accum})")
        if self.cfg_max_sigma is not None and (self.generator != "tiny" or not 0 < self.cfg_max_sigma <= 1):
            raise ValueError(f"cfg_max_sigma (guidance on the late steps only) must be in (0, 1] and is a tiny-generator "
                             f"option; got {self.cfg_max_sigma} with generator {self.generator}")
        if self.cfg_tau is not None and (self.generator != "tiny" or self.cfg_tau <= 0):
            raise ValueError(f"cfg_tau (per-pixel guidance) must be > 0 and is a tiny-generator option; got "
                             f"{self.cfg_tau} with generator {self.generator}")
        if self.pg_region == "action" and (self.generator != "tiny" or self.coarse_noise != 0 or self.white_noise != 1):
            raise ValueError(f"pg_region: action needs the tiny generator and plain white SDE noise (coarse_noise 0, "
                             f"white_noise 1); got {self.generator}, coarse {self.coarse_noise}, white {self.white_noise}")
        if self.anchor_region == "background" and (self.generator != "tiny" or self.beta_ode <= 0):
            raise ValueError(f"anchor_region: background needs beta_ode > 0 (the anchor it restricts) and the tiny "
                             f"generator; got beta_ode {self.beta_ode} with generator {self.generator}")
        if self.reference_weights is not None and (self.generator != "tiny" or self.lora_rank > 0):
            raise ValueError("reference_weights (a separate KL reference) is for the tiny generator with full "
                             "fine-tuning; with LoRA the reference is the model with the adapter disabled")
        if self.focus_moves is not None:
            from spiral.world.splits import HELDOUT_MOVES

            bad = [m for m in self.focus_moves if tuple(m) not in HELDOUT_MOVES]
            if bad or not self.focus_moves or self.heldout_moves not in ("only", "half"):
                raise ValueError(f"focus_moves must be a non-empty list of held-out moves {list(HELDOUT_MOVES)} with "
                                 f"heldout_moves only or half; got {self.focus_moves} with {self.heldout_moves}")
        if self.generator == "diffusers" and not self.diffusers_model:
            raise ValueError("generator: diffusers needs diffusers_model (a model id or a local folder)")
        return self

    def identity(self) -> str:
        """Hash of what makes two runs the same run (not how long or where they go on)."""
        keep = self.model_dump(exclude=RUNTIME_FIELDS)
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | Path, **overrides: Any) -> GRPOConfig:
    """A GRPO config from YAML (or JSON), with overrides; unknown keys are errors that name the key.
    ``extends: FILE`` (relative to the config) starts from another config, so a second stage of training names
    only what changes."""
    data = _config_data(Path(path), ())
    data.update({k: v for k, v in overrides.items() if v is not None})
    return GRPOConfig(**data)


def _config_data(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"GRPO config {path} not found" + (f" (extended by {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise ValueError(f"GRPO config {path} extends itself through {' -> '.join(map(str, seen))}; "
                         "remove the cycle")
    data = yaml.safe_load(path.read_text()) or {}
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return {**_config_data(path.parent / parent, (*seen, path.resolve())), **data}


# ------------------------------------------------------------------------------------------- math


def combine_reward(scores: dict[str, float], weights: dict[str, float], action_decades: float | None = None
                   ) -> float:
    """Weighted mean of the critic's scores. With ``action_decades`` d the action score p enters as
    1 + log10(max(p, 10^-d)) / d: when no rollout of a group reaches the post-conditions (p ≈ 0.01 vs
    1e-5), the linear score hardly differs between them and the log one still orders them."""
    s = dict(scores)
    if action_decades is not None:
        s["action"] = 1.0 + math.log10(max(s["action"], 10.0 ** -action_decades)) / action_decades
    return sum(weights.get(k, 0.0) * s[k] for k in SCORES) / sum(weights.values())


def background_noise(frames: np.ndarray) -> float:
    """Median over pixels of the largest channel change from frame 0, averaged over the later frames, in grey
    levels. A step moves a few objects, so the median pixel is background: this is the fine noise the bench's
    drift counts, and a rollout that adds none scores ~0. Constant offsets (a lamp that relights the scene)
    are the same for a whole group and cancel in its advantages."""
    f = np.asarray(frames, dtype=np.int16)
    change = np.abs(f[1:] - f[:1]).max(axis=-1).reshape(len(f) - 1, -1)
    return float(np.median(change, axis=1).mean())


def group_advantages(rewards: torch.Tensor, group_size: int, global_std: bool = False, clip: float = 5.0
                     ) -> torch.Tensor:
    """(r − group mean) / std, clamped; rewards are laid out group after group."""
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    std = r.std() if global_std else r.std(dim=1, keepdim=True)
    return (centred / (std + 1e-4)).clamp(-clip, clip).view(-1)


def clipped_objective(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_range: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (to minimise) and the ratio."""
    ratio = torch.exp(logp_new - logp_old)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))
    return loss.mean(), ratio


# --------------------------------------------------------------------------------------- prompts


class Prompt(BaseModel):
    """One GRPO prompt: a sub-action and the frames it is generated from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    sub_action: SubAction
    cond_frame: Any
    anchor_frame: Any
    state: dict  # the critic's reading of the conditioning frame (the memory's state)
    task_seed: int
    index: int  # step index in its plan
    scene_seed: int | None = None  # the scene's look (spiral.world.render.Appearance.sample)


def build_policy(cfg: GRPOConfig) -> Any:
    from spiral.train.policy import DiffusersPolicy, TinyPolicy

    if cfg.generator == "tiny":
        encoder = None
        if cfg.text_table:
            from spiral.models.text import TableEncoder

            encoder = TableEncoder(cfg.text_table)
        return TinyPolicy(weights=cfg.weights, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale,
                          cfg_max_sigma=cfg.cfg_max_sigma, cfg_tau=cfg.cfg_tau, reference=cfg.reference_weights,
                          lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                          device=cfg.device, text_encoder=encoder)
    from spiral import registry

    adapter = registry.create("generator", cfg.diffusers_backend, model=cfg.diffusers_model, device=cfg.device,
                              num_inference_steps=cfg.sample_steps, guidance_scale=cfg.cfg_scale)
    return DiffusersPolicy(adapter, steps=cfg.sample_steps, lora_rank=cfg.lora_rank or 16,
                           lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)


class GRPOTrainer:
    """A self-evolution run in ``cfg.out`` (see module docstring)."""

    def __init__(self, cfg: GRPOConfig, resume: bool = False, policy: Any = None, critic: Any = None,
                 progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(cfg.out), progress
        for key in ("weights", "reference_weights"):  # before the run folder is made
            path = getattr(cfg, key)
            if cfg.generator == "tiny" and path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{key}: {path} not found; produce it first (the config's comments say "
                                        f"how) or --set {key}=FILE with a TinyVideoDiT .safetensors file")
        self.rank, self.world = _dist_setup(cfg.device)
        saved = self.out / "config.json"
        if resume:
            if not (self.out / CKPT / "state.pt").is_file():
                raise FileNotFoundError(f"nothing to resume in {self.out} (no {CKPT}/state.pt)")
            old = GRPOConfig(**json.loads(saved.read_text()))
            if old.identity() != cfg.identity():
                diff = sorted(k for k, v in cfg.model_dump().items()
                              if old.model_dump().get(k) != v and k not in RUNTIME_FIELDS)
                raise ValueError(f"{self.out} holds a run of another config (differs in {diff}); resume it with "
                                 f"its own config.json or start a new --out")
        elif (self.out / CKPT / "state.pt").is_file():
            raise FileExistsError(f"{self.out} already holds a GRPO run: pass --resume to continue it or pick "
                                  f"another out folder")
        if self.rank == 0:
            from spiral.atomic import write_text

            self.out.mkdir(parents=True, exist_ok=True)
            write_text(saved, cfg.model_dump_json(indent=2))
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.policy = policy or build_policy(cfg)
        from spiral import registry

        self.critic = critic or registry.create("critic", cfg.critic)
        self.planner = registry.create("planner", cfg.planner)
        self.noise = flow.ExplorationNoise(cfg.white_noise, cfg.coarse_noise, cfg.coarse_patch,
                                           channel_dim=getattr(self.policy, "channel_dim", 2))
        self.params = self.policy.trainable()
        if not self.params:
            raise ValueError("the policy has no trainable parameters")
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = {n: p.detach().clone() for n, p in self.params.items()} if cfg.ema > 0 else None
        self.step_no, self.stage_idx, self.stage_start, self.stage_rewards = 0, 0, 0, []
        self.history: list[dict] = []
        if resume:
            self._load()

    # --- curriculum ---------------------------------------------------------------------------
    @property
    def stage(self) -> Stage:
        return self.cfg.stages[self.stage_idx]

    def _advance_stage(self, mean_reward: float) -> None:
        st = self.stage
        self.stage_rewards.append(mean_reward)
        done = st.until_step is not None and self.step_no >= st.until_step
        window = self.stage_rewards[-st.reward_window:]
        if st.until_reward is not None and len(window) == st.reward_window and np.mean(window) >= st.until_reward:
            done = True
        if done and self.stage_idx + 1 < len(self.cfg.stages):
            self.stage_idx += 1
            self.stage_start, self.stage_rewards = self.step_no, []

    # --- prompts ------------------------------------------------------------------------------
    def _rng(self, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self.rank, self.step_no, *salt])

    def sample_prompts(self, n: int, stage: Stage, rng: np.random.Generator, heldout: str | None = None
                       ) -> list[Prompt]:
        """``n`` prompts of the stage's kind; chained frames come from the current policy (ODE).
        ``heldout`` overrides the config's ``heldout_moves`` filter (and its ``focus_moves``)."""
        focus = self.cfg.focus_moves if heldout is None else None
        heldout = heldout or self.cfg.heldout_moves
        from spiral.world.goals import sample_task
        from spiral.world.render import Appearance, render_state

        size = self._size()
        tasks = []
        while len(tasks) < n:
            ts = int(rng.integers(2**31))
            task = sample_task(ts, stage.min_steps, stage.max_steps)
            plan = self.planner.plan(task.goal.text, task.state)
            lo = 0 if stage.kind == "single" else min(1, len(plan.steps) - 1)
            want = heldout if heldout != "half" else ("only", "exclude")[len(tasks) % 2]
            choices = [k for k in range(lo, len(plan.steps)) if self._allowed(plan.steps[k], want, focus)]
            if not choices:
                continue
            k = choices[int(rng.integers(len(choices)))]
            look = Appearance.sample(task.scene_seed)
            tasks.append((ts, task, plan, k, look))
        prompts: list[Prompt] = []
        chains = []
        for ts, task, plan, k, look in tasks:
            from spiral.world import domain

            first = render_state(task.state, appearance=look, size=size)
            if stage.kind == "single":  # the true state before step k, rendered
                state = task.state
                for sub in plan.steps[:k]:
                    state = domain.apply(state, domain.Action(sub.verb, tuple(sub.objects)))
                frame = render_state(state, appearance=look, size=size)
                prompts.append(Prompt(sub_action=plan.steps[k], cond_frame=frame, anchor_frame=first,
                                      state=self.critic.observe(frame).to_dict(), task_seed=ts, index=k,
                                      scene_seed=task.scene_seed))
            else:
                chains.append((ts, plan, k, first, task.scene_seed))
        if chains:
            prompts += self._chain(chains)
        return prompts

    @staticmethod
    def _allowed(sub: SubAction, heldout: str, focus: list[tuple[str, str]] | None = None) -> bool:
        from spiral.world.splits import is_heldout

        held = is_heldout(sub.verb, sub.objects)
        if held and heldout == "only" and focus is not None:
            return tuple(sub.objects) in {tuple(m) for m in focus}
        return {"exclude": not held, "include": True, "only": held}[heldout]

    @torch.no_grad()
    def _chain(self, chains: list) -> list[Prompt]:
        """Run each plan's first k steps with the current policy (ODE), as plan-only generation would."""
        from spiral.loop import derive_seed

        frames = {i: c[3] for i, c in enumerate(chains)}
        for step in range(max(c[2] for c in chains)):
            active = [i for i, c in enumerate(chains) if step < c[2]]
            reqs = [self.request(chains[i][1].steps[step].text, frames[i], chains[i][3],
                                  derive_seed(chains[i][0], 0, step, 0)) for i in active]
            for i, seg in zip(active, self.generate(reqs, mode="ode")):
                frames[i] = seg.frames[-1]
        return [Prompt(sub_action=plan.steps[k], cond_frame=frames[i], anchor_frame=first,
                       state=self.critic.observe(frames[i]).to_dict(), task_seed=ts, index=k, scene_seed=scene)
                for i, (ts, plan, k, first, scene) in enumerate(chains)]

    def _size(self) -> int:
        cfg = getattr(getattr(self.policy, "gen", None), "config", None)
        return cfg.resolution if cfg is not None else 64

    def request(self, text: str, cond: np.ndarray, anchor: np.ndarray, seed: int) -> GenerationRequest:
        """One generation request at the policy's clip length and the conditioning frame's size."""
        cfg = getattr(getattr(self.policy, "gen", None), "config", None)
        frames = cfg.num_frames + 1 if cfg is not None else 9
        return GenerationRequest(prompt=text, cond_frame=cond, anchor_frame=anchor, seed=seed, num_frames=frames,
                                 height=cond.shape[0], width=cond.shape[1])

    def _chunks(self, requests: list[GenerationRequest], per_group: int) -> list[list[GenerationRequest]]:
        if self.policy.batches_groups:
            return [requests]
        return [requests[i:i + per_group] for i in range(0, len(requests), per_group)]

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], mode: str = "ode") -> list[Segment]:
        """Segments from the current policy, without log-probs (gold evaluation, chained prompts, reversal)."""
        segs: list[Segment] = []
        per = 1 if not self.policy.batches_groups else len(requests)
        for chunk in self._chunks(requests, per):
            batch = self.policy.prepare(chunk)
            x0, _, _ = flow.sample(lambda x, s, b=batch: self.policy.velocity(x, s, b), self.policy.initial_noise(batch),
                                   self.policy.sigmas(), mode=mode)  # type: ignore[arg-type]
            segs += self.policy.decode(x0, batch)
        return segs

    # --- rollouts -----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[Prompt], rng: np.random.Generator) -> dict[str, Any]:
        """G SDE rollouts per prompt: trajectories, log-probs, segments, rewards, advantages."""
        cfg, G = self.cfg, self.cfg.group_size
        seeds = rng.integers(2**62, size=len(prompts) * G)
        requests = [self.request(p.sub_action.text, p.cond_frame, p.anchor_frame, int(seeds[i * G + g]))
                    for i, p in enumerate(prompts) for g in range(G)]
        traj, logps, segments, batches, regions = [], [], [], [], []
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        for chunk in self._chunks(requests, G):
            batch = self.policy.prepare(chunk)
            sigmas = self.policy.sigmas()
            x = self.policy.initial_noise(batch)
            states, lps, region = [x], [], {}
            mask = flow.sde_mask(len(sigmas) - 1, "sde", cfg.sde_window)
            for i in range(len(sigmas) - 1):
                s, sn = sigmas[i], sigmas[i + 1]
                v = self.policy.velocity(x, s.expand(x.shape[0]), batch)
                if mask[i]:
                    if cfg.pg_region == "action":
                        region[i] = self.policy.action_region(x, s.expand(x.shape[0]), batch, cfg.anchor_tau)
                    mean, std = flow.sde_mean_std(x, v, s, sn, cfg.noise_level)
                    x = mean + std * self.noise.sample(x.shape, gen).to(x.device, x.dtype)
                    lp = self.noise.logprob(x, mean, std, region.get(i))
                else:
                    x, lp = flow.euler_step(x, v, s, sn), torch.zeros(x.shape[0], device=x.device)
                states.append(x)
                lps.append(lp)
            traj.append(torch.stack(states, 1))
            logps.append(torch.stack(lps, 1))
            regions.append(region)
            segments += self.policy.decode(x, batch)
            batches.append(batch)
        rewards, passed, scores, noise, artifact = [], [], [], [], []
        for p in (p for p in prompts for _ in range(G)):
            seg = segments[len(rewards)]
            verdict = self.critic.judge(seg, p.sub_action, self.context(p))
            noise.append(background_noise(seg.frames))
            artifact.append(self.artifact(seg.frames[-1], p, self.critic.observe(seg.frames[-1]))
                            if cfg.artifact_penalty else 0.0)
            rewards.append(combine_reward(verdict.scores, cfg.reward_weights, cfg.action_decades)
                           - cfg.noise_penalty * noise[-1] - cfg.artifact_penalty * artifact[-1])
            passed.append(float(verdict.passed))
            scores.append(verdict.scores)
        r = torch.tensor(rewards, dtype=torch.float32)
        adv = group_advantages(r, G, cfg.global_std, cfg.adv_clip)
        quiet = r.view(-1, G).std(dim=1) < cfg.min_group_std
        adv = adv.view(-1, G).masked_fill(quiet[:, None], 0.0).view(-1)
        region_frac = [float(m.float().mean()) for reg in regions for m in reg.values()] or [1.0]
        return {"requests": requests, "batches": batches, "traj": traj, "logp": logps, "regions": regions,
                "sigmas": sigmas, "mask": mask, "segments": segments, "rewards": r, "passed": torch.tensor(passed),
                "adv": adv, "quiet_groups": float(quiet.float().mean()), "region_frac": float(np.mean(region_frac)),
                "scores": scores, "noise": float(np.mean(noise)), "artifact": float(np.mean(artifact))}

    @staticmethod
    def context(p: Prompt) -> dict[str, Any]:
        """What the critic knows of a prompt, as the loop's memory gives it: anchor frame, state, the scene's look."""
        return {"anchor_frame": p.anchor_frame, "state": p.state,
                "hints": {"scene_seed": p.scene_seed} if p.scene_seed is not None else {}}

    def artifact(self, frame: np.ndarray, prompt: Prompt, state: Any) -> float:
        """Artifact area of ``frame`` against a render of ``state`` (what it is read as) in the prompt's look."""
        from spiral.world.render import Appearance, artifact_area, render_state

        if prompt.scene_seed is None:
            raise ValueError("the artifact check (artifact_penalty, gold faithfulness) needs each prompt's scene_seed "
                             "(the look to render the state in)")
        return artifact_area(frame, render_state(state, appearance=Appearance.sample(prompt.scene_seed),
                                                 size=frame.shape[0]))

    # --- update -------------------------------------------------------------------------------
    def loss_terms(self, ro: dict[str, Any], chunk: int, sl: slice, i: int) -> dict[str, torch.Tensor]:
        """Clipped policy loss and KL at SDE step ``i`` of rollouts ``sl`` of one chunk (differentiable)."""
        cfg = self.cfg
        start = sum(t.shape[0] for t in ro["traj"][:chunk])
        x_t, x_next = ro["traj"][chunk][sl, i], ro["traj"][chunk][sl, i + 1]
        per = x_t.shape[0]
        adv = ro["adv"][start:start + ro["traj"][chunk].shape[0]][sl].to(self.device)
        s, sn = ro["sigmas"][i], ro["sigmas"][i + 1]
        batch = self.policy.subset(ro["batches"][chunk], sl)
        v = self.policy.velocity(x_t, s.expand(per), batch)
        mean, std = flow.sde_mean_std(x_t, v, s, sn, cfg.noise_level)
        region = ro["regions"][chunk].get(i) if cfg.pg_region == "action" else None
        logp = self.noise.logprob(x_next, mean, std, region[sl] if region is not None else None)
        policy_loss, ratio = clipped_objective(logp, ro["logp"][chunk][sl, i].to(logp.device), adv, cfg.clip_range)
        out = {"policy": policy_loss, "ratio": ratio.detach(), "logp": logp.detach()}
        if cfg.beta > 0:
            v_ref = self.policy.reference_velocity(x_t, s.expand(per), batch)
            mean_ref, _ = flow.sde_mean_std(x_t, v_ref, s, sn, cfg.noise_level)
            out["kl"] = self.noise.kl(mean, mean_ref, std).mean()
        else:
            out["kl"] = torch.zeros((), device=logp.device)
        out["loss"] = policy_loss + cfg.beta * out["kl"]
        return out

    def anchor_kl(self, ro: dict[str, Any], chunk: int, sl: slice, i: int) -> torch.Tensor:
        """KL to the reference at deterministic step ``i``, measured as if it were an SDE step (differentiable).
        No exploration happens there, so the policy loss never reaches it; the late steps paint the background,
        and shared weights let an update move them (the drift creep of docs/self_evolution.md item 9). Compared
        unguided: guidance would multiply the differences at the moved object, which GRPO is meant to change."""
        x_t = ro["traj"][chunk][sl, i]
        s, sn = ro["sigmas"][i], ro["sigmas"][i + 1]
        batch = self.policy.unguided(self.policy.subset(ro["batches"][chunk], sl))
        v = self.policy.velocity(x_t, s.expand(x_t.shape[0]), batch)
        v_ref = self.policy.reference_velocity(x_t, s.expand(x_t.shape[0]), batch)
        mean, std = flow.sde_mean_std(x_t, v, s, sn, self.cfg.noise_level)
        mean_ref, _ = flow.sde_mean_std(x_t, v_ref, s, sn, self.cfg.noise_level)
        if self.cfg.anchor_region == "frame":
            return self.noise.kl(mean, mean_ref, std).mean()
        # per pixel, as white noise would measure it, averaged over the background pixels of each rollout
        keep = (~self.policy.action_region(x_t, s.expand(x_t.shape[0]), batch, self.cfg.anchor_tau)).float()
        d = (mean.float() - mean_ref.float()) ** 2 / (2 * std.float() ** 2)
        keep = keep.expand_as(d)
        dims = tuple(range(1, d.ndim))
        return ((d * keep).sum(dims) / keep.sum(dims).clamp(min=1)).mean()

    def update(self, ro: dict[str, Any], rng: np.random.Generator) -> dict[str, float]:
        cfg = self.cfg
        if cfg.min_group_std:  # every group quiet on every rank: nothing to learn here
            if _all_mean(float(ro["adv"].ne(0).any()), self.world) == 0:
                return {"optimizer_steps": 0, "skipped_no_signal": 1}
        sde_steps = [i for i in range(len(ro["mask"])) if ro["mask"][i]]
        n_train = max(1, round(cfg.timestep_fraction * len(sde_steps)))
        chosen = sorted(rng.choice(sde_steps, size=n_train, replace=False).tolist())
        self.policy.train(True)
        stats: dict[str, list[float]] = {"loss": [], "kl": [], "clipfrac": [], "approx_kl": [], "ratio_mean": [],
                                         "ratio_min": [], "ratio_max": []}
        # minibatches: slices of the rollouts (whole chunks when a policy keeps one group per chunk)
        slices = []
        for c, t in enumerate(ro["traj"]):
            n = t.shape[0]
            parts = cfg.minibatches if len(ro["traj"]) == 1 else 1
            bounds = np.linspace(0, n, parts + 1).round().astype(int)
            slices += [(c, slice(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        per_update = max(1, math.ceil(len(slices) / max(1, len(slices) // cfg.grad_accum)))
        ode_steps = [i for i in range(len(ro["mask"])) if not ro["mask"][i]] if cfg.beta_ode > 0 else []
        steps = chosen + ode_steps
        micro = [(c, sl, i) for c, sl in slices for i in steps]
        grad_norms, skipped = [], 0
        self.opt.zero_grad(set_to_none=True)
        for j, (c, sl, i) in enumerate(micro):
            if i in ode_steps:
                kl_ode = self.anchor_kl(ro, c, sl, i)
                (cfg.beta_ode * kl_ode / (per_update * len(ode_steps))).backward()
                stats.setdefault("kl_ode", []).append(float(kl_ode.detach()))
            else:
                terms = self.loss_terms(ro, c, sl, i)
                (terms["loss"] / (per_update * len(chosen))).backward()
                r = terms["ratio"]
                if j < per_update * len(steps):  # the first optimizer step's micro-batches are on-policy
                    self._first_dev = max(getattr(self, "_first_dev", 0.0) if j else 0.0, float((r - 1).abs().max()))
                stats["loss"].append(float(terms["loss"].detach()))
                stats["kl"].append(float(terms["kl"].detach()))
                stats["clipfrac"].append(float(((r - 1).abs() > cfg.clip_range).float().mean()))
                lr_ = torch.log(r)
                stats["approx_kl"].append(float(0.5 * (lr_**2).mean()))
                stats["ratio_mean"].append(float(r.mean()))
                stats["ratio_min"].append(float(r.min()))
                stats["ratio_max"].append(float(r.max()))
            if (j + 1) % (per_update * len(steps)) == 0 or j == len(micro) - 1:
                gn, ok = self._apply_grads()
                grad_norms.append(gn)
                skipped += int(not ok)
        self.policy.train(False)
        out = {k: float(np.mean(v)) for k, v in stats.items() if k not in ("ratio_min", "ratio_max")}
        out.update(ratio_min=min(stats["ratio_min"]), ratio_max=max(stats["ratio_max"]),
                   grad_norm=float(np.mean(grad_norms)), skipped_updates=skipped, trained_timesteps=len(chosen),
                   optimizer_steps=len(grad_norms), first_ratio_max_dev=self._first_dev)
        return out

    def _apply_grads(self) -> tuple[float, bool]:
        params = list(self.params.values())
        if self.world > 1:
            import torch.distributed as dist

            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip else float("inf"))
        ok = bool(torch.isfinite(norm))
        if ok:
            self.opt.step()
            if self.ema is not None:
                for n, p in self.params.items():
                    self.ema[n].lerp_(p.detach(), 1 - self.cfg.ema)
        self.opt.zero_grad(set_to_none=True)
        return float(norm), ok

    # --- one step -----------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        cfg, stage = self.cfg, self.stage
        t0 = time.perf_counter()
        rng = self._rng()
        prompts = self.sample_prompts(cfg.prompts_per_step, stage, rng)
        t1 = time.perf_counter()
        ro = self.rollout(prompts, rng)
        t2 = time.perf_counter()
        upd = self.update(ro, rng)
        t3 = time.perf_counter()
        rewards, passed = ro["rewards"], ro["passed"]
        mean_r, pass_r = _all_mean(float(rewards.mean()), self.world), _all_mean(float(passed.mean()), self.world)
        self.step_no += 1
        record = {"step": self.step_no, "stage": stage.name, "reward_mean": mean_r,
                  "reward_std": float(rewards.std()), "critic_pass": pass_r,
                  "group_reward_std": float(rewards.view(-1, cfg.group_size).std(dim=1).mean()),
                  **{f"score_{k}": float(np.mean([s[k] for s in ro["scores"]])) for k in SCORES},
                  "background_noise": ro["noise"], "artifact_area": ro["artifact"],
                  "quiet_groups": ro["quiet_groups"], "pg_region_frac": ro["region_frac"], **upd,
                  "seconds_prompts": t1 - t0, "seconds_rollout": t2 - t1, "seconds_update": t3 - t2,
                  "seconds_step": t3 - t0, "prompt_seeds": [p.task_seed for p in prompts][:4]}
        self._advance_stage(mean_r)
        self.last_rollout = ro
        return record

    # --- gold eval ----------------------------------------------------------------------------
    @torch.no_grad()
    def gold_eval(self, n: int | None = None) -> dict[str, float]:
        """Fixed single-step prompts (seed-independent of training), ODE, scored by the critic *and*
        the benchmark's independent judge: a gap between the two is reward hacking. The prompts never
        hold a held-out move; a run that trains on them is also scored on held-out-only prompts
        (``gold_heldout_*``), so learning them and forgetting the rest both show."""
        out = self._gold("exclude", n)
        if self.cfg.heldout_moves != "exclude":
            out |= {k.replace("gold_", "gold_heldout_"): v for k, v in self._gold("only", n).items()}
        return out

    def _gold(self, heldout: str, n: int | None) -> dict[str, float]:
        n = n or self.cfg.eval_prompts
        saved_step, saved_rank = self.step_no, self.rank
        self.step_no, self.rank = -1, 10_000  # a stream no training step uses
        try:
            prompts = self.sample_prompts(n, Stage(name="gold", kind="single", min_steps=1, max_steps=8),
                                          np.random.default_rng([self.cfg.seed, 99, 99]), heldout)
        finally:
            self.step_no, self.rank = saved_step, saved_rank
        critic_ok, judge_ok, segs = self.score_prompts(prompts)
        faithful = self.faithful(prompts, segs, judge_ok)
        return {"gold_critic_pass": float(np.mean(critic_ok)), "gold_judge_success": float(np.mean(judge_ok)),
                "gold_judge_faithful": float(np.mean(faithful))}

    def faithful(self, prompts: list[Prompt], segs: list[Segment], judge_ok: list[float]) -> list[float]:
        """Judge successes whose last frame is a faithful picture of what the judge read there (artifact area
        ≤ 0.4 %, spiral.bench.metrics.FAITHFUL_AREA): where this falls below the judge's success, the judge is
        being fooled, by noise it reads as a block."""
        from spiral.bench.metrics import FAITHFUL_AREA

        return [float(ok and self.artifact(seg.frames[-1], p, self._judge.read_state(seg.frames[-1])) <= FAITHFUL_AREA)
                for p, seg, ok in zip(prompts, segs, judge_ok)]

    def score_prompts(self, prompts: list[Prompt], seed: int = 1000
                      ) -> tuple[list[float], list[float], list[Segment]]:
        """ODE segments of the live weights for ``prompts`` (request seeds ``seed``, ``seed`` + 1, ...), each
        passed or not by the critic and by the benchmark's independent judge (its postconditions hold)."""
        from spiral.bench.judge import RecognizerJudge
        from spiral.world import domain

        judge = getattr(self, "_judge", None) or RecognizerJudge()
        self._judge = judge
        reqs = [self.request(p.sub_action.text, p.cond_frame, p.anchor_frame, seed + i) for i, p in enumerate(prompts)]
        segs = self.generate(reqs, mode="ode")
        critic_ok, judge_ok = [], []
        for p, seg in zip(prompts, segs):
            v = self.critic.judge(seg, p.sub_action, self.context(p))
            critic_ok.append(float(v.passed))
            end = judge.read_state(seg.frames[-1])
            post = p.sub_action.postconditions or domain.effects(domain.State.from_dict(p.state),
                                                                 domain.Action(p.sub_action.verb,
                                                                               tuple(p.sub_action.objects)))
            judge_ok.append(float(all(end.holds(q) for q in post)))
        return critic_ok, judge_ok, segs

    # --- checkpoints --------------------------------------------------------------------------
    def save(self) -> Path:
        from safetensors.torch import save_file

        from spiral.atomic import atomic_path

        ck = self.out / CKPT
        ck.mkdir(parents=True, exist_ok=True)
        meta = {"step": str(self.step_no), "config": self.cfg.identity()}
        with atomic_path(ck / "trainable.safetensors") as tmp:
            save_file({n: p.detach().cpu().contiguous() for n, p in self.params.items()}, str(tmp), metadata=meta)
        if self.ema is not None:
            ema = {n: t.cpu().contiguous() for n, t in self.ema.items()}
            for name in ("ema.safetensors", *([f"ema_{self.step_no:05d}.safetensors"] if self.cfg.keep_ema else [])):
                with atomic_path(ck / name) as tmp:
                    save_file(ema, str(tmp), metadata=meta)
        state = {"step": self.step_no, "stage_idx": self.stage_idx, "stage_start": self.stage_start,
                 "stage_rewards": list(self.stage_rewards), "optimizer": self.opt.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        with atomic_path(ck / "state.pt") as tmp:
            torch.save(state, tmp)
        return ck

    def _load(self) -> None:
        from safetensors.torch import load_file

        ck = self.out / CKPT
        state = torch.load(ck / "state.pt", weights_only=True, map_location="cpu")
        weights = load_file(str(ck / "trainable.safetensors"))
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n].to(p.device))
            if self.ema is not None and (ck / "ema.safetensors").is_file():
                for n, t in load_file(str(ck / "ema.safetensors")).items():
                    self.ema[n].copy_(t.to(self.ema[n].device))
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step_no, self.stage_idx = int(state["step"]), int(state["stage_idx"])
        self.stage_start, self.stage_rewards = int(state["stage_start"]), list(state["stage_rewards"])

    def load_ema(self, path: str | Path) -> int:
        """Make a kept EMA file (``keep_ema``) the live and the EMA weights, to score or export that checkpoint;
        returns its step."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            missing = sorted(set(self.params) - set(f.keys()))
            if missing:
                raise ValueError(f"{path} lacks trainable weights {missing[:3]}: it comes from a run of another config")
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(f.get_tensor(n).to(p.device))
                    if self.ema is not None:
                        self.ema[n].copy_(p)
            self.step_no = int((f.metadata() or {}).get("step", 0))
        return self.step_no

    @contextlib.contextmanager
    def ema_weights(self) -> Any:
        """Swap the EMA weights in (for export and evaluation)."""
        if self.ema is None:
            yield
            return
        live = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.ema[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    def export(self, path: str | Path) -> Path:
        """The evolved tiny generator (EMA, LoRA merged) as a TinyVideoDiT safetensors file."""
        from spiral.models.tiny_video import save_weights

        if self.cfg.generator != "tiny":
            from safetensors.torch import save_file

            with self.ema_weights():
                save_file({n: p.detach().cpu().contiguous() for n, p in self.params.items()}, str(path))
            return Path(path)
        with self.ema_weights():
            model = self.policy.export_model()
            meta = {"grpo_steps": str(self.step_no), "grpo_config": self.cfg.identity()}
            if self.cfg.cfg_scale != 1.0:  # the weights were evolved under this sampler: make it their default
                sampler = {"cfg_scale": self.cfg.cfg_scale, "cfg_max_sigma": self.cfg.cfg_max_sigma}
                meta["sampler"] = json.dumps({**sampler, **({"cfg_tau": self.cfg.cfg_tau} if self.cfg.cfg_tau else {})})
            return save_weights(model, path, meta)

    # --- the loop -----------------------------------------------------------------------------
    def run(self, stop_at: int | None = None, minutes: float | None = None) -> list[dict]:
        cfg = self.cfg
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        from spiral.train.generator import _tensorboard

        writer = _tensorboard(self.out) if self.rank == 0 else None
        t_start = time.perf_counter()
        if self.step_no == 0 and cfg.eval_every and self.rank == 0:
            self._log({"step": 0, **self.gold_eval()}, writer)
        while self.step_no < end:
            if minutes is not None and time.perf_counter() - t_start > minutes * 60:
                break
            rec = self.step()
            if self.rank == 0:
                if cfg.eval_every and self.step_no % cfg.eval_every == 0:
                    with self.ema_weights():
                        rec.update(self.gold_eval())
                if cfg.sample_every and self.step_no % cfg.sample_every == 0:
                    self._strip(self.out / "samples" / f"step_{self.step_no:05d}.png")
                self._log(rec, writer)
            if self.world > 1:
                self._rank_log(rec)
            if cfg.ckpt_every and self.step_no % cfg.ckpt_every == 0 and self.rank == 0:
                self.save()
            self.history.append(rec)
        if self.rank == 0:
            self.save()
        if writer is not None:
            writer.close()
        return self.history

    def _log(self, rec: dict, writer: Any) -> None:
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.progress:
            keys = ("step", "stage", "reward_mean", "critic_pass", "artifact_area", "kl", "clipfrac",
                    "gold_judge_success", "gold_judge_faithful", "gold_heldout_judge_success",
                    "gold_heldout_judge_faithful", "seconds_rollout", "seconds_update")
            print("  ".join(f"{k}={rec[k]:.4g}" if isinstance(rec.get(k), float) else f"{k}={rec[k]}"
                            for k in keys if k in rec), flush=True)
        if writer is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    tag = f"{rec.get('stage', 'eval')}/{k}" if k.startswith("reward") else f"grpo/{k}"
                    writer.add_scalar(tag, v, rec["step"])

    def _rank_log(self, rec: dict) -> None:
        chk = float(sum(p.detach().double().sum() for p in self.params.values()))
        with open(self.out / f"rank{self.rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": rec["step"], "prompt_seeds": rec["prompt_seeds"], "param_sum": chk}) + "\n")

    def _strip(self, path: Path) -> None:
        """The first prompt's G rollouts (rows), with their rewards in the file's sidecar JSON."""
        from PIL import Image

        ro = self.last_rollout
        G = self.cfg.group_size
        rows = [np.concatenate(list(s.frames), axis=1) for s in ro["segments"][:G]]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows)).save(path)
        path.with_suffix(".json").write_text(json.dumps({"prompt": ro["requests"][0].prompt,
                                                         "rewards": ro["rewards"][:G].tolist()}))


def _all_mean(x: float, world: int) -> float:
    if world <= 1:
        return x
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world


def _dist_setup(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def train_grpo(cfg: GRPOConfig, resume: bool = False, minutes: float | None = None, export: str | None = None
               ) -> dict[str, Any]:
    """Python entry point of ``spiral train grpo``."""
    trainer = GRPOTrainer(cfg, resume=resume)
    hist = trainer.run(minutes=minutes)
    out: dict[str, Any] = {"steps": trainer.step_no, "last": hist[-1] if hist else None}
    if trainer.rank == 0:
        out["weights"] = str(trainer.export(export or trainer.out / "evolved.safetensors"))
    return out
