"""The samplers, one signature `sampler(denoiser, noise, cond, ...)`: the EDM sampler (Karras et al. 2022,
Alg. 2), Heun's 2nd-order ODE solver with optional churn, and the Euler sampler of a given noise schedule.

`num_steps` noise levels `sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho`, then 0. Each
step takes an Euler step and, except into sigma = 0, a Heun correction: 32 steps = 63 denoiser calls. The
paper samples with the raw conditional denoiser (no guidance), so guidance is the caller's business: wrap
two denoisers into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x, sigma, cond) -> D(x)

PAPER_HEUN_STEPS = 32  # the paper's sampler: 32 Heun steps, no guidance (App. E.1)


def noise_levels(
    num_steps: int = PAPER_HEUN_STEPS,  # N
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`[N + 1]` float64 noise levels from sigma_max down to sigma_min, then a final 0 (EDM Eq. 5)."""
    if num_steps < 2:
        raise ValueError(f"the EDM sampler needs num_steps >= 2, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + i / (num_steps - 1) * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64, device=device)])


@torch.no_grad()
def edm_sampler(
    denoiser: Denoiser,  # denoiser(x, sigma, cond) -> D(x); sigma is passed as a 0-d tensor
    noise: torch.Tensor,  # [N, C, H, W] standard normal
    cond: Any,  # conditioner handed unchanged to the denoiser
    num_steps: int = PAPER_HEUN_STEPS,  # noise levels before the final sigma = 0
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,  # stochasticity; 0 = deterministic ODE
    S_min: float = 0.0,  # churn only for sigma in [S_min, S_max]
    S_max: float = float("inf"),
    S_noise: float = 1.0,  # std multiplier of the churn noise
    generator: torch.Generator | None = None,  # for the churn noise
    dtype: torch.dtype = torch.float32,  # arithmetic precision of the solver
) -> torch.Tensor:
    """Samples `[N, C, H, W]` from the EDM probability-flow ODE (SDE with churn), starting at sigma_max."""
    sigmas = noise_levels(num_steps, sigma_min, sigma_max, rho, device=noise.device)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoiser(x, sigma.to(dtype), cond).to(dtype)

    x_next = noise.to(dtype) * sigmas[0].to(dtype)
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x_cur = x_next
        # Churn: raise the noise level from t_cur to t_hat by adding fresh noise (Alg. 2, lines 4-6).
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= float(t_cur) <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            fresh = torch.randn(x_cur.shape, device=x_cur.device, generator=generator, dtype=dtype)
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt().to(dtype) * S_noise * fresh

        # Euler step, then Heun's correction unless stepping to sigma = 0.
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat.to(dtype)
        x_next = x_hat + (t_next - t_hat).to(dtype) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next.to(dtype)
            x_next = x_hat + (t_next - t_hat).to(dtype) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


# ---------------------------------------------------------------------------------------------------------------
# Euler sampling on a given noise schedule (the deterministic step x <- x + (sigma_next - sigma) (x - D) / sigma,
# EulerDiscreteScheduler's without churn), recording the state at chosen steps: the SDXL studies' sampler.


@dataclass
class EulerRun:
    """States of one Euler run: `states[k]` is the latent fed to step k (1-based) at noise `sigmas[k]`;
    `final` the latent after the last step; `schedule` every step's input sigma (length num_steps + 1, last 0)."""

    states: dict[int, torch.Tensor] = field(default_factory=dict)
    sigmas: dict[int, float] = field(default_factory=dict)
    final: torch.Tensor | None = None
    schedule: list[float] = field(default_factory=list)


def check_steps(steps: Sequence[int], num_inference_steps: int) -> list[int]:
    bad = [s for s in steps if not 1 <= int(s) <= num_inference_steps]
    if bad or not steps:
        raise ValueError(f"steps are 1-based denoising step numbers in 1..{num_inference_steps}; found "
                         f"{list(steps)}: choose steps within the run of {num_inference_steps} steps")
    return sorted({int(s) for s in steps})


@torch.no_grad()
def euler_sampler(
    denoiser: Denoiser,  # denoiser(x, sigma, cond) -> D(x); sigma is passed as a float
    noise: torch.Tensor,  # [N, C, H, W] standard normal
    cond: Any,  # conditioner handed unchanged to the denoiser
    sigmas: Sequence[float],  # noise level at the input of each step, then a final 0 (num_steps + 1 values)
    init_scale: float | None = None,  # initial noise scale; None: sigmas[0]
    record_steps: Sequence[int] = (),  # 1-based steps whose input state to keep
    stop_after: int | None = None,  # stop once this step's input is recorded; None: run to the end
    on_step_end: Callable[[int, float], None] | None = None,  # called after step k (1-based) with its sigma
) -> EulerRun:
    """Deterministic Euler sampling from `noise * init_scale` down the schedule `sigmas` (no churn)."""
    schedule = [float(s) for s in sigmas]
    num_steps = len(schedule) - 1
    record = set(check_steps(record_steps, num_steps)) if record_steps else set()
    run = EulerRun(schedule=schedule)
    x = noise * (schedule[0] if init_scale is None else init_scale)
    for k in range(1, num_steps + 1):
        sigma, sigma_next = schedule[k - 1], schedule[k]
        if k in record:
            run.states[k], run.sigmas[k] = x.clone(), sigma
        if stop_after is not None and k >= stop_after:
            return run
        denoised = denoiser(x, sigma, cond)
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
        if on_step_end is not None:
            on_step_end(k, sigma)
    run.final = x
    return run
