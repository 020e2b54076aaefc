"""Rectified-flow sampling shared by every flow-matching backend (DESIGN §6).

Conventions (SD3 / Wan / Flow-GRPO): ``x_t = (1 − σ)·x_0 + σ·ε``, the network predicts the
velocity ``v = ε − x_0``, and sampling integrates σ from 1 (noise) down to 0 (data).

* :func:`euler_step` — the deterministic ODE step ``x_next = x + (σ_next − σ)·v``.
* :func:`sde_step` — the Flow-GRPO SDE step that has the same marginals as the ODE and
  returns the Gaussian log-probability of the transition it took, so a policy-gradient
  method can score its own samples.
* :func:`step_logprob` — the same density for a recorded transition under *new* velocities
  (the numerator of the PPO ratio).
* :func:`gaussian_kl` — the KL between two such transitions that differ in their mean (GRPO's KL to the
  reference).
* :func:`sample` — the loop, ODE or SDE (optionally SDE only inside a window of steps), with the exploration
  noise and a per-step hook in the caller's hands: the one sampler of the generators and of GRPO's rollouts.

Every function is batched over the first dimension; σ may be a float or a tensor of shape (B,).
Randomness only comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def time_shift(t: torch.Tensor | float, shift: float) -> torch.Tensor:
    """SD3/Wan time shift ``σ = s·t / (1 + (s − 1)·t)``: ``s > 1`` spends more steps at high noise."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def sigma_schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` noise levels from 1 down to 0 (float32), uniform in t then shifted."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    return time_shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def _per_sample(s: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """σ as a (B, 1, 1, …) tensor that broadcasts over x."""
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s.reshape(-1, *([1] * (x.ndim - 1)))


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float,
               sigma_next: torch.Tensor | float) -> torch.Tensor:
    """One deterministic probability-flow ODE step."""
    return x + (_per_sample(sigma_next, x) - _per_sample(sigma, x)) * v


def sde_mean_std(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float,
                 noise_level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the Flow-GRPO SDE transition x_σ → x_σnext.

    σ̃ = a·√(σ/(1−σ)); mean = x·(1 + σ̃²Δt/(2σ)) + v·(1 + σ̃²(1−σ)/(2σ))·Δt; std = σ̃·√|Δt|.
    At σ = 1 (the first step) 1−σ is 0, so — as Flow-GRPO does with ``sigmas[1]`` — the
    denominator uses 1 − σ_next there; the rule depends only on (σ, σ_next), so sampling and
    :func:`step_logprob` always agree. σ̃²/(2σ) is evaluated as a²/(2(1−σ)), exact and finite as σ → 0.
    """
    s, sn = _per_sample(sigma, x), _per_sample(sigma_next, x)
    if bool((s <= 0).any()):
        raise ValueError("an SDE step needs σ > 0 (σ = 0 is already clean data)")
    dt = sn - s
    denom = torch.where(s >= 1, 1 - sn, 1 - s)  # 1 − σ, capped at the first step
    a2 = noise_level**2
    half_var_over_sigma = a2 / (2 * denom)  # σ̃² / (2σ)
    sigma_tilde = noise_level * torch.sqrt(s / denom)
    mean = x * (1 + half_var_over_sigma * dt) + v * (1 + half_var_over_sigma * (1 - s)) * dt
    std = sigma_tilde * torch.sqrt(dt.abs())
    return mean, std


def gaussian_logprob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x_next; mean, std²) in float32, averaged over every dimension but the batch one."""
    x_next, mean, std = x_next.float(), mean.float(), std.float()
    lp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mean, std²) ‖ N(mean_ref, std²)) = ‖mean − mean_ref‖² / 2std², float32 of shape (B,), averaged over
    every dimension but the batch one; with ``mask`` (broadcastable bool), over the masked elements only (a
    diagonal Gaussian factorises, so this is the KL of that part of the transition)."""
    d = (mean.float() - mean_ref.float()) ** 2 / (2 * std.float() ** 2)
    dims = tuple(range(1, d.ndim))
    if mask is None:
        return d.mean(dim=dims)
    m = mask.float().expand_as(d)
    return (d * m).sum(dims) / m.sum(dims).clamp(min=1)


def sde_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float,
             noise_level: float, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SDE step; returns ``(x_next, log_prob)`` with log_prob float32 of shape (B,).

    With ``noise_level = 0`` the step is exactly :func:`euler_step` and the (degenerate) log-prob is 0.
    """
    if noise_level == 0:
        return euler_step(x, v, sigma, sigma_next), torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    mean, std = sde_mean_std(x, v, sigma, sigma_next, noise_level)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    x_next = mean + std * noise
    return x_next, gaussian_logprob(x_next, mean, std)


