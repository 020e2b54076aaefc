"""GRPO self-evolution (``spiral.train.grpo`` + ``spiral.train.policy``): the on-policy identities, advantages,
KL to the reference, which weights train, exact resume, bad input, checkpoints, torchrun (gloo), tiny Wan + LoRA.

Policies are tiny random-weight TinyVideoDiTs built in code (64x64: the real tabletop critic reads 64x64
frames) and a tiny random Wan 2.1 I2V pipeline; the critic and planner are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from spiral import flow, registry
from spiral.models.text import get_text_encoder
from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT
from spiral.train.grpo import GRPOConfig, GRPOTrainer, Stage, background_noise, group_advantages
from spiral.train.policy import TinyPolicy
from spiral.types import combine_scores

# 64x64 (the critic's frame size), 16x16 patches, one tubelet of 4 new frames: 16 tokens per forward
TINY = dict(resolution=64, num_frames=4, patch=16, tubelet=4, dim=32, depth=1, heads=1, text_tokens=2,
            text_encoder="hash")
SINGLE = [Stage(name="single", kind="single", min_steps=1, max_steps=3)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def critic():
    """The real tabletop critic, loaded once for the module."""
    return registry.create("critic", "tabletop")


def tiny_model(seed: int = 0) -> TinyVideoDiT:
    """Every weight random: a freshly initialised TinyVideoDiT has zero gates and head, so nothing would train."""
    torch.manual_seed(seed)
    model = TinyVideoDiT(TinyVideoConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def tiny_policy(seed: int = 0, lora_rank: int = 0, cls: type = TinyPolicy, **kw) -> TinyPolicy:
    return cls(model=tiny_model(seed), text_encoder=get_text_encoder("hash"), steps=4, lora_rank=lora_rank, **kw)


def config(out, **kw) -> GRPOConfig:
    base = dict(out=str(out), steps=1, prompts_per_step=2, group_size=3, sample_steps=4, eval_every=0,
                sample_every=0, stages=SINGLE)
    return GRPOConfig(**{**base, **kw})


def trainer(out, critic, seed: int = 0, lora_rank: int = 0, resume: bool = False, policy=None, **kw) -> GRPOTrainer:
    cfg = config(out, lora_rank=lora_rank, **kw)
    policy = policy or tiny_policy(seed, lora_rank)
    return GRPOTrainer(cfg, resume=resume, policy=policy, critic=critic, progress=False)


def rollout(tr: GRPOTrainer) -> dict:
    rng = tr._rng()
    return tr.rollout(tr.sample_prompts(tr.cfg.prompts_per_step, tr.stage, rng), rng)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ------------------------------------------------------------------------------------------ flow identities


def test_sde_at_noise_level_zero_is_the_ode_on_the_policy_velocities():
    """(tests/test_flow.py checks single steps with float σ; here the whole schedule with per-sample σ tensors.)"""
    pol = tiny_policy()
    batch = pol.prepare([_request(s) for s in range(3)])
    x_T, sigmas = pol.initial_noise(batch), pol.sigmas()
    with torch.no_grad():
        x_ode, x_sde = x_T, x_T
        for i in range(len(sigmas) - 1):
            s, sn = sigmas[i].expand(3), sigmas[i + 1].expand(3)
            x_ode = flow.euler_step(x_ode, pol.velocity(x_ode, s, batch), s, sn)
            x_sde, lp = flow.sde_step(x_sde, pol.velocity(x_sde, s, batch), s, sn, noise_level=0.0,
                                      generator=torch.Generator().manual_seed(i))
            assert torch.equal(x_sde, x_ode) and lp.dtype == torch.float32 and not lp.any()
    assert not torch.equal(x_ode, x_T)


def _request(seed: int):
    from spiral.types import GenerationRequest

    frame = np.random.default_rng(seed % 2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return GenerationRequest(prompt="move the red block into the box", cond_frame=frame, anchor_frame=frame,
                             seed=seed, num_frames=5, height=64, width=64)


# --------------------------------------------------------------------------------------------- on-policy


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_first_update_is_on_policy_ratio_exactly_one(tmp_path, critic, lora_rank):
    tr = trainer(tmp_path / "run", critic, lora_rank=lora_rank, lr=1e-2)
    ro = rollout(tr)
    n = ro["traj"][0].shape[0]
    assert n == 6 and ro["traj"][0].shape[1] == 5  # 2 prompts x G=3 in one chunk, 4 steps + x_T
    # every recorded transition replayed with the unchanged weights: the whole chunk and the update's minibatches
    for sl in (slice(None), slice(0, n // 2), slice(n // 2, n)):
        for i in range(4):
            terms = tr.loss_terms(ro, 0, sl, i)
            assert torch.equal(terms["ratio"], torch.ones_like(terms["ratio"])), (sl, i, terms["ratio"])
            assert torch.equal(terms["logp"], ro["logp"][0][sl, i])
            assert torch.isfinite(terms["loss"]) and terms["loss"].requires_grad
    upd = tr.update(ro, np.random.default_rng(0))
    assert upd["first_ratio_max_dev"] == 0.0 and upd["skipped_updates"] == 0 and upd["optimizer_steps"] == 2
    # the replay is sensitive: after the update the same transitions no longer have ratio 1
    after = torch.cat([tr.loss_terms(ro, 0, slice(None), i)["ratio"] for i in range(4)])
    assert not torch.equal(after, torch.ones_like(after))


@pytest.mark.parametrize("lora_rank,window", [(0, None), (4, (1, 3))])
def test_rollout_is_the_flow_sde_with_noise_from_a_cpu_generator(tmp_path, critic, lora_rank, window):
    """The rollout's samples and log-probs are the Flow-GRPO SDE chain written out step by step from the flow
    primitives: velocity at (x, σ), the SDE mean and std, x' = mean + std·ε with ε drawn in order from one CPU
    generator seeded from the step's random stream, log N(x'; mean, std²); Euler outside the SDE window."""
    tr = trainer(tmp_path / "run", critic, lora_rank=lora_rank, sde_window=window)
    ro = rollout(tr)
    rng = tr._rng()  # the same stream again: prompts, request seeds, then the noise generator's seed
    prompts = tr.sample_prompts(tr.cfg.prompts_per_step, tr.stage, rng)
    G = tr.cfg.group_size
    seeds = rng.integers(2**62, size=len(prompts) * G)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    reqs = [tr.request(p.sub_action.text, p.cond_frame, p.anchor_frame, int(seeds[i * G + g]))
            for i, p in enumerate(prompts) for g in range(G)]
    batch = tr.policy.prepare(reqs)
    sigmas = tr.policy.sigmas()
    x = tr.policy.initial_noise(batch)
    states, lps = [x], []
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            s, sn = sigmas[i], sigmas[i + 1]
            v = tr.policy.velocity(x, s.expand(x.shape[0]), batch)
            if window is None or window[0] <= i < window[1]:
                mean, std = flow.sde_mean_std(x, v, s, sn, tr.cfg.noise_level)
                x = mean + std * torch.randn(x.shape, generator=gen)
                lps.append(flow.gaussian_logprob(x, mean, std))
            else:
                x = flow.euler_step(x, v, s, sn)
                lps.append(torch.zeros(x.shape[0]))
            states.append(x)
    assert len(ro["traj"]) == 1
    assert torch.equal(ro["traj"][0], torch.stack(states, 1)) and torch.equal(ro["logp"][0], torch.stack(lps, 1))


class CastPolicy(TinyPolicy):
    """The tiny policy with its flow state (noise, trajectory, velocities) in another dtype."""

    def __init__(self, dtype: torch.dtype, **kw):
        super().__init__(**kw)
        self.dtype = dtype

    def initial_noise(self, batch):
        return super().initial_noise(batch).to(self.dtype)

    def velocity(self, x, sigma, batch):
        return super().velocity(x.float(), sigma.float(), batch).to(x.dtype)

    def reference_velocity(self, x, sigma, batch):
        return super().reference_velocity(x.float(), sigma.float(), batch).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_logprobs_are_float32_whatever_the_state_dtype(tmp_path, critic, dtype):
    pol = tiny_policy(cls=CastPolicy, dtype=dtype) if dtype != torch.float32 else tiny_policy()
    tr = trainer(tmp_path / "run", critic, policy=pol, sde_window=(1, 4))  # step 0 deterministic (logp 0)
    ro = rollout(tr)
    assert ro["traj"][0].dtype == dtype
    lp = ro["logp"][0]
    assert lp.dtype == torch.float32 and lp.shape == (6, 4) and not lp[:, 0].any() and torch.isfinite(lp).all()
    assert bool((lp[:, 1:] != 0).all())
    terms = tr.loss_terms(ro, 0, slice(None), 2)
    assert terms["logp"].dtype == torch.float32 and terms["loss"].dtype == torch.float32
    assert torch.equal(terms["ratio"], torch.ones_like(terms["ratio"]))


# -------------------------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("global_std", [False, True])
def test_advantages_have_zero_mean_per_group(global_std):
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5 * 4, generator=g) * torch.tensor([1.0, 0.1, 3.0, 0.5, 2.0]).repeat_interleave(4)
    adv = group_advantages(r, 4, global_std=global_std, clip=100.0)
    assert adv.dtype == torch.float32 and adv.shape == (20,)
    groups, a = r.view(5, 4), adv.view(5, 4)
    torch.testing.assert_close(a.mean(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    std = groups.std() if global_std else groups.std(dim=1, keepdim=True)
    torch.testing.assert_close(a, (groups - groups.mean(dim=1, keepdim=True)) / (std + 1e-4))
    if not global_std:  # each group scaled by its own std (unbiased): unit std up to the 1e-4
        torch.testing.assert_close(a.std(dim=1), torch.ones(5), atol=1e-2, rtol=0)
    # a group whose rollouts all score the same gets no advantage at all
    flat = group_advantages(torch.tensor([0.3, 0.3, 0.3, 0.1, 0.2, 0.9]), 3, global_std=global_std)
    assert torch.equal(flat[:3], torch.zeros(3)) and bool((flat[3:] != 0).all())


@pytest.mark.parametrize("global_std", [False, True])
def test_advantages_are_clamped(global_std):
    r = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    adv = group_advantages(r, 8, global_std=global_std, clip=0.75)
    assert float(adv.abs().max()) == pytest.approx(0.75) and float(adv.max()) == pytest.approx(0.75)
    assert float(adv.min()) == pytest.approx(-0.75)
    assert bool((adv.abs() <= 0.75).all())
    unclamped = group_advantages(r, 8, global_std=global_std, clip=1e9)
    assert float(unclamped.abs().max()) > 0.75
    kept = unclamped.abs() < 0.75
    assert torch.equal(adv[kept], unclamped[kept])


def test_advantages_hand_worked():
    """Two groups of 3 by hand: rewards (1, 2, 3) have mean 2 and unbiased std 1, so advantages (-1, 0, 1);
    (0, 0, 6) has mean 2 and std √12, so (-2, -2, 4)/√12. The global std is the std of all six rewards."""
    r = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    s12 = 12 ** 0.5
    want = torch.tensor([-1 / 1.0001, 0.0, 1 / 1.0001, -2 / (s12 + 1e-4), -2 / (s12 + 1e-4), 4 / (s12 + 1e-4)])
    torch.testing.assert_close(group_advantages(r, 3, clip=10.0), want)
    g = float(np.std([1, 2, 3, 0, 0, 6], ddof=1))
    torch.testing.assert_close(group_advantages(r, 3, global_std=True, clip=10.0),
                               torch.tensor([-1.0, 0.0, 1.0, -2.0, -2.0, 4.0]) / (g + 1e-4))
    # a higher reward in a group always gets the higher advantage (the direction GRPO pushes in)
    assert group_advantages(torch.tensor([0.2, 0.9]), 2)[1] > 0 > group_advantages(torch.tensor([0.2, 0.9]), 2)[0]
    # the clamp bounds both sides at exactly ±clip, 5 by default: one success among 50 failures is ~6.9 std out
    torch.testing.assert_close(group_advantages(r, 3, clip=0.5), want.clamp(-0.5, 0.5))
    lone = group_advantages(torch.tensor([0.0] * 49 + [1.0]), 50, clip=100.0)
    assert float(lone[-1]) > 6 and float(group_advantages(torch.tensor([0.0] * 49 + [1.0]), 50)[-1]) == 5.0


def test_clipped_objective_hand_worked():
    """PPO's clipped surrogate L = mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))) on hand-picked ratios, ε = 0.2.

    Row by row (ρ, A → the term and whether it is the clipped one):
      ρ=1.1 inside,  A=+1 → −1.1 (unclipped, gradient −A·ρ)
      ρ=1.5 above,   A=+2 → max(−3.0, −2.4) = −2.4 (clipped: no gain from pushing a good sample further)
      ρ=0.5 below,   A=+1 → max(−0.5, −0.8) = −0.5 (unclipped: the pessimistic bound keeps the gradient)
      ρ=1.5 above,   A=−1 → max(1.5, 1.2) = 1.5 (unclipped)
      ρ=0.5 below,   A=−2 → max(1.0, 1.6) = 1.6 (clipped)
      ρ=0.9 inside,  A=−1 → 0.9 (unclipped)
    Minimising L raises the log-probability of positive-advantage samples and lowers negative ones: the
    gradient w.r.t. log π_new is −A·ρ/N on the unclipped rows and 0 on the clipped ones."""
    from spiral.train.grpo import clipped_objective

    ratio = torch.tensor([1.1, 1.5, 0.5, 1.5, 0.5, 0.9], dtype=torch.float64)
    adv = torch.tensor([1.0, 2.0, 1.0, -1.0, -2.0, -1.0], dtype=torch.float64)
    logp_old = torch.tensor([-3.0, -1.0, -2.0, -0.5, -4.0, -1.5], dtype=torch.float64)
    logp_new = (logp_old + torch.log(ratio)).requires_grad_(True)
    loss, got_ratio = clipped_objective(logp_new, logp_old, adv, 0.2)
    torch.testing.assert_close(got_ratio.detach(), ratio)
    terms = torch.tensor([-1.1, -2.4, -0.5, 1.5, 1.6, 0.9], dtype=torch.float64)
    assert float(loss.detach()) == pytest.approx(float(terms.mean()), abs=1e-12)
    (grad,) = torch.autograd.grad(loss, logp_new)
    clipped = torch.tensor([False, True, False, False, True, False])
    want = torch.where(clipped, torch.zeros_like(adv), -adv * ratio / 6)
    torch.testing.assert_close(grad, want)
    assert bool((grad[~clipped] * adv[~clipped] < 0).all())  # descent raises A > 0, lowers A < 0
    # on-policy (ρ = 1): the loss is −mean(A) and the gradient is −A/N whatever ε is
    for eps in (1e-4, 0.2, 10.0):
        lp = logp_old.clone().requires_grad_(True)
        loss1, r1 = clipped_objective(lp, logp_old, adv, eps)
        assert torch.equal(r1.detach(), torch.ones_like(adv)) and float(loss1.detach()) == pytest.approx(float(-adv.mean()))
        torch.testing.assert_close(torch.autograd.grad(loss1, lp)[0], -adv / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_update_raises_the_log_prob_of_better_rollouts(tmp_path, critic, seed):
    """One optimizer step on a real rollout (tiny policy, real critic rewards): the log-probability of each
    recorded trajectory moves with its advantage. First order, Σ A·Δlog π > 0 for any descent step on the
    surrogate; per rollout it holds for the best and the worst of every seed and for ≥ 90 % of the rollouts
    with |A| > 0.3 (measured: all of them at lr 1e-3). β = 0 and one on-policy minibatch isolate the
    policy-gradient term; a sign error anywhere between reward and update reverses all three."""
    tr = trainer(tmp_path / "run", critic, seed=seed, lr=1e-3, beta=0.0, weight_decay=0.0, minibatches=1, ema=0.0)
    ro = rollout(tr)
    adv = ro["adv"]
    assert float(adv.max()) > 0.3 and float(adv.min()) < -0.3  # the critic's rewards differ within the groups
    upd = tr.update(ro, np.random.default_rng(0))
    assert upd["optimizer_steps"] == 1 and upd["trained_timesteps"] == 4
    with torch.no_grad():
        after = torch.stack([tr.loss_terms(ro, 0, slice(None), i)["logp"] for i in range(4)], 1)
    delta = (after - ro["logp"][0]).sum(1)  # change of each trajectory's log-probability
    assert float((adv * delta).sum()) > 0, (adv, delta)
    assert float(delta[adv.argmax()]) > 0 > float(delta[adv.argmin()]), (adv, delta)
    big = adv.abs() > 0.3
    agree = float(((delta > 0) == (adv > 0))[big].float().mean())
    assert agree >= 0.9, (adv, delta)


def test_rollout_advantages_come_from_its_rewards(tmp_path, critic):
    tr = trainer(tmp_path / "run", critic, adv_clip=0.9, global_std=False)
    ro = rollout(tr)
    r = ro["rewards"]
    assert r.dtype == torch.float32 and r.shape == (6,) and bool((r.view(2, 3).std(dim=1) > 0).all())
    assert torch.equal(ro["adv"], group_advantages(r, 3, False, 0.9))
    assert bool((ro["adv"].abs() <= 0.9).all())
    # the reward is the weighted mean of the critic's scores
    w = tr.cfg.reward_weights
    want = [sum(w[k] * s[k] for k in w) / sum(w.values()) for s in ro["scores"]]
    torch.testing.assert_close(r, torch.tensor(want, dtype=torch.float32))


def test_quiet_groups_get_no_advantage_and_an_all_quiet_step_makes_no_update(tmp_path, critic):
    """min_group_std filters groups whose rewards hardly differ (normalisation would blow their noise up)."""
    tr = trainer(tmp_path / "a", critic, global_std=False, lr=1e-2)
    ro = rollout(tr)
    stds = ro["rewards"].view(2, 3).std(dim=1)
    assert ro["quiet_groups"] == 0.0 and bool(ro["adv"].ne(0).any())
    # a threshold between the two groups' stds silences exactly the quieter group
    mid = float(stds.mean())
    tr.cfg = tr.cfg.model_copy(update={"min_group_std": mid})
    half = rollout(tr)
    assert torch.equal(half["rewards"], ro["rewards"])
    quiet = half["rewards"].view(2, 3).std(dim=1) < mid
    assert half["quiet_groups"] == 0.5
    assert bool((half["adv"].view(2, 3)[quiet] == 0).all()) and bool(half["adv"].view(2, 3)[~quiet].ne(0).any())
    # above every group's std: no advantage anywhere, and update leaves the weights alone
    tr.cfg = tr.cfg.model_copy(update={"min_group_std": float(stds.max()) + 1.0})
    silent = rollout(tr)
    assert silent["quiet_groups"] == 1.0 and not bool(silent["adv"].ne(0).any())
    before = snapshot(tr.policy.model)
    assert tr.update(silent, np.random.default_rng(0)) == {"optimizer_steps": 0, "skipped_no_signal": 1}
    assert all(torch.equal(p, before[n]) for n, p in tr.policy.model.named_parameters())
    out = tr.update(half, np.random.default_rng(0))
    assert out["optimizer_steps"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in tr.policy.model.named_parameters())


def test_background_noise_counts_the_untouched_pixels_not_the_moved_object():
    """The median pixel's change from frame 0: an object moving across 10 % of the frame adds nothing, noise of
    3 grey levels everywhere counts 3, a noisy frame counts in proportion to its share of the frames."""
    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(40, 200, (1, 64, 64, 3), dtype=np.uint8), 5, axis=0)
    moved = still.copy()
    for t in range(1, 5):
        moved[t, 20:40, 10 * t:10 * t + 20] = 255
    assert background_noise(still) == 0.0 and background_noise(moved) == 0.0
    noisy = moved.astype(np.int16)
    noisy[1:, ..., 0] += 3
    assert background_noise(noisy.clip(0, 255).astype(np.uint8)) == 3.0
    one = still.astype(np.int16)
    one[4] += 2
    assert background_noise(one.astype(np.uint8)) == 0.5


def test_artifact_area_is_measured_against_a_render_in_the_prompts_own_look(tmp_path, critic):
    """The artifact area behind gold faithfulness: a render of what the critic reads, in the prompt's scene look."""
    from spiral.world.domain import State
    from spiral.world.render import Appearance, render_state

    tr = trainer(tmp_path / "b", critic)
    prompts = tr.sample_prompts(tr.cfg.prompts_per_step, tr.stage, tr._rng())
    p = prompts[0]
    state = State.from_dict(p.state)
    clean = render_state(state, appearance=Appearance.sample(p.scene_seed), size=64)
    assert tr.artifact(clean, p, state) == 0.0
    other_look = render_state(state, appearance=Appearance.sample(p.scene_seed + 1), size=64)
    assert tr.artifact(other_look, p, state) > 0  # the scene's own look, not any look
    with pytest.raises(ValueError, match="scene_seed"):
        tr.artifact(clean, p.model_copy(update={"scene_seed": None}), state)


