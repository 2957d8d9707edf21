"""Stable Diffusion XL beside the other models (paper Section 4, Appendix G). Extra: `lcsbench[sdxl]`.

The loader: any SDXL pipeline from a local folder, with the standard EulerDiscreteScheduler. The paper uses
`stabilityai/stable-diffusion-xl-base-1.0`; lcsbench never reaches the hub: the weights are downloaded elsewhere
and the folder is passed by path.

The adapter: `SDXLDenoiser(x, sigma, cond) -> D` follows the EDM convention of docs/architecture.md: x is the noisy
latent `[B, 4, h, w]` at noise level sigma (x = x0 + sigma * n), D the denoised latent, the score (D - x) / sigma^2.
SDXL is a discrete-time epsilon predictor (EulerDiscreteScheduler convention, Karras et al. 2022 Table 1,
"VP" column in sigma form): the UNet sees c_in(sigma) x with c_in = 1 / sqrt(sigma^2 + 1) at the timestep t
whose training sigma is `sigma`, and
    epsilon prediction:  D = x - sigma * eps
    v prediction:        D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v
With guidance_scale w != 1 the output is classifier-free guided, D = D_u + w (D_c - D_u), exactly the
pipeline's guided prediction. So `lcsbench.analysis.locality.pixel_jacobian` and friends run on SDXL unchanged,
and the SDXL studies (analysis/sdxl/studies.py) take this class as their `adapter`.

`sample_euler` runs diffusion/sampler.py's `euler_sampler` on the pipeline's own noise schedule. Prompts become
an `SDXLCondition` in analysis/sdxl/pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from lcsbench.analysis.sdxl.pipeline import SDXLCondition, inference_sigmas
from lcsbench.diffusion.sampler import EulerRun, euler_sampler

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
# The adapter: the SDXL UNet as an lcsbench denoiser in the VAE latent space

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
# Euler sampling with the pipeline's own noise schedule (the EulerDiscreteScheduler's deterministic step)


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
    return euler_sampler(denoiser, noise, cond, schedule, init_scale, record_steps, stop_after, on_step_end)
