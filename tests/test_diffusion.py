"""EDM math: sampler on an analytic Gaussian denoiser, noise levels, loss weighting, learning-rate schedule."""

import math

import pytest
import torch

from lcsbench.diffusion.loss import denoising_error, edm2_loss, loss_weight, sample_training_sigma
from lcsbench.diffusion.sampler import edm_sampler, noise_levels
from lcsbench.diffusion.schedule import learning_rate


def gaussian_denoiser(mean: torch.Tensor, std: torch.Tensor):
    """Exact D(x; sigma) = E[y | y + n = x] for y ~ N(mean, diag(std^2)), n ~ N(0, sigma^2)."""

    def denoise(x, sigma, cond):
        shrink = std**2 / (std**2 + sigma**2)
        return mean + shrink * (x - mean)

    return denoise


def test_noise_levels_follow_the_edm_schedule():
    sigmas = noise_levels(32, 0.002, 80.0, 7.0)
    assert sigmas.shape == (33,)
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[31].item() == pytest.approx(0.002)
    assert sigmas[32] == 0 and torch.all(sigmas[1:] < sigmas[:-1])
    # rho = 7 spacing: sigma^(1/7) is linear in the step index
    root = sigmas[:32] ** (1 / 7)
    assert torch.allclose(root.diff(), root.diff()[0].expand(31), atol=1e-9)


MEAN = torch.tensor([0.3, -0.5, 0.0, 0.8]).reshape(1, 4, 1, 1)
STD = torch.tensor([0.5, 0.2, 1.0, 0.1]).reshape(1, 4, 1, 1)


@pytest.mark.parametrize("num_steps,churn,rtol", [(32, 0.0, 0.03), (128, 40.0, 0.02)])
def test_sampler_reproduces_a_gaussian_data_distribution(num_steps, churn, rtol):
    torch.manual_seed(0)
    calls = []
    exact = gaussian_denoiser(MEAN, STD)

    def counting(x, sigma, cond):
        assert sigma.ndim == 0 and cond == "any conditioner"
        calls.append(float(sigma))
        return exact(x, sigma, cond)

    noise = torch.randn(4096, 4, 4, 4)
    samples = edm_sampler(counting, noise, "any conditioner", num_steps=num_steps, S_churn=churn,
                          generator=torch.Generator().manual_seed(1))
    assert len(calls) == 2 * num_steps - 1  # 32 steps: 32 Euler steps + 31 Heun corrections = 63
    per_channel = samples.transpose(0, 1).flatten(1)
    # the ODE starts from N(0, 80^2), not N(mean, 80^2 + std^2): the mean is off by std/80 of itself at most
    assert torch.allclose(per_channel.mean(1), MEAN.flatten(), atol=0.02)
    assert torch.allclose(per_channel.std(1), STD.flatten(), rtol=rtol)


def test_deterministic_sampler_converges_to_the_exact_ode_solution():
    # For Gaussian data the probability-flow ODE maps x(80) to mean + std / sqrt(std^2 + 80^2) (x(80) - mean);
    # Heun is second order, so 4x the steps cut the error by about 16x.
    noise = torch.randn(512, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    exact = MEAN + STD / (STD**2 + 80.0**2).sqrt() * (80.0 * noise - MEAN)
    errors = [(edm_sampler(gaussian_denoiser(MEAN, STD), noise, None, num_steps=n) - exact).abs().max().item()
              for n in (32, 128)]
    assert errors[1] < 0.005 and errors[1] < errors[0] / 8, errors


def test_deterministic_sampler_is_a_function_of_the_noise():
    mean, std = torch.zeros(1, 3, 1, 1), torch.full((1, 3, 1, 1), 0.5)
    noise = torch.randn(2, 3, 8, 8)
    a = edm_sampler(gaussian_denoiser(mean, std), noise, None, num_steps=8)
    b = edm_sampler(gaussian_denoiser(mean, std), noise, None, num_steps=8)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_steps >= 2"):
        edm_sampler(gaussian_denoiser(mean, std), noise, None, num_steps=1)


class ConstantLogvarSkipNet:
    """D = c_skip x (the network at init) with a fixed log-variance u."""

    def __init__(self, logvar: float):
        self.logvar = logvar

    def __call__(self, x, sigma, labels, return_logvar=False):
        d = 0.25 / (sigma**2 + 0.25) * x
        return d, torch.full_like(sigma, self.logvar)


@pytest.mark.parametrize("logvar", [0.0, math.log(2.0)])
def test_edm2_loss_weighting_gives_exp_minus_u_plus_u_at_init(logvar):
    # With data of std sigma_data, E[lambda (c_skip x - y)^2] = 1 at every sigma (EDM Eq. 8),
    # so the per-element loss is exp(-u) + u and the per-image sum is C*H*W times that.
    gen = torch.Generator().manual_seed(0)
    images = 0.5 * torch.randn(20000, 2, 3, 3, generator=gen)
    per_image = edm2_loss(ConstantLogvarSkipNet(logvar), images, None, generator=gen)
    assert per_image.shape == (20000,)
    expected = 18 * (math.exp(-logvar) + logvar)
    assert per_image.mean().item() == pytest.approx(expected, rel=0.03)


def test_training_sigma_is_lognormal_and_weight_matches_formula():
    sigma = sample_training_sigma(200_000, P_mean=-0.8, P_std=1.6, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (200_000, 1, 1, 1)
    assert sigma.log().mean().item() == pytest.approx(-0.8, abs=0.02)
    assert sigma.log().std().item() == pytest.approx(1.6, abs=0.02)
    assert loss_weight(torch.tensor(0.5)).item() == pytest.approx((0.25 + 0.25) / 0.0625)


def test_denoising_error_is_one_for_the_skip_only_denoiser():
    images = 0.5 * torch.randn(8000, 3, 4, 4)
    sigma = torch.tensor(2.0)
    noisy = images + sigma * torch.randn_like(images)
    err = denoising_error(0.25 / (sigma**2 + 0.25) * noisy, images, sigma)
    assert err.shape == (8000,) and err.mean().item() == pytest.approx(1.0, rel=0.03)


def test_learning_rate_schedule_ramps_then_decays():
    kwargs = dict(batch_size=2048, ref_lr=0.012, ref_batches=35000, rampup_images=10e6)
    assert learning_rate(0, **kwargs) == 0.0  # the first step runs with lr 0
    half_ramp = round(5e6 / 2048)
    assert learning_rate(half_ramp, **kwargs) == pytest.approx(0.012 * half_ramp * 2048 / 10e6)
    assert learning_rate(20000, **kwargs) == pytest.approx(0.012)
    assert learning_rate(4 * 35000, **kwargs) == pytest.approx(0.006)
    final = learning_rate(524288, **kwargs)  # end of the img64-xs run (1 Gi images)
    assert final == pytest.approx(0.00310, abs=1e-5)
