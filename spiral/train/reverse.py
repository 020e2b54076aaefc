"""Hindsight by time reversal: clips of the moves the generator cannot do, made by playing a move it can do backwards.

GRPO can only prefer rollouts that succeed, and for the held-out (block, destination) moves the base tiny generator
draws none (docs/self_evolution.md, Findings). But a pick-and-place played backwards is a pick-and-place: the
gripper comes down, grips, lifts, carries, lowers and lets go. So for a PlanAgent sub-action move(b, d) on a sampled
scene where b stands at x, the generator renders the move it was trained on, move(b, x), from a picture of the scene
after the sub-action (b at d); played backwards, that clip shows move(b, d) and ends on the picture. The CriticAgent
judges each reversed clip as a segment of the sub-action (its start read from the clip, the scene's look known), and
the accepted clips fine-tune the generator with its own flow-matching loss (``spiral.train.generator.flow_loss``),
beside its supervised clips replayed so that the rest is not forgotten. The motion of a held-out move never comes
from the renderer: it is the generator's own, reversed. GRPO (``spiral.train.grpo``) then starts from the result,
and its groups for these moves can hold successes to prefer.

    spiral train reverse --config configs/train/reverse-tiny.yaml

Configured like every trainer (:class:`ReverseConfig` from YAML, ``--set key=value``); EMA and the run log come
from ``spiral.train.common``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from spiral.train.common import EMA, RunLog
from spiral.types import JudgeContext, Segment, SubAction
from spiral.world import domain

EXPORT_NAME = "tiny_reverse.safetensors"


class ReverseConfig(BaseModel):
    """One reversal run; saved as ``config.json`` in the run folder. Defaults are ours (the shipped tiny-evolved's
    recipe, ``configs/train/reverse-tiny.yaml``) unless a field names another source."""

    model_config = ConfigDict(extra="forbid")
    out: str = Field("runs/reverse", description="run folder: config.json, log.jsonl, summary.json, "
                                                 "tiny_reverse.safetensors")
    seed: int = Field(0, description="seed of the prompts, the generation seeds and the fine-tune")
    weights: str | None = Field(None, description="tiny weights to start from (default: the shipped "
                                                  "tiny.safetensors)")
    prompts: int = Field(384, ge=1, description="PlanAgent sub-actions to reverse, drawn like GRPO's single-step "
                                                "prompts")
    moves: Literal["heldout", "all"] = Field("heldout", description="heldout: only the held-out moves "
                                                                    "(spiral.world.splits.HELDOUT_MOVES); all: every "
                                                                    "move")
    replay: str = Field("world:1500:1", description="the base model's supervised clips, replayed beside the reversed "
                                                    "ones (world:10000:1 trained the shipped tiny; a prefix of it)")
    reverse_share: float = Field(0.25, gt=0, le=1, description="share of each batch that is reversed clips; the "
                                                               "rest is replay")
    steps: int = Field(400, ge=1, description="fine-tuning steps")
    batch: int = Field(32, ge=1, description="clips per step")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.01, description="AdamW weight decay, as in pretraining")
    grad_clip: float = Field(1.0, description="gradient norm clip (0: none)")
    text_drop: float = Field(0.1, ge=0, lt=1, description="share of clips with the null text, as in pretraining: "
                                                          "guidance needs it to stay trained")
    ema: float = Field(0.99, ge=0, lt=1, description="EMA decay per step; the EMA is what is exported")
    gen_batch: int = Field(32, ge=1, description="clips generated per forward while collecting")
    log_every: int = Field(20, description="a log.jsonl record every N steps")
    device: str = Field("cpu", description="cpu or cuda")


def load_config(path: str | Path, overrides: list[str] | None = None, **fields: Any) -> ReverseConfig:
    """A reversal config from YAML, then ``key=value`` overrides, then keyword ``fields``; unknown keys are errors
    that name the key."""
    from spiral.config import load_yaml_model

    return load_yaml_model(ReverseConfig, path, overrides, what="reversal config", **fields)


def inverse_move(sub: SubAction, state: domain.State) -> domain.Action | None:
    """The move that undoes ``sub`` from the state after it (the block back where it stands in ``state``), or None:
    not a move, not applicable there, or itself a held-out move (the generator cannot draw it either)."""
    from spiral.world.splits import is_heldout

    if sub.verb != "move":
        return None
    block, dest = sub.objects
    here = state.where(block)
    try:
        after = domain.apply(state, domain.Action("move", (block, dest)))
    except domain.DomainError:
        return None
    back = domain.Action("move", (block, here))
    if here == dest or is_heldout("move", back.args) or not domain.is_applicable(after, back):
        return None
    return back


def collect(trainer: Any, cfg: ReverseConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reversed clips the critic accepts: a list of {clip (T, H, W, 3) uint8, anchor, action}, and counts per move.

    ``trainer`` is a :class:`spiral.train.grpo.GRPOTrainer` on the start weights: its PlanAgent proposes the
    sub-actions, its policy generates (ODE, the weights' own sampler) and its critic judges."""
    from spiral.train.grpo import Stage
    from spiral.world.render import Appearance, render_state

    stage = Stage(name="single", kind="single", min_steps=1, max_steps=8)
    rng = np.random.default_rng([cfg.seed, 11])
    prompts = trainer.sample_prompts(cfg.prompts, stage, rng, heldout="only" if cfg.moves == "heldout" else "include")
    jobs = []
    for p in prompts:
        start = domain.State.from_dict(p.state)
        back = inverse_move(p.sub_action, start)
        if back is None:
            continue
        after = domain.apply(start, domain.Action("move", tuple(p.sub_action.objects)))
        picture = render_state(after, appearance=Appearance.sample(p.scene_seed), size=p.cond_frame.shape[0])
        jobs.append((p, back, picture))
    counts: dict[str, dict[str, int]] = {}
    kept: list[dict[str, Any]] = []
    seeds = rng.integers(2**62, size=len(jobs))
    for lo in range(0, len(jobs), cfg.gen_batch):
        chunk = jobs[lo:lo + cfg.gen_batch]
        reqs = [trainer.request(back.text(), pic, p.anchor_frame, int(seeds[lo + i]))
                for i, (p, back, pic) in enumerate(chunk)]
        for (p, _, _), seg in zip(chunk, trainer.generate(reqs)):
            frames = np.ascontiguousarray(seg.frames[::-1])
            start = trainer.critic.observe(frames[0])
            verdict = trainer.critic.judge(Segment(frames=frames, fps=seg.fps), p.sub_action,
                                           JudgeContext(cond_frame=frames[0], anchor_frame=p.anchor_frame,
                                                        state=start.to_dict(), hints={"scene_seed": p.scene_seed}))
            key = f"{p.sub_action.objects[0]}->{p.sub_action.objects[1]}"
            c = counts.setdefault(key, {"reversed": 0, "accepted": 0})
            c["reversed"] += 1
            if verdict.passed:
                c["accepted"] += 1
                kept.append({"clip": frames, "anchor": p.anchor_frame,
                             "action": (p.sub_action.verb, tuple(p.sub_action.objects))})
    return kept, {"prompts": len(prompts), "reversible": len(jobs), "accepted": len(kept), "per_move": counts}