def test_faithful_gold_success_excludes_a_noise_patch_the_judge_reads_as_the_block(tmp_path, critic):
    from spiral.bench.judge import RecognizerJudge
    from spiral.types import Segment
    from spiral.world import domain
    from spiral.world.render import Appearance, render_state

    tr = trainer(tmp_path / "g", critic)
    tr._judge = RecognizerJudge()
    p = tr.sample_prompts(1, tr.stage, tr._rng())[0]
    after = domain.apply(domain.State.from_dict(p.state), domain.Action(p.sub_action.verb, tuple(p.sub_action.objects)))
    done = render_state(after, appearance=Appearance.sample(p.scene_seed), size=64)
    patched = done.copy()
    patched[40:50, 20:30] = np.random.default_rng(0).integers(0, 256, (10, 10, 3))
    segs = [Segment(frames=np.stack([p.cond_frame, f]), fps=8.0) for f in (done, patched)]
    assert tr.faithful([p, p], segs, [1.0, 1.0]) == [1.0, 0.0]
    assert tr.faithful([p], segs[:1], [0.0]) == [0.0]  # a judged failure stays one
    gold = tr.gold_eval(2)
    assert 0 <= gold["gold_judge_faithful"] <= gold["gold_judge_success"]


def test_combine_scores_weighs_only_the_named_scores():
    """The GRPO reward's combination: a score left out of the weights counts for nothing (weight 0), not as
    weight 1."""
    assert combine_scores({"action": 0.2, "preservation": 0.4, "continuity": 0.9, "consistency": 0.9},
                          {"action": 1.0, "preservation": 3.0}) == pytest.approx((0.2 + 3 * 0.4) / 4)


