"""The EDM2 training loss with the learned uncertainty u(sigma) (Karras et al. 2024, Eq. 21; EDM Eq. 8).

Per element: `(lambda(sigma) / exp(u)) * (D(y + n; sigma) - y)^2 + u`, with `ln sigma ~ N(P_mean, P_std^2)` and
`lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2`. EDM2 sums over C x H x W and averages over
the batch; `edm2_loss` returns that per-image sum so the caller takes the (global) batch mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_training_sigma(
    batch_size: int,  # number of images
    P_mean: float = -0.8,  # mean of ln(sigma) (img64 presets)
    P_std: float = 1.6,  # std of ln(sigma)
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`[N, 1, 1, 1]` log-normal noise levels of the EDM training distribution."""
    normal = torch.randn(batch_size, 1, 1, 1, device=device, generator=generator)
    return (P_mean + P_std * normal).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2: unit expected loss at init (EDM Eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm2_loss(
    net: Callable[..., tuple[torch.Tensor, torch.Tensor]],  # net(x, sigma, labels, return_logvar=True)
    images: torch.Tensor,  # clean images [N, C, H, W] in [-1, 1]
    labels: torch.Tensor | None,  # label vectors [N, label_dim]
    P_mean: float = -0.8,  # mean of ln(sigma)
    P_std: float = 1.6,  # std of ln(sigma)
    sigma_data: float = 0.5,  # data std used by lambda(sigma)
    generator: torch.Generator | None = None,
    noise_mask: torch.Tensor | None = None,  # 1 where noise is added, 0 elsewhere (patch borders); None: all
) -> torch.Tensor:
    """Per-image EDM2 loss `[N]`: the uncertainty-weighted denoising error summed over C x H x W."""
    sigma = sample_training_sigma(images.shape[0], P_mean, P_std, images.device, generator)
    noise = torch.randn(images.shape, device=images.device, generator=generator) * sigma
    if noise_mask is not None:
        noise = noise * noise_mask
    denoised, logvar = net(images + noise, sigma, labels, return_logvar=True)
    per_element = loss_weight(sigma, sigma_data) / logvar.exp() * (denoised - images) ** 2 + logvar
    return per_element.flatten(1).sum(dim=1)


def denoising_error(
    denoised: torch.Tensor,  # D(y + n; sigma) [N, C, H, W]
    images: torch.Tensor,  # clean images y
    sigma: torch.Tensor | float,  # noise level(s), scalar or [N]
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """Per-image `lambda(sigma) * mean((D - y)^2)` `[N]`: the validation figure (1.0 = predicting c_skip x)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=images.device).reshape(-1)
    mse = (denoised.to(torch.float32) - images.to(torch.float32)).pow(2).flatten(1).mean(dim=1)
    return loss_weight(sigma, sigma_data) * mse
