"""Encoding prompts for a loaded Stable Diffusion XL pipeline, and its noise schedule (paper Appendix G).

`SDXLCondition` is the structured conditioner the SDXL denoiser adapter (models/sdxl.py, which also loads the
pipeline) takes as `cond`. Everything here works on a loaded pipeline object and imports no diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------------------------
# The structured conditioner of SDXL: text tokens for cross-attention, pooled text and size ids for the
# added "text_time" embedding.


@dataclass
class SDXLCondition:
    """SDXL's conditioning for a batch: prompt_embeds `[B, 77, D]` (both text encoders' penultimate layers,
    concatenated), pooled `[B, P]` (text_encoder_2's projection), time_ids `[B, 6]` (original size, crop
    top-left, target size, in pixels)."""

    prompt_embeds: Tensor
    pooled: Tensor
    time_ids: Tensor

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def select(self, index: Tensor | slice | list[int]) -> "SDXLCondition":
        return SDXLCondition(self.prompt_embeds[index], self.pooled[index], self.time_ids[index])

    def repeat(self, times: int) -> "SDXLCondition":
        """The batch repeated `times` times, batch-major blocks like torch.cat([c] * times)."""
        return SDXLCondition(self.prompt_embeds.repeat(times, 1, 1), self.pooled.repeat(times, 1),
                             self.time_ids.repeat(times, 1))

    @staticmethod
    def cat(conditions: Sequence["SDXLCondition"]) -> "SDXLCondition":
        return SDXLCondition(torch.cat([c.prompt_embeds for c in conditions]),
                             torch.cat([c.pooled for c in conditions]),
                             torch.cat([c.time_ids for c in conditions]))


def size_ids(height: int, width: int, batch: int, dtype: torch.dtype, device) -> Tensor:
    """SDXL's micro-conditioning (Podell et al. 2023): original size, crop (0, 0), target size, in pixels."""
    ids = torch.tensor([height, width, 0, 0, height, width], dtype=dtype, device=device)
    return ids.expand(batch, 6).clone()


def image_size(pipe) -> tuple[int, int]:
    """The pipeline's native image size in pixels (1024 x 1024 for SDXL base)."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return int(side), int(side)


def image_and_latent_size(pipe, height: int | None, width: int | None) -> tuple[int, int, tuple[int, int]]:
    """Requested image size (the native one where None) and the latent size it maps to."""
    native = image_size(pipe)
    height, width = height or native[0], width or native[1]
    return height, width, (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


@torch.no_grad()
def encode_prompts(
    pipe,                                   # an SDXL pipeline
    prompts: Sequence[str],                 # one prompt per sample
    height: int | None = None,              # image height in pixels; None: the pipeline's native size
    width: int | None = None,               # image width in pixels; None: the pipeline's native size
) -> SDXLCondition:
    """Prompts encoded exactly like the pipeline's positive prompt (its own tokenizers and encoders)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    native = image_size(pipe)
    height, width = height or native[0], width or native[1]
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=list(prompts), device=pipe.unet.device,
                                              num_images_per_prompt=1, do_classifier_free_guidance=False)
    dtype = pipe.unet.dtype
    return SDXLCondition(embeds.to(dtype), pooled.to(dtype),
                         size_ids(height, width, len(prompts), dtype, pipe.unet.device))


@torch.no_grad()
def unconditional_condition(pipe, batch: int, height: int | None = None, width: int | None = None) -> SDXLCondition:
    """The negative branch of classifier-free guidance, as the pipeline builds it without a negative prompt:
    zeros when the pipeline forces zeros for an empty prompt (SDXL base does), else the encoded ""."""
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        positive = encode_prompts(pipe, [""], height, width)
        zero = SDXLCondition(torch.zeros_like(positive.prompt_embeds), torch.zeros_like(positive.pooled),
                             positive.time_ids)
        return zero.repeat(batch)
    return encode_prompts(pipe, [""] * batch, height, width)


@torch.no_grad()
def decode_latents(pipe, latents: Tensor) -> Tensor:
    """Images `[B, 3, H, W]` in [0, 1] from SDXL latents (undoing the VAE's scaling, as the pipeline does)."""
    vae = pipe.vae
    config = vae.config
    latents = latents.to(vae.device, torch.float32 if config.get("force_upcast", False) else vae.dtype)
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        mean = torch.tensor(config.latents_mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        std = torch.tensor(config.latents_std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    original_dtype = vae.dtype
    if latents.dtype == original_dtype:
        images = vae.decode(latents, return_dict=False)[0]
    else:  # SDXL's fp16 VAE overflows: decode in float32 (its config's force_upcast), then cast back
        vae.to(latents.dtype)
        try:
            images = vae.decode(latents, return_dict=False)[0]
        finally:
            vae.to(original_dtype)
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


def inference_sigmas(scheduler, num_inference_steps: int) -> tuple[list[float], float]:
    """The scheduler's sigma at each of num_inference_steps steps plus the final 0, and its initial noise
    scale, computed on a copy so the pipeline's scheduler is left untouched."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(num_inference_steps)
    return [float(s) for s in copy.sigmas], float(copy.init_noise_sigma)