# -------------------------------------------------------------------------------------------- KL, gradients


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_kl_is_zero_at_start_and_positive_after_an_update(tmp_path, critic, lora_rank):
    tr = trainer(tmp_path / "run", critic, lora_rank=lora_rank, lr=1e-2, weight_decay=0.0)
    if lora_rank:
        assert tr.policy.ref_model is None  # the reference is the model with the adapter disabled
    else:
        assert tr.policy.ref_model is not tr.policy.model
    ro = rollout(tr)
    for i in range(4):
        kl = tr.loss_terms(ro, 0, slice(None), i)["kl"]
        assert kl.dtype == torch.float32 and float(kl.detach()) == 0.0
    tr.update(ro, np.random.default_rng(0))
    kls = [float(tr.loss_terms(ro, 0, slice(None), i)["kl"].detach()) for i in range(4)]
    assert all(k > 0 and np.isfinite(k) for k in kls), kls
    # beta 0: no reference forward, the KL term is 0 and the loss is the policy loss alone
    tr.cfg = tr.cfg.model_copy(update={"beta": 0.0})
    terms = tr.loss_terms(ro, 0, slice(None), 1)
    assert float(terms["kl"]) == 0.0 and torch.equal(terms["loss"], terms["policy"])


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_ode_step_anchor_is_zero_at_start_and_pulls_the_late_steps_back(tmp_path, critic, lora_rank):
    """beta_ode adds the KL to the reference at the deterministic steps, which the policy loss never reaches: it
    is 0 before any update, positive once the weights moved, and a gradient step on it alone moves them back."""
    tr = trainer(tmp_path / "run", critic, lora_rank=lora_rank, lr=1e-2, weight_decay=0.0, sde_window=(0, 2),
                 beta_ode=1.0)
    ro = rollout(tr)
    assert [bool(m) for m in ro["mask"]] == [True, True, False, False]
    assert all(float(tr.anchor_kl(ro, 0, slice(None), i).detach()) == 0.0 for i in (2, 3))
    stats = tr.update(ro, np.random.default_rng(0))
    assert stats["first_ratio_max_dev"] == 0.0 and np.isfinite(stats["kl_ode"])  # the SDE steps stay on-policy
    before = float(tr.anchor_kl(ro, 0, slice(None), 3).detach())
    assert before > 0
    params = list(tr.params.values())
    grads = torch.autograd.grad(tr.anchor_kl(ro, 0, slice(None), 3), params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    eta = 0.5 * before / sum(float((g**2).sum()) for _, g in pairs)  # about half of a quadratic's way down
    with torch.no_grad():
        for p, g in pairs:
            p -= eta * g
    assert float(tr.anchor_kl(ro, 0, slice(None), 3).detach()) < before
    # off (the default): no ODE-step term at all
    tr.cfg = tr.cfg.model_copy(update={"beta_ode": 0.0})
    assert "kl_ode" not in tr.update(ro, np.random.default_rng(0))


def test_background_anchor_ignores_the_action_region_and_holds_the_rest(tmp_path, critic):
    """anchor_region background: the ODE-step KL counts only pixels where the text does not change the predicted
    frame. A velocity change inside the action region leaves it at 0 (the object is free to learn); the same
    change outside it is seen, and so is either by the whole-frame anchor."""
    tr = trainer(tmp_path / "run", critic, sde_window=(0, 2), beta_ode=1.0, anchor_region="background")
    ro = rollout(tr)
    i = 3
    x_t, s = ro["traj"][0][:, i], ro["sigmas"][i]
    batch = tr.policy.unguided(ro["batches"][0])
    sig = s.expand(x_t.shape[0])
    # a tau that makes the action region part of the frame (a random model changes every pixel a little)
    with torch.no_grad():
        v_c, v_u = tr.policy.gen.text_and_null_velocity(x_t, sig, batch.cond, tr.policy.model)
    change = (s.clamp(min=tr.policy.gen.config.sigma_min) * (v_c - v_u)).abs().amax(dim=2)
    tau = float(change.flatten().quantile(0.995))
    tr.cfg = tr.cfg.model_copy(update={"anchor_tau": tau})
    region = tr.policy.action_region(x_t, sig, batch, tau)
    assert region.shape == (*x_t.shape[:2], 1, *x_t.shape[-2:]) and 0.05 < float(region.float().mean()) < 0.95
    assert float(tr.anchor_kl(ro, 0, slice(None), i).detach()) == 0.0  # the policy is its reference

    live = tr.policy.velocity

    def seen(where: torch.Tensor, region_kind: str) -> float:
        tr.policy.velocity = lambda x, sg, b: live(x, sg, b) + 0.5 * where.to(x.dtype)
        tr.cfg = tr.cfg.model_copy(update={"anchor_region": region_kind})
        try:
            return float(tr.anchor_kl(ro, 0, slice(None), i).detach())
        finally:
            tr.policy.velocity = live

    assert seen(region, "background") == 0.0
    assert seen(region, "frame") > 0
    assert seen(~region, "background") > seen(~region, "frame") > 0  # averaged over fewer pixels
    for bad in (dict(anchor_region="background"),
                dict(generator="diffusers", diffusers_model="x", beta_ode=1.0, anchor_region="background")):
        with pytest.raises(ValueError, match="anchor_region"):
            GRPOConfig(**bad)


def test_lora_gradients_reach_only_the_adapters(tmp_path, critic):
    tr = trainer(tmp_path / "run", critic, lora_rank=4, weight_decay=0.0)
    model = tr.policy.model
    assert tr.params and all("lora_" in n for n in tr.params)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(tr.params)
    ro = rollout(tr)
    tr.loss_terms(ro, 0, slice(None), 1)["loss"].backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in n), n
    assert any(float(p.grad.abs().max()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    model.zero_grad(set_to_none=True)

    before = snapshot(model)
    tr.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), changed
    assert any("lora_B" in n for n in changed)


def test_full_finetuning_leaves_the_reference_frozen(tmp_path, critic):
    tr = trainer(tmp_path / "run", critic)
    pol = tr.policy
    assert set(tr.params) == {n for n, _ in pol.model.named_parameters()}  # every weight trains
    assert not any(p.requires_grad for p in pol.ref_model.parameters())
    ref_before, model_before = snapshot(pol.ref_model), snapshot(pol.model)
    for n, p in pol.ref_model.named_parameters():  # a copy, not shared storage
        assert p.data_ptr() != dict(pol.model.named_parameters())[n].data_ptr()
    ro = rollout(tr)
    tr.loss_terms(ro, 0, slice(None), 1)["loss"].backward()
    assert all(p.grad is None for p in pol.ref_model.parameters())
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in pol.model.parameters())
    pol.model.zero_grad(set_to_none=True)
    tr.step()
    assert all(torch.equal(p, ref_before[n]) for n, p in pol.ref_model.named_parameters())
    assert any(not torch.equal(p, model_before[n]) for n, p in pol.model.named_parameters())


