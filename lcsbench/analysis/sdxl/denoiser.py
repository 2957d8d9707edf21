"""The SDXL UNet as an lcsbench denoiser in the VAE latent space, and Euler sampling on it (Appendix G).

`SDXLDenoiser(x, sigma, cond) -> D` follows DESIGN.md's EDM convention: x is the noisy latent
`[B, 4, h, w]` at noise level sigma (x = x0 + sigma * n), D the denoised latent, the score (D - x) / sigma^2.
SDXL is a discrete-time epsilon predictor (EulerDiscreteScheduler convention, Karras et al. 2022 Table 1,
"VP" column in sigma form): the UNet sees c_in(sigma) x with c_in = 1 / sqrt(sigma^2 + 1) at the timestep t
whose training sigma is `sigma`, and
    epsilon prediction:  D = x - sigma * eps
    v prediction:        D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v
With guidance_scale w != 1 the output is classifier-free guided, D = D_u + w (D_c - D_u), exactly the
pipeline's guided prediction. So `lcsbench.analysis.locality.pixel_jacobian` and friends run on SDXL unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from lcsbench.analysis.sdxl.pipeline import SDXLCondition

SUPPORTED_PREDICTIONS = ("epsilon", "v_prediction")


def training_sigmas(scheduler) -> Tensor:
    """sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0 .. T-1, increasing (float64)."""
    alpha_bar = scheduler.alphas_cumprod.double()
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def timestep_for_sigma(sigma: Tensor, sigmas_train: Tensor) -> Tensor:
    """The (fractional) training timestep of each sigma, by linear interpolation in log sigma; exact at the
    integer timesteps the scheduler samples. Sigmas outside the trained range are clamped to its ends."""
    log_train = sigmas_train.log().to(sigma.device)
    log_sigma = sigma.double().clamp(sigmas_train[0].item(), sigmas_train[-1].item()).log()
    upper = torch.searchsorted(log_train, log_sigma).clamp(1, log_train.numel() - 1)
    lower = upper - 1
    weight = (log_sigma - log_train[lower]) / (log_train[upper] - log_train[lower])
    return lower.double() + weight


class SDXLDenoiser(nn.Module):
    """denoiser(x, sigma, cond: SDXLCondition) -> D for an SDXL UNet (see the module docstring)."""

    def __init__(
        self,
        unet: nn.Module,                    # diffusers UNet2DConditionModel with "text_time" added conditioning
        scheduler,                          # the pipeline's scheduler: its training noise schedule and prediction
        guidance_scale: float = 1.0,        # classifier-free guidance weight w; 1: the conditional denoiser alone
        unconditional: SDXLCondition | None = None,  # negative branch (batch 1 or B); required when w != 1
    ):
        super().__init__()
        prediction = scheduler.config.prediction_type
        if prediction not in SUPPORTED_PREDICTIONS:
            raise ValueError(f"the SDXL denoiser adapter supports prediction types {SUPPORTED_PREDICTIONS}; the "
                             f"scheduler says {prediction!r}: use an epsilon- or v-prediction SDXL checkpoint")
        if guidance_scale != 1.0 and unconditional is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs the unconditional branch: pass "
                             f"unconditional=unconditional_condition(pipe, 1)")
        self.unet = unet
        self.prediction = prediction
        self.guidance_scale = float(guidance_scale)
        self.unconditional = unconditional
        self.register_buffer("sigmas_train", training_sigmas(scheduler), persistent=False)

    # -- the Denoiser description (diffusion/denoiser.py): latent images, text conditioning --

    conditioning = "text"
    grid_size = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(latent channels, latent size, latent size) of the UNet's native resolution."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)

    @property
    def network(self) -> nn.Module:
        return self.unet

    def eps_or_v(self, x_in: Tensor, timestep: Tensor, cond: SDXLCondition) -> Tensor:
        dtype = self.unet.dtype
        out = self.unet(x_in.to(dtype), timestep.to(dtype), encoder_hidden_states=cond.prompt_embeds.to(dtype),
                        added_cond_kwargs={"text_embeds": cond.pooled.to(dtype), "time_ids": cond.time_ids.to(dtype)},
                        return_dict=False)[0]
        return out.to(x_in.dtype)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: SDXLCondition) -> Tensor:
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        cond = _broadcast(cond, batch, "cond")
        timestep = timestep_for_sigma(sigma, self.sigmas_train).to(x.device)
        s = sigma.view(-1, 1, 1, 1)
        x_in = x / (s ** 2 + 1).sqrt()  # c_in: the scheduler's scale_model_input
        if self.guidance_scale == 1.0:
            out = self.eps_or_v(x_in, timestep, cond)
        else:  # one UNet batch [unconditional; conditional], as the pipeline does
            negative = _broadcast(self.unconditional, batch, "unconditional")
            both = self.eps_or_v(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]),
                                 SDXLCondition.cat([negative, cond]))
            uncond_out, cond_out = both.chunk(2)
            out = uncond_out + self.guidance_scale * (cond_out - uncond_out)
        if self.prediction == "epsilon":
            return x - s * out
        return x / (s ** 2 + 1) - s / (s ** 2 + 1).sqrt() * out  # v prediction


def _broadcast(cond: SDXLCondition, batch: int, name: str) -> SDXLCondition:
    if len(cond) == batch:
        return cond
    if len(cond) == 1:
        return cond.repeat(batch)
    raise ValueError(f"{name} has batch {len(cond)} but x has batch {batch}: give one condition per sample or one "
                     f"for all")


# ---------------------------------------------------------------------------------------------------------------
# Euler sampling (the EulerDiscreteScheduler's deterministic step, x <- x + (sigma_next - sigma) (x - D) / sigma)
# with the pipeline's own noise schedule, recording the state at chosen steps.


@dataclass
class EulerRun:
    """States of one Euler run: `states[k]` is the latent fed to step k (1-based) at noise `sigmas[k]`;
    `final` the latent after the last step; `schedule` every step's input sigma (length num_steps + 1, last 0)."""

    states: dict[int, Tensor] = field(default_factory=dict)
    sigmas: dict[int, float] = field(default_factory=dict)
    final: Tensor | None = None
    schedule: list[float] = field(default_factory=list)


