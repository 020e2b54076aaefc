import math

import pytest
import torch

from spiral import flow


def _state(seed: int = 0, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, 3, 4, 4, generator=g), torch.randn(b, 2, 3, 4, 4, generator=g)


def test_schedule_runs_from_one_to_zero_and_shift_spends_steps_at_high_noise():
    s = flow.sigma_schedule(10)
    assert s.dtype == torch.float32 and len(s) == 11 and float(s[0]) == 1.0 and float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())
    shifted = flow.sigma_schedule(10, shift=3.0)
    assert float(shifted[0]) == 1.0 and float(shifted[-1]) == 0.0 and bool((shifted[1:-1] > s[1:-1]).all())
    t = torch.tensor([0.25])
    assert float(flow.time_shift(t, 3.0)) == pytest.approx(3 * 0.25 / (1 + 2 * 0.25))


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.9), (0.6, 0.45), (0.1, 0.0)])
def test_sde_with_noise_level_zero_is_the_euler_step_exactly(sigma, sigma_next):
    x, v = _state()
    ode = flow.euler_step(x, v, sigma, sigma_next)
    sde, lp = flow.sde_step(x, v, sigma, sigma_next, noise_level=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sde, ode) and lp.dtype == torch.float32 and lp.shape == (3,)
    mean, std = flow.sde_mean_std(x, v, sigma, sigma_next, noise_level=0.0)  # the formula itself, a = 0
    assert torch.equal(mean, ode) and float(std.abs().max()) == 0.0


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.875), (0.7, 0.55), (0.2, 0.05), (0.05, 0.0)])
def test_sde_logprob_equals_independent_gaussian_density(sigma, sigma_next):
    a = 0.7
    x, v = _state(1)
    x64, v64 = x.double(), v.double()
    x_next, lp = flow.sde_step(x, v, sigma, sigma_next, noise_level=a, generator=torch.Generator().manual_seed(2))
    assert lp.dtype == torch.float32 and lp.shape == (3,)
    # the formula, written out independently in float64 (σ = 1 uses 1 − σ_next as Flow-GRPO does)
    dt = sigma_next - sigma
    one_minus = (1 - sigma_next) if sigma >= 1 else (1 - sigma)
    st = a * math.sqrt(sigma / one_minus)
    mean = x64 * (1 + st**2 * dt / (2 * sigma)) + v64 * (1 + st**2 * (1 - sigma) / (2 * sigma)) * dt
    std = st * math.sqrt(abs(dt))
    ref = torch.distributions.Normal(mean, std).log_prob(x_next.double()).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-5)
    # recomputing the recorded transition under the same velocities gives the same density
    torch.testing.assert_close(flow.step_logprob(x, x_next, v, sigma, sigma_next, a), lp)
    # and under other velocities a lower one (the sample was drawn around the first mean)
    assert bool((flow.step_logprob(x, x_next, v + 1.0, sigma, sigma_next, a) < lp).all())


def test_logprob_is_float32_with_half_inputs_and_differentiable_in_v():
    x, v = _state(3)
    x_next, _ = flow.sde_step(x, v, 0.5, 0.4, 0.8, generator=torch.Generator().manual_seed(0))
    lp16 = flow.step_logprob(x.bfloat16(), x_next.bfloat16(), v.bfloat16(), 0.5, 0.4, 0.8)
    assert lp16.dtype == torch.float32
    vv = v.clone().requires_grad_(True)
    flow.step_logprob(x, x_next, vv, 0.5, 0.4, 0.8).sum().backward()
    assert vv.grad is not None and torch.isfinite(vv.grad).all()


def test_per_sample_sigmas_match_scalar_steps():
    x, v = _state(4)
    sig, nxt = torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.9, 0.3, 0.0])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    xb, lpb = flow.sde_step(x, v, sig, nxt, 0.5, noise=noise)
    for i in range(3):
        xi, lpi = flow.sde_step(x[i : i + 1], v[i : i + 1], float(sig[i]), float(nxt[i]), 0.5, noise=noise[i : i + 1])
        torch.testing.assert_close(xb[i : i + 1], xi)
        torch.testing.assert_close(lpb[i : i + 1], lpi)


def _toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x * 0.5 - sigma.view(-1, *([1] * (x.ndim - 1)))  # any smooth function of (x, σ)


