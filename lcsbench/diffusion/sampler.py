"""The EDM sampler (Karras et al. 2022, Alg. 2): Heun's 2nd-order ODE solver with optional churn.

`num_steps` noise levels `sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho`, then 0. Each
step takes an Euler step and, except into sigma = 0, a Heun correction: 32 steps = 63 denoiser calls. The
paper samples with the raw conditional denoiser (no guidance), so guidance is the caller's business: wrap
two denoisers into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x, sigma, cond) -> D(x)


def noise_levels(
    num_steps: int = 32,  # N
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
    num_steps: int = 32,  # noise levels before the final sigma = 0
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
