"""Rectified-flow sampling shared by every flow-matching backend (DESIGN §6).

Conventions (SD3 / Wan / Flow-GRPO): ``x_t = (1 − σ)·x_0 + σ·ε``, the network predicts the
velocity ``v = ε − x_0``, and sampling integrates σ from 1 (noise) down to 0 (data).

* :func:`euler_step` — the deterministic ODE step ``x_next = x + (σ_next − σ)·v``.
* :func:`sde_step` — the Flow-GRPO SDE step that has the same marginals as the ODE and
  returns the Gaussian log-probability of the transition it took, so a policy-gradient
  method can score its own samples.
* :func:`step_logprob` — the same density for a recorded transition under *new* velocities
  (the numerator of the PPO ratio).
* :func:`sample` — the loop, ODE or SDE (optionally SDE only inside a window of steps).
* :class:`ExplorationNoise` — the SDE's noise made of white noise plus *coarse* noise that is constant
  over time and over p×p pixel cells, with its exact density and KL: exploration at the scale of
  objects for a model that denoises white noise away (docs/self_evolution.md).

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


def gaussian_logprob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """log N(x_next; mean, std²) in float32, averaged over every dimension but the batch one; with ``mask``
    (broadcastable bool), over the masked elements only: the exact log-density of that part of the transition,
    since a diagonal Gaussian factorises."""
    x_next, mean, std = x_next.float(), mean.float(), std.float()
    lp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    dims = tuple(range(1, lp.ndim))
    if mask is None:
        return lp.mean(dim=dims)
    m = mask.expand_as(lp).float()
    return (lp * m).sum(dim=dims) / m.sum(dim=dims).clamp(min=1)


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


class ExplorationNoise:
    """SDE noise ``white·ε + coarse·up(z)``: white noise plus noise constant over time and p×p cells.

    Flow-GRPO explores with white noise; a model whose outcome is a near-point function of its
    conditioning denoises it away or keeps it as grain, so its G rollouts never differ in *what*
    happens. Coarse noise (one Gaussian per channel and cell, shared by all frames) can tint a whole
    object-sized region. The transition stays Gaussian with covariance
    ``std²·(white²·I + coarse²·n·P)`` (P: projection onto cell-constant tensors, n: elements per cell),
    so :meth:`logprob` and :meth:`kl` are exact; ``coarse = 0, white = 1`` is the plain SDE.
    Every dimension but the batch one and ``channel_dim`` is time or space; the last two are pooled
    in ``patch``×``patch`` cells, the others whole.
    """

    def __init__(self, white: float = 1.0, coarse: float = 0.0, patch: int = 8, channel_dim: int = 2):
        if white <= 0 or coarse < 0 or patch < 1:
            raise ValueError(f"exploration noise needs white > 0, coarse ≥ 0, patch ≥ 1; got white={white}, "
                             f"coarse={coarse}, patch={patch}")
        self.white, self.coarse, self.patch, self.channel_dim = white, coarse, patch, channel_dim

    @property
    def plain(self) -> bool:
        return self.coarse == 0 and self.white == 1

    def _cells(self, shape: torch.Size) -> tuple[list[int], int]:
        """Dims averaged whole, and elements per cell; checks that the patch tiles the last two dims."""
        h, w = shape[-2], shape[-1]
        if h % self.patch or w % self.patch:
            raise ValueError(f"coarse noise patch {self.patch} must divide the spatial size {h}×{w}; "
                             f"pick a divisor (the tiny generator: 8 at 64×64)")
        whole = [d for d in range(1, len(shape) - 2) if d != self.channel_dim]
        return whole, math.prod(shape[d] for d in whole) * self.patch**2

    def _pool(self, r: torch.Tensor) -> torch.Tensor:
        """Cell means of ``r``, kept with size-1 (whole) or H/p × W/p (spatial) dims."""
        whole, _ = self._cells(r.shape)
        m = r.mean(dim=whole, keepdim=True) if whole else r
        *lead, h, w = m.shape
        p = self.patch
        return m.reshape(*lead, h // p, p, w // p, p).mean(dim=(-3, -1))

    def sample(self, shape: torch.Size, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of the noise (unit std, float32, CPU) for states of ``shape``."""
        eps = torch.randn(shape, generator=generator)
        if self.plain:
            return eps
        whole, _ = self._cells(shape)
        cell_shape = [1 if d in whole else n for d, n in enumerate(shape)]
        cell_shape[-2] //= self.patch
        cell_shape[-1] //= self.patch
        z = torch.randn(cell_shape, generator=generator)
        z = z.repeat_interleave(self.patch, -2).repeat_interleave(self.patch, -1).expand(shape)
        return self.white * eps + self.coarse * z

    def _quad_logdet(self, r: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dim mean of rᵀΣ⁻¹r and of log det Σ (Σ for unit std is white²I + coarse²·n·P)."""
        r, std = r.float(), std.float()
        dims = tuple(range(1, r.ndim))
        D = math.prod(r.shape[1:])
        s2 = (std.reshape(r.shape[0], -1)[:, 0]) ** 2  # std is per sample
        total = (r**2).sum(dims)
        cell = self._pool(r)
        k = math.prod(cell.shape[1:])
        n = D // k  # elements per cell
        on_cells = n * (cell**2).sum(dim=tuple(range(1, cell.ndim)))  # |P r|²
        w2, big = self.white**2, self.white**2 + self.coarse**2 * n
        quad = ((total - on_cells) / w2 + on_cells / big) / s2 / D
        logdet = torch.log(s2) + ((D - k) * math.log(w2) + k * math.log(big)) / D
        return quad, logdet

    def logprob(self, x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """log N(x_next; mean, std²Σ), float32 (B,), averaged over dimensions like :func:`gaussian_logprob`;
        ``mask`` (plain noise only: coarse noise couples the pixels of a cell) keeps some elements."""
        if self.plain:
            return gaussian_logprob(x_next, mean, std, mask)
        if mask is not None:
            raise ValueError("a masked log-probability needs plain white noise (coarse_noise 0, white_noise 1)")
        quad, logdet = self._quad_logdet(x_next.float() - mean.float(), std)
        return -0.5 * quad - 0.5 * logdet - _LOG_SQRT_2PI

    def kl(self, mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """KL of two transitions with this covariance and different means, per sample, averaged over dims."""
        if self.plain:
            d = (mean.float() - mean_ref.float()) ** 2 / (2 * std.float() ** 2)
            return d.mean(dim=tuple(range(1, d.ndim)))
        quad, _ = self._quad_logdet(mean.float() - mean_ref.float(), std)
        return 0.5 * quad


@torch.no_grad()
def sample(denoiser_fn: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, mode: Literal["ode", "sde"] = "ode",
           noise_level: float = 0.7, sde_window: tuple[int, int] | None = None,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Integrate from ``x_T`` (σ = sigmas[0]) to σ = sigmas[-1] with ``denoiser_fn(x, σ_batch) -> v``.

    Returns ``(x_0, trajectory, log_probs)``: the trajectory holds every state (``len(sigmas)``
    tensors, x_T first); log_probs is ``None`` for ODE, else float32 (B, steps) with the SDE
    steps' log-probabilities and 0 at the deterministic steps (see :func:`sde_mask`).
    """
    steps = len(sigmas) - 1
    stochastic = sde_mask(steps, mode, sde_window)
    x = x_T
    trajectory = [x]
    log_probs = torch.zeros(x.shape[0], steps, dtype=torch.float32, device=x.device) if mode == "sde" else None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = denoiser_fn(x, sigma.to(x.dtype).expand(x.shape[0]))
        if stochastic[i]:
            x, lp = sde_step(x, v, sigma, sigma_next, noise_level, generator=generator)
            log_probs[:, i] = lp
        else:
            x = euler_step(x, v, sigma, sigma_next)
        trajectory.append(x)
    return x, trajectory, log_probs