class Finetune:
    """Flow-matching fine-tuning on reversed clips mixed with replayed supervised clips; EMA weights are the result."""

    def __init__(self, cfg: ReverseConfig, model: torch.nn.Module, text_encoder: Any, reversed_clips: list[dict],
                 replay: Any):
        """``replay``: a :class:`spiral.train.generator.ClipBank` of the base model's supervised clips."""
        from spiral.world.splits import paraphrases

        if not reversed_clips:
            raise ValueError("no reversed clip was accepted by the critic: nothing to fine-tune on (more prompts, "
                             "or check that the start weights draw the inverse moves)")
        self.cfg, self.model, self.replay = cfg, model, replay
        self.device = torch.device(cfg.device)
        self.rev_clips = torch.stack([torch.as_tensor(r["clip"]) for r in reversed_clips])
        self.rev_anchors = torch.stack([torch.as_tensor(np.ascontiguousarray(r["anchor"])) for r in reversed_clips])
        rev_words = [paraphrases(v, o, "train") for v, o in (r["action"] for r in reversed_clips)]
        texts = list(dict.fromkeys([t for w in rev_words + replay.wordings for t in w]))
        index = {t: i for i, t in enumerate(texts)}
        self.table = text_encoder.encode(texts).to(self.device)
        self.rev_words = [[index[t] for t in w] for w in rev_words]
        self.replay_words = [[index[t] for t in w] for w in replay.wordings]
        self.ema = EMA(dict(model.named_parameters()), cfg.ema)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def _pick(self, clips: torch.Tensor, anchors: torch.Tensor, anchor_of: torch.Tensor | None,
              words: list[list[int]], n: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        idx = torch.randint(len(clips), (n,), generator=self.gen)
        a = anchors[anchor_of[idx]] if anchor_of is not None else anchors[idx]
        pick = torch.rand(n, generator=self.gen)
        text = [words[i][int(u * len(words[i]))] for i, u in zip(idx.tolist(), pick.tolist())]
        return clips[idx], a, text

    def step(self) -> dict[str, float]:
        from spiral.train.generator import flow_loss, sample_sigmas

        cfg, g, m = self.cfg, self.gen, self.model
        n_rev = max(1, round(cfg.batch * cfg.reverse_share))
        rc, ra, rt = self._pick(self.rev_clips, self.rev_anchors, None, self.rev_words, n_rev)
        parts = [(rc, ra, rt)]
        if cfg.batch > n_rev:
            b = self.replay
            parts.append(self._pick(b.clips, b.anchors, b.anchor_of, self.replay_words, cfg.batch - n_rev))
        clips = torch.cat([p[0] for p in parts]).to(self.device)
        anchors = torch.cat([p[1] for p in parts]).to(self.device)
        text = self.table[torch.tensor([t for p in parts for t in p[2]])]
        drop = (torch.rand(len(clips), generator=g) < cfg.text_drop).to(self.device)
        c = m.config
        sigma = sample_sigmas(len(clips), c.shift, g).to(self.device)
        noise = torch.randn(len(clips), c.num_frames, 3, c.resolution, c.resolution, generator=g).to(self.device)
        m.train()
        emb = m.embed_text(text, len(clips), drop)
        loss_rev = flow_loss(m, clips[:n_rev], anchors[:n_rev], emb[:n_rev], sigma[:n_rev], noise[:n_rev])
        loss = loss_rev * n_rev / len(clips)
        loss_rep = torch.zeros(())
        if len(clips) > n_rev:
            loss_rep = flow_loss(m, clips[n_rev:], anchors[n_rev:], emb[n_rev:], sigma[n_rev:], noise[n_rev:])
            loss = loss + loss_rep * (len(clips) - n_rev) / len(clips)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip or float("inf")))
        self.opt.step()
        self.ema.update(dict(m.named_parameters()))
        return {"loss": loss.item(), "loss_reversed": loss_rev.item(), "loss_replay": loss_rep.item(),
                "grad_norm": gn}

    def ema_state(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict()


def run_reverse(cfg: ReverseConfig, progress: bool = True) -> dict[str, Any]:
    """Collect reversed clips, fine-tune, export ``out/tiny_reverse.safetensors`` (the start weights' sampler kept)."""
    from spiral.atomic import write_text
    from spiral.generators.tiny import DEFAULT_WEIGHTS
    from spiral.models.tiny_video import load_weights, save_weights
    from spiral.train.generator import ClipBank
    from spiral.train.grpo import GRPOConfig, GRPOTrainer
    from spiral.train.world_clips import WORLD_PREFIX, parse_world_spec, render_world_clips

    if not cfg.replay.startswith(WORLD_PREFIX):
        raise ValueError(f"replay: {cfg.replay!r} is not a world:EPISODES[:SEED] spec (e.g. world:1500:1, a prefix "
                         f"of the data the start weights were trained on)")
    episodes, data_seed = parse_world_spec(cfg.replay)
    out = Path(cfg.out)
    if (out / EXPORT_NAME).exists():
        raise FileExistsError(f"{out} already holds a reversal run ({EXPORT_NAME}); choose another out folder")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.json", cfg.model_dump_json(indent=2))
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    trainer = GRPOTrainer(GRPOConfig(out=str(out / "collect"), seed=cfg.seed, weights=cfg.weights, device=cfg.device,
                                     eval_every=0, sample_every=0), progress=False)
    kept, stats = collect(trainer, cfg)
    t1 = time.perf_counter()
    if progress:
        print(f"reversed {stats['reversible']} sub-actions, the critic accepted {stats['accepted']} "
              f"({t1 - t0:.0f} s): {stats['per_move']}", flush=True)
    model = trainer.policy.model
    mc = model.config
    train, _ = render_world_clips(episodes, data_seed, mc.num_frames + 1, mc.resolution, progress=False)
    replay = ClipBank.from_world(train, mc.num_frames, mc.resolution)
    ft = Finetune(cfg, model, trainer.policy.gen.text_encoder, kept, replay)
    (out / "log.jsonl").unlink(missing_ok=True)
    log = RunLog(out)
    for step in range(1, cfg.steps + 1):
        rec = ft.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {"step": step, **rec, "seconds": round(time.perf_counter() - t1, 1)}
            log.write(rec)
            log.scalars({f"reverse/{k}": v for k, v in rec.items() if k != "step"}, step)
            if progress:
                print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
                      flush=True)
    log.close()
    model.load_state_dict(ft.ema_state())
    start = Path(cfg.weights) if cfg.weights else DEFAULT_WEIGHTS
    _, meta = load_weights(start)
    prov = {"reverse_from": start.name, "reverse_steps": str(cfg.steps), "reverse_clips": str(len(kept))}
    if "sampler" in meta:  # the start weights' default sampler is what the clips were generated with
        prov["sampler"] = meta["sampler"]
    path = save_weights(model, out / EXPORT_NAME, extra_meta=prov)
    summary = {**stats, "replay_clips": len(replay), "steps": cfg.steps, "seconds_collect": round(t1 - t0, 1),
               "seconds_finetune": round(time.perf_counter() - t1, 1), "weights": str(path)}
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