# ------------------------------------------------------------------------------------------ resume, checkpoints


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_resume_gives_the_same_next_step(tmp_path, critic, lora_rank):
    stages = [Stage(name="single", kind="single", min_steps=1, max_steps=3, until_step=1),
              Stage(name="chain", kind="continuation", min_steps=2, max_steps=3)]
    kw = dict(lora_rank=lora_rank, stages=stages, group_size=2, weight_decay=0.0 if lora_rank else 1e-4)

    a = trainer(tmp_path / "a", critic, steps=2, **kw)
    full = a.run()
    assert [r["step"] for r in full] == [1, 2] and [r["stage"] for r in full] == ["single", "chain"]

    b = trainer(tmp_path / "b", critic, steps=1, **kw)
    assert b.run()[0]["loss"] == full[0]["loss"]  # the same start
    resumed = trainer(tmp_path / "b", critic, steps=2, resume=True, **kw)
    assert resumed.step_no == 1 and resumed.stage.name == "chain"
    rec = resumed.run()
    assert len(rec) == 1 and rec[0]["step"] == 2 and rec[0]["stage"] == "chain"
    for k in ("loss", "reward_mean", "kl", "grad_norm", "ratio_max", "prompt_seeds"):
        assert rec[0][k] == full[1][k], k
    for n, p in a.params.items():
        assert torch.equal(p, resumed.params[n]), n
        assert torch.equal(a.ema[n], resumed.ema[n]), n
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in "ab"]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert rec[0]["prompt_seeds"] != full[0]["prompt_seeds"]  # step 2's own draws, not a replay of step 1


