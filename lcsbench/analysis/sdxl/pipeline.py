"""Loading a Stable Diffusion XL pipeline from a local folder and encoding prompts (paper Appendix G).

The paper uses `stabilityai/stable-diffusion-xl-base-1.0` with the standard EulerDiscreteScheduler. lcsbench
never reaches the hub: the weights are downloaded elsewhere and the folder is passed by path.
`SDXLCondition` is the structured conditioner the SDXL denoiser adapter takes as `cond`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

PAPER_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
DOWNLOAD_HINT = (
    f"download the weights on a machine with internet access, e.g. `hf download {PAPER_MODEL} "
    f"--local-dir sdxl-base` (or `huggingface-cli download ...`, or "
    f"`StableDiffusionXLPipeline.from_pretrained('{PAPER_MODEL}').save_pretrained('sdxl-base')`), copy the "
    f"folder here and pass it with --model sdxl-base"
)


class NotAPipelineError(ValueError):
    """The path given as an SDXL pipeline is not a usable diffusers SDXL folder."""


def check_pipeline_folder(path: str | Path) -> Path:
    """The folder as a Path if it looks like a diffusers SDXL pipeline; a clear error that says why not."""
    folder = Path(path)
    if not folder.exists():
        raise NotAPipelineError(f"SDXL pipeline folder {str(folder)!r} does not exist: {DOWNLOAD_HINT}")
    if not folder.is_dir():
        raise NotAPipelineError(
            f"{str(folder)!r} is a file, but an SDXL pipeline is a folder with model_index.json and the "
            f"sub-folders {', '.join(SDXL_COMPONENTS)}: {DOWNLOAD_HINT}")
    index = folder / "model_index.json"
    found = sorted(p.name for p in folder.iterdir())
    if not index.is_file():
        raise NotAPipelineError(
            f"{str(folder)!r} is not a diffusers pipeline: expected model_index.json and the sub-folders "
            f"{', '.join(SDXL_COMPONENTS)}, found {found[:20]}: {DOWNLOAD_HINT}")
    try:
        spec = json.loads(index.read_text())
    except json.JSONDecodeError as error:
        raise NotAPipelineError(f"{index} is not valid JSON ({error}): re-download the pipeline") from error
    missing = [name for name in SDXL_COMPONENTS if name not in spec or not (folder / name).is_dir()]
    if missing:
        raise NotAPipelineError(
            f"{str(folder)!r} is a {spec.get('_class_name', 'diffusers')} folder but not a Stable Diffusion XL "
            f"text-to-image pipeline: it lacks the components {missing} (an SDXL folder has "
            f"{', '.join(SDXL_COMPONENTS)}); pass the folder of {PAPER_MODEL} or another SDXL base model")
    return folder


def load_sdxl_pipeline(
    path: str | Path,                       # local diffusers folder (model_index.json, unet/, vae/, ...)
    device: str | torch.device = "cpu",     # where the pipeline runs
    dtype: torch.dtype | None = None,       # weights dtype; None: as stored (float32 for most folders)
):
    """An SDXL pipeline from a local folder, with the standard EulerDiscreteScheduler (Appendix G).

    Never touches the network (`local_files_only`). A non-Euler scheduler in the folder is replaced by an
    EulerDiscreteScheduler built from the same config, because the paper's analyses are defined on it.
    """
    folder = check_pipeline_folder(path)
    try:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    except ImportError as error:  # the sdxl extra is not installed
        raise ImportError(f"the SDXL analyses need diffusers and transformers: pip install 'lcsbench[sdxl]' "
                          f"({error})") from error
    kwargs = {"local_files_only": True, "add_watermarker": False}
    if dtype is not None:  # recent diffusers name it `dtype` and deprecate `torch_dtype`
        kwargs["dtype" if _accepts_dtype_keyword() else "torch_dtype"] = dtype
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise NotAPipelineError(f"could not load an SDXL pipeline from {str(folder)!r}: {error}. Check that every "
                                f"component folder holds its config and weights: {DOWNLOAD_HINT}") from error
    if not isinstance(pipe.scheduler, EulerDiscreteScheduler):
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _accepts_dtype_keyword() -> bool:
    """Whether this diffusers resolves `dtype=` in from_pretrained (older releases only know torch_dtype)."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return False
    return hasattr(deprecation_utils, "_resolve_dtype")


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
