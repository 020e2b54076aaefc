"""Self-evolution: Flow-GRPO post-training of the generator on PlanAgent prompts with CriticAgent rewards.

One step (``GRPOTrainer.step``):

1. **Prompts.** The PlanAgent plans sampled tabletop tasks; the curriculum stage decides which
   sub-action becomes the prompt and from which frame: ``single`` (one step from a rendered true
   state), ``continuation`` / ``plan`` (step k of a medium / long plan, conditioned on the
   generator's *own* chained outputs for steps 0..k−1, the errors that compound over long horizons).
   With ``prompts.source`` dataset or suite the tasks are an imported dataset's episodes or a suite's cases
   instead (``spiral.train.grpo_prompts``), and the tabletop-only extras (gold evaluation with the tabletop judge,
   its faithfulness check, held-out move splits) are skipped.
2. **Rollouts.** G SDE samples per prompt through ``spiral.flow.sample`` (the one sampler of every generator),
   its exploration noise drawn from a CPU generator so that rollouts do not depend on the device;
   log-probabilities kept per step.
3. **Rewards.** ``CriticAgent.judge`` scores, combined with ``reward_weights`` (:func:`spiral.types.combine_scores`, the critic's own combination).
4. **Advantages.** (r − mean_group) / std (group std, or the std of the whole batch with
   ``global_std``), clamped to ±``adv_clip``; groups quieter than ``min_group_std`` get none.
5. **Update.** On a random ``timestep_fraction`` of the SDE steps: PPO-clipped ratio of the new and
   old log-probabilities of the recorded transitions, plus β·KL to the frozen reference (the KL of
   the two Gaussian transitions, ‖μ_θ − μ_ref‖² / 2σ_t², as Flow-GRPO), and ``beta_ode``·KL on the
   deterministic steps. Gradient accumulation, clipping, a NaN/inf guard that skips the update, EMA of
   the trained weights (``spiral.train.common``).

Every random draw is a function of (seed, rank, step), so ``--resume`` continues with exactly the
step an uninterrupted run would take. Under ``torchrun`` each rank rolls out its own prompts
(different seeds) and gradients are averaged over ranks (gloo on CPU, nccl on GPU).

The config, every field's meaning and the source of its default: ``spiral.train.grpo_config``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spiral import flow
from spiral.agents import FixedClipShape, GRPOPolicy, check_health, observe
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
from spiral.train.grpo_config import RUNTIME_FIELDS, SCORES, GRPOConfig, Stage, load_config
from spiral.train.grpo_prompts import Prompt
from spiral.types import (
    GenerationRequest,
    JudgeContext,
    Observation,
    Segment,
    SubAction,
    combine_scores,
    memory_prompt,
)

__all__ = ["GRPOConfig", "GRPOTrainer", "Prompt", "Stage", "RUNTIME_FIELDS", "SCORES", "background_noise",
           "build_policy", "clipped_objective", "group_advantages", "load_config", "train_grpo"]

CKPT = "checkpoint"


# ------------------------------------------------------------------------------------------- math


def background_noise(frames: np.ndarray) -> float:
    """Median over pixels of the largest channel change from frame 0, averaged over the later frames, in grey
    levels. A step moves a few objects, so the median pixel is background: this is the fine noise the bench's
    drift counts, and a rollout that adds none scores ~0 (logged per step as ``background_noise``: drift that
    the critic's preservation score is too coarse to see)."""
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


def build_policy(cfg: GRPOConfig, device: str | None = None) -> GRPOPolicy:
    """The policy a config names, on ``device`` (default: the config's)."""
    from spiral.train.policy import DiffusersPolicy, TinyPolicy

    device = device or cfg.device

    if cfg.generator == "tiny":
        encoder = None
        if cfg.text_table:
            from spiral.models.text import TableEncoder

            encoder = TableEncoder(cfg.text_table)
        return TinyPolicy(weights=cfg.weights, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale,
                          cfg_max_sigma=cfg.cfg_max_sigma, cfg_tau=cfg.cfg_tau,
                          lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                          device=device, text_encoder=encoder)
    from spiral import registry

    adapter = registry.create("generator", cfg.diffusers_backend, **cfg.diffusers_options, model=cfg.diffusers_model,
                              device=device, num_inference_steps=cfg.sample_steps, guidance_scale=cfg.cfg_scale)
    return DiffusersPolicy(adapter, steps=cfg.sample_steps, lora_rank=cfg.lora_rank or 16,
                           lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)


class GRPOTrainer:
    """A self-evolution run in ``cfg.out`` (see module docstring)."""

    def __init__(self, cfg: GRPOConfig, resume: bool = False, policy: Any = None, critic: Any = None,
                 progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(cfg.out), progress
        if cfg.generator == "tiny" and cfg.weights is not None and not Path(cfg.weights).is_file():
            raise FileNotFoundError(f"weights: {cfg.weights} not found; produce it first (the config's comments say "
                                    f"how) or --set weights=FILE with a TinyVideoDiT .safetensors file")
        self.rank, self.world = _dist_setup(cfg.device)
        saved = self.out / "config.json"
        if resume:
            if not (self.out / CKPT / "state.pt").is_file():
                raise FileNotFoundError(f"nothing to resume in {self.out} (no {CKPT}/state.pt)")
            old = GRPOConfig.from_saved(json.loads(saved.read_text()))
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
        self.device = torch.device(rank_device(cfg.device))  # cuda:LOCAL_RANK for each torchrun rank
        torch.manual_seed(cfg.seed)
        # the agents first, and those that talk to an endpoint asked once whether it answers: an unreachable server
        # fails here in seconds, before a large generator's weights load
        self.critic = critic or _create("critic", cfg)
        self.planner = _create("planner", cfg)
        check_health(planner=self.planner, critic=self.critic)
        self.policy: GRPOPolicy = policy or build_policy(cfg, str(self.device))
        if not isinstance(self.policy, GRPOPolicy):
            raise TypeError(f"the policy {type(self.policy).__name__} lacks what GRPO needs (spiral.agents.GRPOPolicy)")
        self._judge: Any = None  # the benchmark's judge, loaded on the first score_prompts
        self.pool: Any = None  # the dataset's or suite's tasks (spiral.train.grpo_prompts.TaskPool)
        if not cfg.tabletop:
            from spiral.train.grpo_prompts import TaskPool

            self.pool = TaskPool(cfg.prompts, self.frame_size(), self.planner, cfg.backend("planner")[0],
                                 self.rank, self.world)
            if self.rank == 0 and progress:
                print(f"prompts: {cfg.prompts.source} {cfg.prompts.path} ({self.pool.total} tasks); not the tabletop "
                      "world, so the gold evaluation (the tabletop judge), its faithfulness check and the held-out "
                      "move splits are skipped", flush=True)
        self.params = self.policy.trainable()
        if not self.params:
            raise ValueError("the policy has no trainable parameters")
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.params, cfg.ema) if cfg.ema > 0 else None
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
        if self.pool is not None:
            return self._pool_prompts(n, stage, rng)
        focus = self.cfg.focus_moves if heldout is None else None
        heldout = heldout or self.cfg.heldout_moves
        from spiral.world.render import Appearance, render_state
        from spiral.world.tasks import sample_task

        size = self._size()
        tasks = []
        while len(tasks) < n:
            ts = int(rng.integers(2**31))
            task = sample_task(ts, stage.min_steps, stage.max_steps)
            look = Appearance.sample(task.scene_seed)
            first = render_state(task.state, appearance=look, size=size)
            plan = self.planner.plan(task.goal.text, Observation(frame=first, state=task.state.to_dict()))
            lo = 0 if stage.kind == "single" else min(1, len(plan.steps) - 1)
            want = heldout if heldout != "half" else ("only", "exclude")[len(tasks) % 2]
            choices = [k for k in range(lo, len(plan.steps)) if self._allowed(plan.steps[k], want, focus)]
            if not choices:
                continue
            k = choices[int(rng.integers(len(choices)))]
            tasks.append((ts, task, plan, k, look, first))
        prompts: list[Prompt] = []
        chains = []
        for ts, task, plan, k, look, first in tasks:
            from spiral.world import domain

            common = dict(sub_action=plan.steps[k], anchor_frame=first, task_seed=ts, index=k,
                          scene_seed=task.scene_seed, goal=task.goal.text, history=[s.text for s in plan.steps[:k]])
            if stage.kind == "single":  # the true state before step k, rendered
                state = task.state
                for sub in plan.steps[:k]:
                    state = domain.apply(state, domain.Action(sub.verb, tuple(sub.objects)))
                frame = render_state(state, appearance=look, size=size)
                prompts.append(Prompt(cond_frame=frame, state=self.read_state(frame, state.to_dict()), **common))
            else:
                chains.append((plan, k, common))
        if chains:
            prompts += self._chain(chains)
        return prompts

    def _pool_prompts(self, n: int, stage: Stage, rng: np.random.Generator) -> list[Prompt]:
        """``n`` prompts from the dataset's or the suite's tasks (spiral.train.grpo_prompts)."""
        prompts, chains = [], []
        for d in self.pool.draw(n, stage, rng):
            t = d.task
            common = dict(sub_action=d.plan.steps[d.k], anchor_frame=t.first, task_seed=t.number, index=d.k,
                          scene_seed=t.scene_seed, task=t.key, goal=t.goal,
                          history=[s.text for s in d.plan.steps[:d.k]])
            if d.cond is not None:
                known = t.state if d.k == 0 else None  # the source's state holds for the first frame only
                prompts.append(Prompt(cond_frame=d.cond, state=self.read_state(d.cond, known), **common))
            else:
                chains.append((d.plan, d.k, common))
        if chains:
            prompts += self._chain(chains)
        return prompts

    def read_state(self, frame: np.ndarray, known: dict | None = None) -> dict | None:
        """The memory's state before a step: the critic's reading of the frame when it reads states
        (spiral.agents.ObservesState), else what the prompt source knows (``known``), else None."""
        seen = observe(self.critic, frame)
        return seen if seen is not None else known

    @staticmethod
    def _allowed(sub: SubAction, heldout: str, focus: list[tuple[str, str]] | None = None) -> bool:
        from spiral.world.splits import is_heldout

        held = is_heldout(sub.verb, sub.objects)
        if held and heldout == "only" and focus is not None:
            return tuple(sub.objects) in {tuple(m) for m in focus}
        return {"exclude": not held, "include": True, "only": held}[heldout]

    @torch.no_grad()
    def _chain(self, chains: list[tuple[Any, int, dict]]) -> list[Prompt]:
        """Run each plan's first k steps with the current policy (ODE), as plan-only generation would; ``chains``
        holds (plan, k, the prompt's other fields) with the task's first frame as ``anchor_frame``."""
        from spiral.loop import derive_seed

        frames = {i: c[2]["anchor_frame"] for i, c in enumerate(chains)}
        for step in range(max(c[1] for c in chains)):
            active = [i for i, c in enumerate(chains) if step < c[1]]
            reqs = []
            for i in active:
                plan, _, common = chains[i]
                reqs.append(self.request(plan.steps[step].text, frames[i], common["anchor_frame"],
                                         derive_seed(common["task_seed"], 0, step, 0),
                                         [s.text for s in plan.steps[:step]]))
            for i, seg in zip(active, self.generate(reqs, mode="ode")):
                frames[i] = seg.frames[-1]
        return [Prompt(cond_frame=frames[i], state=self.read_state(frames[i]), **common)
                for i, (_, _, common) in enumerate(chains)]

    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the conditioning frames of dataset and suite prompts (``prompts.size``, else the
        generator's own height/width options, else 64x64)."""
        if self.cfg.prompts.size is not None:
            return tuple(self.cfg.prompts.size)  # type: ignore[return-value]
        opts = self.cfg.diffusers_options if self.cfg.generator == "diffusers" else {}
        if isinstance(self.policy, FixedClipShape):
            side = self.policy.clip_shape()[0]
            return side, side
        if opts.get("height") and opts.get("width"):
            return int(opts["height"]), int(opts["width"])
        return 64, 64

    def _size(self) -> int:
        return self.policy.clip_shape()[0] if isinstance(self.policy, FixedClipShape) else 64

    def request(self, text: str, cond: np.ndarray, anchor: np.ndarray, seed: int, history: list[str] | None = None
                ) -> GenerationRequest:
        """One generation request at the policy's clip length and the conditioning frame's size; its memory context
        (the steps before it) composed as the loop composes it (spiral.types.memory_prompt)."""
        frames = self.policy.clip_shape()[1] if isinstance(self.policy, FixedClipShape) else 9
        return GenerationRequest(prompt=text, context=memory_prompt("", list(history or []), text), cond_frame=cond,
                                 anchor_frame=anchor, seed=seed, num_frames=frames, height=cond.shape[0],
                                 width=cond.shape[1])

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
        requests = [self.request(p.sub_action.text, p.cond_frame, p.anchor_frame, int(seeds[i * G + g]), p.history)
                    for i, p in enumerate(prompts) for g in range(G)]
        traj, logps, segments, batches = [], [], [], []
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        for chunk in self._chunks(requests, G):
            batch = self.policy.prepare(chunk)
            sigmas = self.policy.sigmas()
            mask = flow.sde_mask(len(sigmas) - 1, "sde", cfg.sde_window)
            x, states, lps = flow.sample(lambda x, s, b=batch: self.policy.velocity(x, s, b),
                                         self.policy.initial_noise(batch), sigmas, mode="sde",
                                         noise_level=cfg.noise_level, sde_window=cfg.sde_window,
                                         noise=lambda shape: torch.randn(shape, generator=gen))
            traj.append(torch.stack(states, 1))
            logps.append(lps)
            segments += self.policy.decode(x, batch)
            batches.append(batch)
        rewards, passed, scores, noise = [], [], [], []
        for p in (p for p in prompts for _ in range(G)):
            seg = segments[len(rewards)]
            verdict = self.critic.judge(seg, p.sub_action, self.context(p))
            noise.append(background_noise(seg.frames))
            rewards.append(combine_scores(verdict.scores, cfg.reward_weights))
            passed.append(float(verdict.passed))
            scores.append(verdict.scores)
        r = torch.tensor(rewards, dtype=torch.float32)
        adv = group_advantages(r, G, cfg.global_std, cfg.adv_clip)
        quiet = r.view(-1, G).std(dim=1) < cfg.min_group_std
        adv = adv.view(-1, G).masked_fill(quiet[:, None], 0.0).view(-1)
        return {"requests": requests, "batches": batches, "traj": traj, "logp": logps, "sigmas": sigmas,
                "mask": mask, "segments": segments, "rewards": r, "passed": torch.tensor(passed), "adv": adv,
                "quiet_groups": float(quiet.float().mean()), "scores": scores, "noise": float(np.mean(noise))}

    @staticmethod
    def context(p: Prompt) -> JudgeContext:
        """What the critic knows of a prompt, as the loop's memory gives it: conditioning and anchor frames, state,
        the scene's look."""
        return JudgeContext(goal=p.goal, history=list(p.history), cond_frame=p.cond_frame, anchor_frame=p.anchor_frame,
                            state=p.state, hints={"scene_seed": p.scene_seed} if p.scene_seed is not None else {})

    def artifact(self, frame: np.ndarray, prompt: Prompt, state: Any) -> float:
        """Artifact area of ``frame`` against a render of ``state`` (what it is read as) in the prompt's look."""
        from spiral.world.render import Appearance, artifact_area, render_state

        if prompt.scene_seed is None:
            raise ValueError("the artifact check (gold faithfulness) needs each prompt's scene_seed "
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
        logp = flow.gaussian_logprob(x_next, mean, std)
        policy_loss, ratio = clipped_objective(logp, ro["logp"][chunk][sl, i].to(logp.device), adv, cfg.clip_range)
        out = {"policy": policy_loss, "ratio": ratio.detach(), "logp": logp.detach()}
        if cfg.beta > 0:
            v_ref = self.policy.reference_velocity(x_t, s.expand(per), batch)
            mean_ref, _ = flow.sde_mean_std(x_t, v_ref, s, sn, cfg.noise_level)
            out["kl"] = flow.gaussian_kl(mean, mean_ref, std).mean()
        else:
            out["kl"] = torch.zeros((), device=logp.device)
        out["loss"] = policy_loss + cfg.beta * out["kl"]
        return out

    def anchor_kl(self, ro: dict[str, Any], chunk: int, sl: slice, i: int) -> torch.Tensor:
        """KL to the reference at deterministic step ``i``, measured as if it were an SDE step (differentiable).
        No exploration happens there, so the policy loss never reaches it; the late steps paint the background,
        and shared weights let an update move them (drift that grows with the number of updates). Compared
        unguided: guidance would multiply the differences at the moved object, which GRPO is meant to change.
        With ``anchor_region: background`` only the pixels the text leaves alone count, per pixel as white noise
        measures them, averaged over each rollout's background."""
        x_t = ro["traj"][chunk][sl, i]
        s, sn = ro["sigmas"][i], ro["sigmas"][i + 1]
        batch = self.policy.unguided(self.policy.subset(ro["batches"][chunk], sl))
        v = self.policy.velocity(x_t, s.expand(x_t.shape[0]), batch)
        v_ref = self.policy.reference_velocity(x_t, s.expand(x_t.shape[0]), batch)
        mean, std = flow.sde_mean_std(x_t, v, s, sn, self.cfg.noise_level)
        mean_ref, _ = flow.sde_mean_std(x_t, v_ref, s, sn, self.cfg.noise_level)
        if self.cfg.anchor_region == "frame":
            return flow.gaussian_kl(mean, mean_ref, std).mean()
        background = ~self.policy.action_region(x_t, s.expand(x_t.shape[0]), batch, self.cfg.anchor_tau)
        return flow.gaussian_kl(mean, mean_ref, std, background).mean()

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
                self.ema.update(self.params)
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
                  "background_noise": ro["noise"], "quiet_groups": ro["quiet_groups"], **upd,
                  "seconds_prompts": t1 - t0, "seconds_rollout": t2 - t1, "seconds_update": t3 - t2,
                  "seconds_step": t3 - t0, "prompt_seeds": [p.task_seed for p in prompts][:4],
                  **({"prompt_tasks": [f"{p.task}#{p.index}" for p in prompts][:4]} if self.pool is not None else {})}
        self._advance_stage(mean_r)
        self.last_rollout = ro
        return record

    # --- gold eval ----------------------------------------------------------------------------
    @torch.no_grad()
    def gold_eval(self, n: int | None = None) -> dict[str, float]:
        """Fixed single-step prompts (seed-independent of training), ODE, scored by the critic *and*
        the benchmark's independent judge: a gap between the two is reward hacking. The prompts never
        hold a held-out move; a run that trains on them is also scored on held-out-only prompts
        (``gold_heldout_*``), so learning them and forgetting the rest both show. Tabletop prompts only (the judge
        reads tabletop states): nothing for a dataset or a suite."""
        if not self.cfg.tabletop:
            return {}
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

        judge = self._judge = self._judge or RecognizerJudge()
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
        ck = self.out / CKPT
        meta = {"step": str(self.step_no), "config": self.cfg.identity()}
        save_tensors(ck / "trainable.safetensors", self.params, meta)
        if self.ema is not None:
            ema = self.ema.state_dict()
            for name in ("ema.safetensors", *([f"ema_{self.step_no:05d}.safetensors"] if self.cfg.keep_ema else [])):
                save_tensors(ck / name, ema, meta)
        state = {"step": self.step_no, "stage_idx": self.stage_idx, "stage_start": self.stage_start,
                 "stage_rewards": list(self.stage_rewards), "optimizer": self.opt.state_dict(),
                 **rng_state({"torch_rng": None})}
        save_state(ck / "state.pt", state)
        return ck

    def _load(self) -> None:
        from safetensors.torch import load_file

        ck = self.out / CKPT
        state = load_state(ck / "state.pt")
        weights = load_file(str(ck / "trainable.safetensors"))
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n].to(p.device))
        if self.ema is not None and (ck / "ema.safetensors").is_file():
            self.ema.load_state_dict(load_file(str(ck / "ema.safetensors")))
        self.opt.load_state_dict(state["optimizer"])
        set_rng_state(state, {"torch_rng": None})
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
                self.ema.load_state_dict(self.params)
            self.step_no = int((f.metadata() or {}).get("step", 0))
        return self.step_no

    @contextlib.contextmanager
    def ema_weights(self) -> Any:
        """Swap the EMA weights in (for export and evaluation)."""
        if self.ema is None:
            yield
            return
        with self.ema.swapped_in(self.params):
            yield

    def export(self, path: str | Path) -> Path:
        """The evolved tiny generator (EMA, LoRA merged) as a TinyVideoDiT safetensors file; a diffusers policy's
        LoRA as a folder diffusers' ``load_lora_weights`` reads (``path`` without its .safetensors suffix), which
        ``generator.options.lora`` loads."""
        from spiral.models.tiny_video import save_weights

        if self.cfg.generator != "tiny":
            folder = Path(path).with_suffix("") if Path(path).suffix == ".safetensors" else Path(path)
            with self.ema_weights():
                return self.policy.export_lora(folder)
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
        log = RunLog(self.out) if self.rank == 0 else None
        t_start = time.perf_counter()
        if self.step_no == 0 and cfg.eval_every and log is not None:
            self._log({"step": 0, **self.gold_eval()}, log)
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
                self._log(rec, log)
            if self.world > 1:
                self._rank_log(rec)
            if cfg.ckpt_every and self.step_no % cfg.ckpt_every == 0 and self.rank == 0:
                self.save()
            self.history.append(rec)
        if self.rank == 0:
            self.save()
        if log is not None:
            log.close()
        return self.history

    def _log(self, rec: dict, log: RunLog) -> None:
        """Every record to log.jsonl and TensorBoard (rewards tagged by stage); a progress line every log_every
        steps, and at every gold evaluation."""
        log.write(rec)
        if self.progress and (rec["step"] % self.cfg.log_every == 0 or any(k.startswith("gold_") for k in rec)):
            keys = ("step", "stage", "reward_mean", "critic_pass", "kl", "clipfrac", "gold_judge_success",
                    "gold_judge_faithful", "gold_heldout_judge_success", "gold_heldout_judge_faithful",
                    "seconds_rollout", "seconds_update")
            print("  ".join(f"{k}={rec[k]:.4g}" if isinstance(rec.get(k), float) else f"{k}={rec[k]}"
                            for k in keys if k in rec), flush=True)
        log.scalars({f"{rec.get('stage', 'eval')}/{k}" if k.startswith("reward") else f"grpo/{k}": v
                     for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}, rec["step"])

    def _rank_log(self, rec: dict) -> None:
        chk = float(sum(p.detach().double().sum() for p in self.params.values()))
        with open(self.out / f"rank{self.rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": rec["step"], "prompt_seeds": rec["prompt_seeds"], "param_sum": chk,
                                **({"prompt_tasks": rec["prompt_tasks"]} if "prompt_tasks" in rec else {})}) + "\n")

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


def _create(kind: str, cfg: GRPOConfig) -> Any:
    """The planner or the critic the config names (a registry name, or {name, options})."""
    from spiral import registry

    name, options = cfg.backend(kind)  # type: ignore[arg-type]
    return registry.create(kind, name, **options)


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
    end_distributed()
    return out
