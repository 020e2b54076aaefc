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


def test_sample_draws_its_noise_from_the_caller_and_shows_every_step_to_the_hook():
    """``noise`` replaces the sampler's own draws (GRPO draws on a CPU generator whatever the device);
    ``on_step`` sees each step's state, velocity and next state, exactly as the trajectory records them."""
    x_T, _ = _state(7)
    sigmas = flow.sigma_schedule(4)
    g = torch.Generator().manual_seed(3)
    drawn: list[torch.Tensor] = []

    def noise(shape: torch.Size) -> torch.Tensor:
        drawn.append(torch.randn(shape, generator=g, dtype=torch.float64))
        return drawn[-1]

    seen: list[tuple] = []
    x0, traj, lps = flow.sample(_toy_denoiser, x_T, sigmas, mode="sde", noise_level=0.7, sde_window=(1, 3),
                                noise=noise, on_step=lambda i, x, v, nxt: seen.append((i, x, v, nxt)))
    assert len(drawn) == 2 and all(d.shape == x_T.shape for d in drawn)  # one draw per SDE step, none elsewhere
    for k, i in enumerate((1, 2)):  # the SDE steps moved by exactly those draws (cast to the state's dtype)
        v = _toy_denoiser(traj[i], sigmas[i].expand(3))
        want, lp = flow.sde_step(traj[i], v, sigmas[i], sigmas[i + 1], 0.7, noise=drawn[k].float())
        assert torch.equal(traj[i + 1], want) and torch.equal(lps[:, i], lp)
    assert [i for i, *_ in seen] == [0, 1, 2, 3]
    for i, x, v, nxt in seen:
        assert x is traj[i] and nxt is traj[i + 1] and torch.equal(v, _toy_denoiser(traj[i], sigmas[i].expand(3)))
    assert nxt is x0
    # without a noise function the sampler draws from its generator, as before
    own = flow.sample(_toy_denoiser, x_T, sigmas, mode="sde", noise_level=0.7, sde_window=(1, 3),
                      generator=torch.Generator().manual_seed(3))
    assert not torch.equal(own[0], x0) and torch.equal(own[1][1], traj[1])


def test_transition_kl_is_the_gaussian_kl_and_a_mask_keeps_only_its_elements():
    g = torch.Generator().manual_seed(0)
    mean, mean_ref = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    std = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1)
    per = torch.distributions.kl_divergence(torch.distributions.Normal(mean.double(), std.double()),
                                            torch.distributions.Normal(mean_ref.double(), std.double()))
    kl = flow.gaussian_kl(mean, mean_ref, std)
    assert kl.dtype == torch.float32 and kl.shape == (2,)
    torch.testing.assert_close(kl.double(), per.mean(dim=(1, 2, 3)))
    assert torch.equal(flow.gaussian_kl(mean, mean, std), torch.zeros(2))
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, :2], mask[1, :, 3] = True, True
    want = torch.stack([per[0][:, :2].mean(), per[1][:, 3].mean()])
    torch.testing.assert_close(flow.gaussian_kl(mean, mean_ref, std, mask).double(), want)
    moved = torch.where(mask.expand_as(mean), mean, mean + 3.0)  # outside the mask: not seen
    torch.testing.assert_close(flow.gaussian_kl(moved, mean_ref, std, mask), flow.gaussian_kl(mean, mean_ref, std, mask))
    # one element kept: its own KL, not diluted; none kept: 0, not NaN (an empty window contributes nothing)
    one = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    one[0, 1, 2, 3] = True
    torch.testing.assert_close(flow.gaussian_kl(mean, mean_ref, std, one).double(),
                               torch.stack([per[0, 1, 2, 3], torch.zeros((), dtype=torch.float64)]))


# ---- edges and bad input (each assertion kills a mutant that survived the tests above: benchmarks/mutation.py)
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


def test_plain_noise_kl_hand_worked():
    """Same std s: KL(N(m, s²) ‖ N(m', s²)) = (m − m')² / (2s²) per element, averaged per sample (the second
    sample has both means non-zero, so m + m' or a missing m' would show)."""
    mean = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    ref = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    std = torch.tensor([[0.5], [2.0]])
    want = torch.tensor([(1 / 0.5 + 4 / 0.5) / 2, (9 / 8 + 4 / 8) / 2])
    torch.testing.assert_close(flow.gaussian_kl(mean, ref, std), want)