def test_sample_ode_sde_window_and_determinism_by_seed():
    x_T, _ = _state(6)
    sigmas = flow.sigma_schedule(6, shift=2.0)
    x0, traj, lps = flow.sample(_toy_denoiser, x_T, sigmas, mode="ode")
    assert lps is None and len(traj) == 7 and traj[0] is x_T and torch.equal(traj[-1], x0)
    a = flow.sample(_toy_denoiser, x_T, sigmas, mode="sde", noise_level=0.7, generator=torch.Generator().manual_seed(9))
    b = flow.sample(_toy_denoiser, x_T, sigmas, mode="sde", noise_level=0.7, generator=torch.Generator().manual_seed(9))
    c = flow.sample(_toy_denoiser, x_T, sigmas, mode="sde", noise_level=0.7, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and not torch.equal(a[0], c[0])
    assert a[2].shape == (3, 6) and a[2].dtype == torch.float32 and torch.isfinite(a[2]).all()
    # the recorded trajectory re-scores to the same log-probs step by step (what GRPO's ratio needs)
    for i in range(6):
        v = _toy_denoiser(a[1][i], sigmas[i].expand(3))
        torch.testing.assert_close(flow.step_logprob(a[1][i], a[1][i + 1], v, sigmas[i], sigmas[i + 1], 0.7), a[2][:, i])
    # SDE only inside the window: outside it the steps are Euler and their log-probs are 0
    w = flow.sample(_toy_denoiser, x_T, sigmas, mode="sde", noise_level=0.7, sde_window=(1, 3),
                    generator=torch.Generator().manual_seed(9))
    assert torch.equal(w[1][1], traj[1]) and not torch.equal(w[1][3], traj[3])
    assert bool((w[2][:, [0, 3, 4, 5]] == 0).all()) and bool((w[2][:, 1:3] != 0).all())
    assert flow.sde_mask(6, "sde", (1, 3)).tolist() == [False, True, True, False, False, False]
    with pytest.raises(ValueError, match="sde_window"):
        flow.sde_mask(6, "sde", (4, 9))
    with pytest.raises(ValueError, match="mode"):
        flow.sample(_toy_denoiser, x_T, sigmas, mode="euler")  # type: ignore[arg-type]


def _dense_cov(shape: tuple[int, ...], white: float, coarse: float, patch: int, channel_dim: int) -> torch.Tensor:
    """The covariance of ExplorationNoise written out (``shape`` without the batch dim): white²·I plus
    coarse² between every two elements of one (channel, p×p cell), whatever their frame."""
    ch = [1] * len(shape)
    ch[channel_dim - 1] = shape[channel_dim - 1]
    c = torch.arange(shape[channel_dim - 1]).view(ch)
    h = (torch.arange(shape[-2]) // patch).view(-1, 1)
    w = (torch.arange(shape[-1]) // patch).view(1, -1)
    cell = (c * 10_000 + h * 100 + w).expand(shape).reshape(-1)
    same = (cell[:, None] == cell[None, :]).double()
    return white**2 * torch.eye(cell.numel(), dtype=torch.float64) + coarse**2 * same


@pytest.mark.parametrize("channel_dim", [1, 2])
def test_exploration_noise_density_and_kl_match_the_dense_gaussian(channel_dim):
    shape = (3, 2, 4, 4) if channel_dim == 2 else (2, 3, 4, 4)  # (F, C, H, W) or (C, F, H, W)
    noise = flow.ExplorationNoise(white=0.4, coarse=0.9, patch=2, channel_dim=channel_dim)
    g = torch.Generator().manual_seed(0)
    mean, mean_ref = torch.randn(3, *shape, generator=g), torch.randn(3, *shape, generator=g)
    std = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1, 1)
    x_next = mean + std * noise.sample((3, *shape), g)
    cov = _dense_cov(shape, 0.4, 0.9, 2, channel_dim)
    D = cov.shape[0]
    for b in range(3):
        mvn = torch.distributions.MultivariateNormal(mean[b].flatten().double(), cov * float(std[b]) ** 2)
        ref = torch.distributions.MultivariateNormal(mean_ref[b].flatten().double(), cov * float(std[b]) ** 2)
        torch.testing.assert_close(noise.logprob(x_next, mean, std)[b].double(),
                                   mvn.log_prob(x_next[b].flatten().double()) / D, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(noise.kl(mean, mean_ref, std)[b].double(),
                                   torch.distributions.kl_divergence(mvn, ref) / D, rtol=1e-5, atol=1e-5)


def test_exploration_noise_samples_have_its_covariance_and_plain_is_flow_grpo():
    shape = (1, 3, 1, 4, 4)  # one sample of (F, C, H, W)
    noise = flow.ExplorationNoise(white=0.5, coarse=1.0, patch=2, channel_dim=2)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([noise.sample(shape, g).flatten() for _ in range(20000)]).double()
    emp = draws.T @ draws / len(draws)
    torch.testing.assert_close(emp, _dense_cov(shape[1:], 0.5, 1.0, 2, 2), atol=0.06, rtol=0.0)
    # the same frames and cell share one coarse draw: neighbours in a cell correlate, across cells they do not
    assert emp[0, 1] > 0.9 and abs(float(emp[0, 2])) < 0.06
    # white 1, coarse 0 is exactly the plain Flow-GRPO transition
    plain = flow.ExplorationNoise()
    x, v = torch.randn(2, 3, 1, 4, 4, generator=g), torch.randn(2, 3, 1, 4, 4, generator=g)
    mean, std = flow.sde_mean_std(x, v, 0.6, 0.4, 0.7)
    x_next = mean + std * plain.sample(x.shape, g)
    assert torch.equal(plain.logprob(x_next, mean, std), flow.gaussian_logprob(x_next, mean, std))
    with pytest.raises(ValueError, match="patch 3 must divide"):
        flow.ExplorationNoise(coarse=1.0, patch=3).sample((1, 2, 3, 4, 4))
    with pytest.raises(ValueError, match="white > 0"):
        flow.ExplorationNoise(white=0.0)


def test_masked_logprob_is_the_mean_over_the_kept_elements_and_needs_plain_noise():
    from spiral.flow import ExplorationNoise, gaussian_logprob

    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    std = torch.tensor(0.5)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, :2], mask[1, :, 3] = True, True
    per = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    want = torch.stack([per[0][:, :2].mean(), per[1][:, 3].mean()])
    torch.testing.assert_close(gaussian_logprob(x, mean, std, mask), want)
    moved = torch.where(mask.expand_as(x), x, x + 3.0)  # outside the mask: not seen
    torch.testing.assert_close(gaussian_logprob(moved, mean, std, mask), want)
    torch.testing.assert_close(ExplorationNoise().logprob(x, mean, std, mask), want)
    with pytest.raises(ValueError, match=r"^a masked log-probability needs plain white noise \(coarse_noise 0, white_noise 1\)$"):
        ExplorationNoise(white=0.5, coarse=1.0).logprob(x, mean, std, mask)


# ---- edges and bad input (each assertion kills a mutant that survived tests above: benchmarks/mutation.py)
def test_schedule_defaults_dtypes_and_bad_arguments():
    torch.testing.assert_close(flow.sigma_schedule(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))  # no shift
    assert flow.sigma_schedule(1).tolist() == [1.0, 0.0]  # one step is a valid schedule
    assert flow.time_shift(0.5, 3.0).dtype == torch.float64  # a float is computed in double, like a tensor
    for steps in (0, -2):
        with pytest.raises(ValueError, match=f"steps must be ≥ 1, got {steps}"):
            flow.sigma_schedule(steps)
    for shift in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"shift must be > 0, got {shift}"):
            flow.time_shift(0.5, shift)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steps_keep_the_state_dtype_with_float_sigmas(dtype):
    x, v = (t.to(dtype) for t in _state(7))
    assert flow.euler_step(x, v, 0.5, 0.25).dtype == dtype
    mean, std = flow.sde_mean_std(x, v, 0.5, 0.25, 0.7)
    assert mean.dtype == dtype


def test_sigma_shape_zero_sigma_and_zero_noise_are_refused_by_name():
    x, v = _state(8)
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \(3,\), got \(2,\)"):
        flow.euler_step(x, v, torch.tensor([0.5, 0.4]), 0.3)
    with pytest.raises(ValueError, match=r"^an SDE step needs σ > 0 \(σ = 0 is already clean data\)$"):
        flow.sde_mean_std(x, v, torch.tensor([0.5, 0.0, 0.4]), 0.0, 0.7)
    with pytest.raises(ValueError, match="^step_logprob needs noise_level > 0: a deterministic step has no density$"):
        flow.step_logprob(x, x, v, 0.5, 0.4, 0.0)
    with pytest.raises(ValueError, match=r"sde_window \(2, 2\) must satisfy 0 ≤ start < end ≤ 6"):
        flow.sde_mask(6, "sde", (2, 2))  # an empty window
    mask = flow.sde_mask(3, "sde")
    assert mask.dtype == torch.bool and mask.tolist() == [True] * 3 and not flow.sde_mask(3, "ode").any()


def test_sde_step_at_noise_level_one_is_stochastic():
    x, v = _state(9)
    x1, lp = flow.sde_step(x, v, 0.5, 0.25, 1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(x1, flow.euler_step(x, v, 0.5, 0.25)) and bool((lp != 0).all())


def test_masked_logprob_of_a_single_kept_element_is_its_density():
    g = torch.Generator().manual_seed(1)
    x, mean = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3], mask[1, 0] = True, True
    want = torch.distributions.Normal(mean, 0.5).log_prob(x)[mask]
    torch.testing.assert_close(flow.gaussian_logprob(x, mean, torch.tensor(0.5), mask), want)


def test_plain_noise_kl_hand_worked():
    """Same std s: KL(N(m, s²) ‖ N(m', s²)) = (m − m')² / (2s²) per element, averaged per sample (the second
    sample has both means non-zero, so m + m' or a missing m' would show)."""
    mean = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    ref = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    std = torch.tensor([[0.5], [2.0]])
    want = torch.tensor([(1 / 0.5 + 4 / 0.5) / 2, (9 / 8 + 4 / 8) / 2])
    torch.testing.assert_close(flow.ExplorationNoise().kl(mean, ref, std), want)


@pytest.mark.parametrize("shape,channel_dim", [((2, 3, 2, 8, 24), 2), ((2, 2, 8, 24), 1)])
def test_coarse_noise_on_non_square_frames(shape, channel_dim):
    """H ≠ W, H/p ≠ p and W/p ≠ p (a cell grid of the wrong size shows); a (B, C, H, W) state has no
    whole-averaged dims. Density against the dense Gaussian,
    draws constant over every p×p cell (and over frames), and the same generator seed gives the same draw."""
    noise = flow.ExplorationNoise(white=0.5, coarse=1.0, patch=4, channel_dim=channel_dim)
    g = torch.Generator().manual_seed(3)
    z = noise.sample(shape, torch.Generator().manual_seed(0))
    assert z.shape == shape and torch.equal(z, noise.sample(shape, torch.Generator().manual_seed(0)))
    assert not torch.equal(z, noise.sample(shape, torch.Generator().manual_seed(1)))
    coarse_only = flow.ExplorationNoise(white=1e-9, coarse=1.0, patch=4, channel_dim=channel_dim).sample(shape, g)
    cells = coarse_only.unflatten(-1, (6, 4)).unflatten(-3, (2, 4))  # (..., H/p, p, W/p, p)
    assert torch.allclose(cells, cells[..., :1, :, :1], atol=1e-6)  # constant inside a cell
    mean, x_next = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    std = torch.tensor([0.5, 2.0]).view(2, *([1] * (len(shape) - 1)))
    cov = _dense_cov(shape[1:], 0.5, 1.0, 4, channel_dim)
    D = cov.shape[0]
    for b in range(2):
        mvn = torch.distributions.MultivariateNormal(mean[b].flatten().double(), cov * float(std[b]) ** 2)
        torch.testing.assert_close(noise.logprob(x_next, mean, std)[b].double(),
                                   mvn.log_prob(x_next[b].flatten().double()) / D, rtol=1e-5, atol=1e-5)


def test_exploration_noise_defaults_fit_the_tiny_generator_and_bad_values_are_named():
    """Defaults: 8×8 cells over the channel dim 2 of (B, T, C, 64, 64) states; a 1×1 cell is allowed."""
    z = flow.ExplorationNoise(white=1e-9, coarse=1.0).sample((1, 2, 3, 64, 64), torch.Generator().manual_seed(0))
    assert torch.allclose(z[:, :1], z[:, 1:], atol=1e-6)  # shared by the frames (dim 1), not by the channels
    assert not torch.allclose(z[:, :, :1], z[:, :, 1:2])
    cells = z.unflatten(-1, (8, 8)).unflatten(-3, (8, 8))
    assert torch.allclose(cells, cells[..., :1, :, :1], atol=1e-6)
    flow.ExplorationNoise(coarse=1.0, patch=1).sample((1, 1, 1, 3, 5))
    with pytest.raises(ValueError, match="coarse ≥ 0, patch ≥ 1; got white=1.0, coarse=-1.0, patch=8"):
        flow.ExplorationNoise(coarse=-1.0)
    with pytest.raises(ValueError, match="patch=0"):
        flow.ExplorationNoise(coarse=1.0, patch=0)
    with pytest.raises(ValueError, match="patch 4 must divide the spatial size 8×6"):
        flow.ExplorationNoise(coarse=1.0, patch=4).sample((1, 1, 1, 8, 6))