def test_checkpoint_is_safetensors_and_a_weights_only_state(tmp_path, critic):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tr = trainer(tmp_path / "run", critic, steps=2)
    tr.run()
    ck = tmp_path / "run" / "checkpoint"
    assert sorted(p.name for p in ck.iterdir()) == ["ema.safetensors", "state.pt", "trainable.safetensors"]
    weights = load_file(str(ck / "trainable.safetensors"))
    assert set(weights) == set(tr.params)
    assert all(torch.equal(weights[n], p.detach()) for n, p in tr.params.items())
    ema = load_file(str(ck / "ema.safetensors"))
    assert set(ema) == set(tr.params) and any(not torch.equal(ema[n], weights[n]) for n in ema)
    with safe_open(str(ck / "trainable.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta == {"step": "2", "config": tr.cfg.identity()}
    state = torch.load(ck / "state.pt", weights_only=True)
    assert state["step"] == 2 and state["stage_idx"] == 0 and len(state["stage_rewards"]) == 2
    # AdamW keeps moments for every weight that had a gradient: all but the null text (no guidance, cfg_scale 1)
    trained = {i for i, n in enumerate(tr.params) if n != "null_text"}
    assert set(state["optimizer"]["state"]) == trained and len(trained) == len(tr.params) - 1
    assert state["torch_rng"].dtype == torch.uint8
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert GRPOConfig(**saved) == tr.cfg


def test_keep_ema_keeps_every_checkpoints_ema(tmp_path, critic):
    """keep_ema: one EMA file per checkpoint, each the EMA as it was then (for picking a checkpoint afterwards)."""
    from safetensors.torch import load_file

    tr = trainer(tmp_path / "run", critic, steps=3, ckpt_every=1, keep_ema=True)
    seen = []
    for _ in range(3):
        tr.run(stop_at=tr.step_no + 1)
        seen.append({n: t.clone() for n, t in tr.ema.items()})
    ck = tmp_path / "run" / "checkpoint"
    assert sorted(p.name for p in ck.glob("ema_*.safetensors")) == [f"ema_0000{i}.safetensors" for i in (1, 2, 3)]
    for i, ema in enumerate(seen, 1):
        kept = load_file(str(ck / f"ema_0000{i}.safetensors"))
        assert all(torch.equal(kept[n], t) for n, t in ema.items())
    assert any(not torch.equal(seen[0][n], seen[2][n]) for n in seen[0])  # three different snapshots
    # a kept file becomes the live and EMA weights of a trainer built from the run's config (to score or export it)
    other = trainer(tmp_path / "other", critic, steps=3)
    assert other.load_ema(ck / "ema_00002.safetensors") == 2
    assert all(torch.equal(p, seen[1][n]) and torch.equal(other.ema[n], seen[1][n]) for n, p in other.params.items())
    lora = trainer(tmp_path / "lora", critic, lora_rank=4)
    with pytest.raises(ValueError, match="another config"):
        lora.load_ema(ck / "ema_00002.safetensors")


def test_lora_export_merges_the_adapter(tmp_path, critic):
    from spiral.models.tiny_video import load_weights

    tr = trainer(tmp_path / "run", critic, lora_rank=4, lr=1e-2, steps=1, ema=0.0)
    tr.run()
    path = tr.export(tmp_path / "evolved.safetensors")
    merged, meta = load_weights(path)
    assert meta["grpo_steps"] == "1" and not any("lora" in k for k in merged.state_dict())
    batch = tr.policy.prepare([_request(s) for s in range(2)])
    x, s = tr.policy.initial_noise(batch), torch.full((2,), 0.6)
    with torch.no_grad():
        live = tr.policy.velocity(x, s, batch)
        base = tr.policy.reference_velocity(x, s, batch)
        got = merged(x, s, batch.cond.text, batch.cond.cond, batch.cond.anchor)
    assert not torch.equal(live, base)  # the adapter learned something
    torch.testing.assert_close(got, live, atol=1e-5, rtol=1e-5)
    assert "sampler" not in meta  # trained unguided: the weights keep the plain sampler


def test_export_records_the_guidance_it_was_evolved_under(tmp_path, critic):
    """A run with late guidance exports weights whose generator samples with that guidance by default."""
    from spiral.generators.tiny import TinyGenerator

    tr = trainer(tmp_path / "run", critic, steps=1, ema=0.0, cfg_scale=3.0, cfg_max_sigma=0.5, cfg_tau=0.05,
                 policy=tiny_policy(cfg_scale=3.0, cfg_max_sigma=0.5, cfg_tau=0.05))
    tr.run()
    path = tr.export(tmp_path / "evolved.safetensors")
    gen = TinyGenerator(weights=path, steps=4, text_encoder=get_text_encoder("hash"))
    assert (gen.cfg_scale, gen.cfg_max_sigma, gen.cfg_tau) == (3.0, 0.5, 0.05)
    plain = TinyGenerator(weights=path, steps=4, text_encoder=get_text_encoder("hash"), cfg_scale=1.0)
    assert plain.cfg_scale == 1.0  # an explicit argument wins


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="bogus"):
        GRPOConfig(reward_weights={"bogus": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        GRPOConfig(reward_weights={"action": 0.0})
    with pytest.raises(ValueError, match="noise_level"):
        GRPOConfig(noise_level=0.0)
    with pytest.raises(ValueError, match="sde_window"):
        GRPOConfig(sample_steps=4, sde_window=(2, 5))
    with pytest.raises(ValueError, match="grad_accum"):
        GRPOConfig(minibatches=3, grad_accum=2)
    with pytest.raises(ValueError, match="diffusers_model"):
        GRPOConfig(generator="diffusers")
    with pytest.raises(ValueError, match="has no option 'heigth'"):
        GRPOConfig(generator="diffusers", diffusers_model="x", diffusers_options={"heigth": 32})
    with pytest.raises(ValueError, match="set by diffusers_model"):
        GRPOConfig(generator="diffusers", diffusers_model="x", diffusers_options={"model": "y"})
    with pytest.raises(ValueError, match="lr_typo"):
        GRPOConfig(lr_typo=1.0)
    with pytest.raises(ValueError, match="cfg_max_sigma"):
        GRPOConfig(cfg_max_sigma=0.0)
    with pytest.raises(ValueError, match="tiny-generator option"):
        GRPOConfig(generator="diffusers", diffusers_model="x", cfg_max_sigma=0.5)
    for bad in (dict(cfg_tau=0.0), dict(generator="diffusers", diffusers_model="x", cfg_tau=0.1)):
        with pytest.raises(ValueError, match="cfg_tau"):
            GRPOConfig(**bad)
    with pytest.raises(ValueError, match="beta_ode"):
        GRPOConfig(beta_ode=-0.1)


def test_resume_and_fresh_start_guard_the_run_folder(tmp_path, critic):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        GRPOTrainer(config(tmp_path / "missing"), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        GRPOTrainer(config(tmp_path / "empty"), resume=True)

    trainer(tmp_path / "run", critic).run()
    with pytest.raises(FileExistsError, match="--resume"):
        GRPOTrainer(config(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"another config .*\['lr'\]"):
        GRPOTrainer(config(tmp_path / "run", lr=1e-3), resume=True)
    # runtime fields (how long, where, how often) may change on resume
    ok = trainer(tmp_path / "run", critic, resume=True, steps=5, log_every=3)
    assert ok.step_no == 1


def test_cli_names_a_key_given_twice_and_a_set_without_a_value(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from spiral.cli import app

    base = ["train", "grpo", "--config", str(Path(__file__).resolve().parents[1] / "configs/train/grpo-tiny.yaml")]
    for args, want in (([*base, "--out", str(tmp_path / "a"), "--set", f"out={tmp_path / 'b'}"], "give it once"),
                       ([*base, "--steps", "3", "--set", "steps=4"], "give it once"),
                       ([*base, "--set", "steps"], "KEY=VALUE"),
                       # out by --set alone reaches the config (it used to crash on a duplicate keyword)
                       ([*base, "--set", f"out={tmp_path / 'c'}", "--set", "group_size=1"], "group_size")):
        res = CliRunner().invoke(app, args)
        assert res.exit_code != 0 and want in " ".join(res.output.split()), res.output
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before anything ran


def test_policy_without_trainable_weights_is_refused(tmp_path, critic):
    pol = tiny_policy()
    pol.model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainer(tmp_path / "run", critic, policy=pol)


# ------------------------------------------------------------------------------------------------ torchrun


DIST_SCRIPT = """
import sys

import torch

torch.set_num_threads(1)
import torch.distributed as dist

from spiral.models.text import get_text_encoder
from spiral.models.tiny_video import TinyVideoConfig, TinyVideoDiT
from spiral.train.grpo import GRPOConfig, GRPOTrainer, Stage
from spiral.train.policy import TinyPolicy

torch.manual_seed(0)  # the same start on every rank
model = TinyVideoDiT(TinyVideoConfig(**{tiny!r}))
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.05)
policy = TinyPolicy(model=model, text_encoder=get_text_encoder("hash"), steps=4)
cfg = GRPOConfig(out=sys.argv[1], steps=2, prompts_per_step=2, group_size=2, sample_steps=4, eval_every=0,
                 sample_every=0, stages=[Stage(name="single", kind="single", min_steps=1, max_steps=3)])
tr = GRPOTrainer(cfg, policy=policy, progress=False)
assert (tr.rank, tr.world) == (dist.get_rank(), 2) and dist.get_backend() == "gloo"
tr.run()
dist.barrier()
dist.destroy_process_group()
"""


def test_torchrun_two_ranks_gloo_average_gradients(tmp_path):
    script = tmp_path / "grpo_dist.py"
    script.write_text(textwrap.dedent(DIST_SCRIPT).format(tiny=TINY))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [[json.loads(x) for x in (out / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == [1, 2]
    for r0, r1 in zip(*ranks):
        assert r0["prompt_seeds"] != r1["prompt_seeds"]  # each rank rolls out its own prompts
        assert r0["param_sum"] == r1["param_sum"]  # the averaged gradients kept the replicas identical
    assert ranks[0][0]["param_sum"] != ranks[0][1]["param_sum"]  # and they did train
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]  # rank 0 only
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    assert (out / "checkpoint" / "state.pt").is_file()


# ------------------------------------------------------------------------------------------ tiny Wan + LoRA


def test_wan21_lora_grpo_step(tmp_path, critic):
    pytest.importorskip("diffusers", reason="needs the diffusers extra: pip install 'spiral-video[diffusers]'")
    pytest.importorskip("peft", reason="LoRA needs peft (the diffusers extra)")
    from spiral.generators.diffusers.testing import save_tiny
    from spiral.train.policy import DiffusersPolicy

    path = save_tiny("wan21-i2v", tmp_path / "wan")
    cfg = config(tmp_path / "run", generator="diffusers", diffusers_model=str(path), lora_rank=4, group_size=2,
                 prompts_per_step=1, sample_steps=3, weight_decay=0.0, lr=1e-2,
                 diffusers_options={"prompt_source": "instruction", "dtype": "float32"})
    tr = GRPOTrainer(cfg, critic=critic, progress=False)  # the policy from the config (build_policy)
    assert isinstance(tr.policy, DiffusersPolicy) and type(tr.policy.adapter).__name__ == "WanI2VAdapter"
    assert tr.policy.adapter.prompt_source == "instruction"  # the options reach the adapter
    model = tr.policy.model
    assert tr.params and all("lora_" in n for n in tr.params)
    before = snapshot(model)
    rec = tr.step()
    assert np.isfinite(rec["loss"]) and np.isfinite(rec["kl"]) and rec["skipped_updates"] == 0
    assert rec["first_ratio_max_dev"] == 0.0
    ro = tr.last_rollout
    assert len(ro["segments"]) == 2 and all(s.frames.shape == (9, 64, 64, 3) for s in ro["segments"])
    assert ro["logp"][0].dtype == torch.float32 and ro["logp"][0].shape == (2, 3)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), changed
    assert any("lora_B" in n for n in changed)
    assert set(before) == {n for n, _ in model.named_parameters()}
    assert model.is_gradient_checkpointing
    # the evolved LoRA is a folder diffusers' load_lora_weights reads, which generator.options.lora loads
    folder = tr.export(tmp_path / "run" / "evolved.safetensors")
    assert folder == tmp_path / "run" / "evolved" and (folder / "pytorch_lora_weights.safetensors").is_file()
    from spiral import registry

    gen = registry.create("generator", "wan21-i2v", model=str(path), lora=[{"path": str(folder), "scale": 1.0}])
    assert gen.lora_adapters == ["lora0"]


# ------------------------------------------------------------------------------------------------- prompts


def test_heldout_moves_exclude_include_only(tmp_path, critic):
    from spiral.world.splits import is_heldout

    stage = Stage(name="single", kind="single", min_steps=2, max_steps=6)

    def moves(tr):
        return [(p.sub_action.verb, tuple(p.sub_action.objects)) for p in tr.sample_prompts(40, stage, np.random.default_rng(3))]

    kept = moves(trainer(tmp_path / "a", critic))
    allowed = moves(trainer(tmp_path / "b", critic, heldout_moves="include"))
    only = moves(trainer(tmp_path / "c", critic, heldout_moves="only"))
    assert len(kept) == len(allowed) == len(only) == 40
    assert not any(is_heldout(v, o) for v, o in kept)  # the default keeps the zero-shot eval honest
    assert any(is_heldout(v, o) for v, o in allowed) and not all(is_heldout(v, o) for v, o in allowed)
    assert all(is_heldout(v, o) for v, o in only)
    assert len(set(only)) >= 3  # every held-out move gets drawn, not one
    half = moves(trainer(tmp_path / "d", critic, heldout_moves="half"))
    assert [is_heldout(v, o) for v, o in half] == [True, False] * 20  # alternating: learn without forgetting
    # focus_moves: the held-out side draws only the named move; gold evaluation still draws every held-out move
    focus = trainer(tmp_path / "e", critic, heldout_moves="half", focus_moves=[("green_block", "red_block")])
    drawn = moves(focus)
    assert drawn[0::2] == [("move", ("green_block", "red_block"))] * 20
    assert not any(is_heldout(v, o) for v, o in drawn[1::2])
    gold = focus.sample_prompts(40, stage, np.random.default_rng(3), "only")
    assert len({tuple(p.sub_action.objects) for p in gold}) >= 3
    for bad in (dict(focus_moves=[("green_block", "red_block")]),  # heldout_moves exclude draws none
                dict(heldout_moves="half", focus_moves=[("red_block", "left")]),  # not a held-out move
                dict(heldout_moves="only", focus_moves=[])):
        with pytest.raises(ValueError, match="focus_moves"):
            GRPOConfig(**bad)


def test_a_config_extends_another_and_overrides_win(tmp_path):
    """extends: a second training stage names only what changes; its own keys and the overrides win, and a
    missing parent or a cycle is named."""
    from spiral.train.grpo import load_config

    (tmp_path / "base.yaml").write_text("group_size: 4\nlr: 1.0e-5\nbeta_ode: 0.0\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/stage2.yaml").write_text("extends: ../base.yaml\nbeta_ode: 0.01\nanchor_region: background\n")
    cfg = load_config(tmp_path / "sub/stage2.yaml", lr=2e-5)
    assert (cfg.group_size, cfg.lr, cfg.beta_ode, cfg.anchor_region) == (4, 2e-5, 0.01, "background")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml.*extended by"):
        load_config(tmp_path / "orphan.yaml")
    with pytest.raises(FileNotFoundError, match="weights: .*nowhere.safetensors not found.*--set weights=FILE"):
        GRPOTrainer(cfg.model_copy(update={"out": str(tmp_path / "run"), "weights": "nowhere.safetensors"}))
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_shipped_trainer_configs_load():
    """Every file of configs/train/ loads through its trainer's config class (spiral.config's one parser), and the
    weights a GRPO recipe starts from are shipped."""
    from pathlib import Path

    from spiral.config import load_yaml_model
    from spiral.train.generator import TrainConfig
    from spiral.train.grpo import load_config
    from spiral.train.reverse import ReverseConfig
    from spiral.train.sft_config import SFTConfig

    root = Path(__file__).resolve().parents[1]
    paths = sorted((root / "configs/train").glob("*.yaml"))
    grpo = [p for p in paths if p.name.startswith("grpo-")]
    assert len(grpo) >= 2 and len(paths) > len(grpo)
    for p in paths:
        if p in grpo:
            cfg = load_config(p)
            assert cfg.group_size >= 2 and cfg.stages, p
            assert cfg.weights is None or (root / cfg.weights).is_file(), (p, cfg.weights)
        else:
            cls = {"reverse": ReverseConfig, "generator": TrainConfig, "sft": SFTConfig}[p.name.split("-")[0]]
            load_yaml_model(cls, p)


def test_every_trainer_config_field_says_what_it_does():
    """GRPOConfig's fields are grouped like TRL's (sampling, objective, KL, ...) and each carries a description;
    every trainer config describes its fields."""
    from spiral.train.aligner import AlignerConfig
    from spiral.train.generator import TrainConfig
    from spiral.train.grpo_config import GROUPS
    from spiral.train.reverse import ReverseConfig

    groups = {name: (f.json_schema_extra or {}).get("group") for name, f in GRPOConfig.model_fields.items()}
    assert set(groups.values()) == set(GROUPS), groups
    from spiral.train.sft_config import SFTConfig

    for cls in (GRPOConfig, Stage, TrainConfig, ReverseConfig, AlignerConfig, SFTConfig):
        undescribed = [n for n, f in cls.model_fields.items() if not (f.description or "").strip()]
        assert not undescribed, (cls.__name__, undescribed)


def test_set_reaches_nested_keys_and_a_saved_config_of_an_older_version_resumes(tmp_path):
    """--set a.b=c goes through spiral.config's parser (the other keys of a.* stay); a run folder written before the
    experiment-only options were removed resumes when it left them off, and names them when it used them."""
    from pathlib import Path

    from spiral.train.grpo import load_config

    path = Path(__file__).resolve().parents[1] / "configs/train/grpo-tiny-reverse-anchor.yaml"
    cfg = load_config(path, ["reward_weights.action=2"])
    assert cfg.reward_weights == {"action": 2.0, "preservation": 1.0, "continuity": 0.5, "consistency": 0.5}
    with pytest.raises(ValueError, match="lr_typo"):
        load_config(path, ["lr_typo=1"])
    old = {**cfg.model_dump(mode="json"), "white_noise": 1.0, "coarse_noise": 0.0, "coarse_patch": 8,
           "action_decades": None, "noise_penalty": 0.0, "artifact_penalty": 0.0, "pg_region": "frame",
           "reference_weights": None}
    assert GRPOConfig.from_saved(old).identity() == cfg.identity()
    with pytest.raises(ValueError, match="pg_region.*15e7b3b"):
        GRPOConfig.from_saved({**old, "pg_region": "action"})
    with pytest.raises(ValueError, match="unknown_key"):
        GRPOConfig.from_saved({**old, "unknown_key": 1})