def inference_sigmas(scheduler, num_inference_steps: int) -> tuple[list[float], float]:
    """The scheduler's sigma at each of num_inference_steps steps plus the final 0, and its initial noise
    scale, computed on a copy so the pipeline's scheduler is left untouched."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(num_inference_steps)
    return [float(s) for s in copy.sigmas], float(copy.init_noise_sigma)


def check_steps(steps: Sequence[int], num_inference_steps: int) -> list[int]:
    bad = [s for s in steps if not 1 <= int(s) <= num_inference_steps]
    if bad or not steps:
        raise ValueError(f"steps are 1-based denoising step numbers in 1..{num_inference_steps}; found "
                         f"{list(steps)}: choose steps within the run of {num_inference_steps} steps")
    return sorted({int(s) for s in steps})


@torch.no_grad()
def sample_euler(
    denoiser: Callable[[Tensor, Tensor | float, SDXLCondition], Tensor],  # e.g. SDXLDenoiser
    scheduler,                              # the pipeline's EulerDiscreteScheduler (only its config is used)
    cond: SDXLCondition,                    # conditioning, batch 1 or B
    noise: Tensor,                          # unit Gaussian latent [B, 4, h, w]
    num_inference_steps: int = 50,          # Appendix G: 50 steps
    record_steps: Sequence[int] = (),       # 1-based steps whose input state to keep
    stop_after: int | None = None,          # stop once this step's input is recorded; None: run to the end
    on_step_end: Callable[[int, float], None] | None = None,  # called after step k (1-based) with its sigma
) -> EulerRun:
    """Deterministic Euler sampling, identical to the pipeline with EulerDiscreteScheduler (no churn)."""
    schedule, init_scale = inference_sigmas(scheduler, num_inference_steps)
    record = set(check_steps(record_steps, num_inference_steps)) if record_steps else set()
    run = EulerRun(schedule=schedule)
    x = noise * init_scale
    for k in range(1, num_inference_steps + 1):
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