def step_logprob(x_t: torch.Tensor, x_next: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float,
                 sigma_next: torch.Tensor | float, noise_level: float) -> torch.Tensor:
    """Log-probability (float32, shape (B,)) of a recorded transition under velocities ``v``; differentiable in v."""
    if noise_level <= 0:
        raise ValueError("step_logprob needs noise_level > 0: a deterministic step has no density")
    mean, std = sde_mean_std(x_t, v, sigma, sigma_next, noise_level)
    return gaussian_logprob(x_next, mean, std)


def sde_mask(steps: int, mode: Literal["ode", "sde"], sde_window: tuple[int, int] | None = None) -> torch.Tensor:
    """Which of ``steps`` steps are stochastic: none for ODE, all for SDE, or only ``[start, end)``."""
    mask = torch.zeros(steps, dtype=torch.bool)
    if mode == "sde":
        start, end = sde_window if sde_window is not None else (0, steps)
        if not 0 <= start < end <= steps:
            raise ValueError(f"sde_window {sde_window} must satisfy 0 ≤ start < end ≤ {steps}")
        mask[start:end] = True
    elif mode != "ode":
        raise ValueError(f"mode must be 'ode' or 'sde', got {mode!r}")
    return mask


NoiseFn = Callable[[torch.Size], torch.Tensor]
StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def sample(denoiser_fn: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, mode: Literal["ode", "sde"] = "ode",
           noise_level: float = 0.7, sde_window: tuple[int, int] | None = None,
           generator: torch.Generator | None = None, noise: NoiseFn | None = None, on_step: StepHook | None = None
           ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Integrate from ``x_T`` (σ = sigmas[0]) to σ = sigmas[-1] with ``denoiser_fn(x, σ_batch) -> v``.

    Returns ``(x_0, trajectory, log_probs)``: the trajectory holds every state (``len(sigmas)``
    tensors, x_T first); log_probs is ``None`` for ODE, else float32 (B, steps) with the SDE
    steps' log-probabilities and 0 at the deterministic steps (see :func:`sde_mask`).

    ``noise(shape)`` draws the exploration noise of one SDE step (unit Gaussian; it is moved to the state's device
    and dtype), e.g. from a CPU generator so that rollouts do not depend on the device; by default each step
    draws ``torch.randn`` from ``generator`` on the state's device. ``on_step(i, x, v, x_next)`` is called after
    every step with the state before it, the velocity and the state after it: what a caller records per step
    beyond the trajectory (like diffusers' ``callback_on_step_end``, but it observes; the chain is the sampler's).
    """
    steps = len(sigmas) - 1
    stochastic = sde_mask(steps, mode, sde_window)
    x = x_T
    trajectory = [x]
    log_probs = torch.zeros(x.shape[0], steps, dtype=torch.float32, device=x.device) if mode == "sde" else None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = denoiser_fn(x, sigma.expand(x.shape[0]))
        if stochastic[i]:
            eps = noise(x.shape).to(x.device, x.dtype) if noise is not None else None
            x_next, lp = sde_step(x, v, sigma, sigma_next, noise_level, generator=generator, noise=eps)
            log_probs[:, i] = lp
        else:
            x_next = euler_step(x, v, sigma, sigma_next)
        if on_step is not None:
            on_step(i, x, v, x_next)
        x = x_next
        trajectory.append(x)
    return x, trajectory, log_probs
