"""One loader for every kind of denoiser (as k-diffusion keeps its model adapters together): whatever a command's
--ckpt or --model names, the module that presents `denoiser(x, sigma, cond)` (diffusion/denoiser.py).

    trained global or patch-local model   a Lightning .ckpt from `fit`, an EMA snapshot or reconstruction, or
                                          an export (`export_ema_weights`): rebuilt from its architecture record
                                          (checkpoints.py) with the chosen weights; `EDM2Diffusion` or a subclass
                                          such as `PatchLocalDiffusion`
    closed form                           a spec from `closed-form spec` (models/closed_form.py), built from its
                                          render
    SDXL                                  a local diffusers folder (models/sdxl.py), wrapped as `SDXLDenoiser`

`load_denoiser` reads a file and dispatches on what it holds; `load_sdxl_denoiser` takes a pipeline folder. The
modules themselves (models/edm2.py, models/patch.py, models/closed_form.py, models/sdxl.py) know nothing of each
other's files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from lcsbench.checkpoints import (ARCH_KEY, DATA_HPARAMS_KEY, EMA_STATE_KEY, load_net_state, read_checkpoint,
                                  read_record, rebuild, write_export)
from lcsbench.diffusion.phema import ema_net_state, tracked_index
from lcsbench.models.closed_form import ClosedFormModel, closed_form_from_payload, is_closed_form_spec
from lcsbench.models.edm2 import EDM2Diffusion


# --- trained models and closed forms: one file, dispatched on what it holds ---------------------------------------


def load_denoiser(
    path: str | Path,  # a Lightning .ckpt from `fit`, or a .pt from the EMA callback / `reconstruct-ema` / export
    ema: bool = True,  # use EMA weights (checkpoints only; EMA files hold nothing else)
    sigma_rel: float | None = None,  # which tracked EMA; None: the first tracked (0.05 by default)
    map_location: str | torch.device = "cpu",
) -> EDM2Diffusion | ClosedFormModel:
    """Rebuild a trained module in eval mode; `module.denoiser(x, sigma, cond)` then uses the chosen weights. A
    closed-form spec (`python -m lcsbench closed-form spec`, issue 23) is built from its render instead."""
    payload = read_checkpoint(path, "pass a checkpoint written by `python -m lcsbench fit` (runs/<experiment>/.../"
                                    "checkpoints/last.ckpt) or an EMA file from `reconstruct-ema`", map_location)
    if is_closed_form_spec(payload):
        return closed_form_from_payload(payload, path, map_location)
    return module_from_payload(payload, path, ema, sigma_rel)


def module_from_payload(payload: dict, path: str | Path, ema: bool = True,
                        sigma_rel: float | None = None) -> EDM2Diffusion:
    """The module a checkpoint payload (checkpoints.read_checkpoint) describes, with the chosen weights, in eval
    mode."""
    record = read_record(payload, ARCH_KEY, path, "an lcsbench diffusion checkpoint",
                         "Pass a checkpoint written by `python -m lcsbench fit` with an EDM2 model, or an EMA file "
                         "written by `reconstruct-ema`")
    if "label_scale" not in record["module_hparams"]:  # written before the option: labels were unit-norm
        record = {**record, "module_hparams": {**record["module_hparams"], "label_scale": "unit"}}
    module = rebuild(record, path, compile=False)
    if "net_state" in payload:  # an EMA snapshot, reconstruction or export: the network weights alone
        load_net_state(module.net, payload["net_state"], path)
    else:
        module.load_state_dict(payload["state_dict"])
        if ema:
            averages = payload.get("callbacks", {}).get(EMA_STATE_KEY)
            if averages is None:
                warnings.warn(f"{path} holds no power-function EMA (the run had no PowerFunctionEMA callback): "
                              f"using the raw training weights")
            else:
                load_net_state(module.net, ema_net_state(averages, module.net, sigma_rel), path)
    return module.eval()


def export_ema_weights(
    path: str | Path,  # a Lightning .ckpt from `fit` (with the PowerFunctionEMA callback's averages)
    out: str | Path,  # the evaluation file to write (.pt)
    metadata: dict[str, Any],  # plain data recorded beside the weights (wall time, config, ...)
    sigma_rel: float | None = None,  # which tracked EMA; None: the first tracked (0.05 by default)
    stored_dtype: torch.dtype = torch.float32,  # float16 halves the file; loading casts back to the net's dtype
) -> dict[str, Any]:
    """Write a run's EMA weights as a small file that `load_denoiser` and every command's --ckpt accept, carrying
    what `lengthgen` reads from a checkpoint (the DataModule's settings: trained counts, label mode, grid size,
    resolution) and `metadata`. Returns what was recorded besides the weights. With float16 storage the
    denoiser's output moves by ~0.1% (relative L2, fp32 evaluation of the cpu study's models), below what the bf16
    evaluation default moves it (~0.5%); a weight beyond float16's range is refused rather than stored as inf."""
    payload = read_checkpoint(path, "pass the last.ckpt written by `python -m lcsbench fit`")
    averages = payload.get("callbacks", {}).get(EMA_STATE_KEY)
    if averages is None or "net_state" in payload:
        raise ValueError(f"{path} holds no power-function EMA of a training run (no {EMA_STATE_KEY} callback state): "
                         f"export a checkpoint of a run trained with lcsbench.callbacks.ema.PowerFunctionEMA")
    module = module_from_payload(payload, path, ema=True, sigma_rel=sigma_rel)
    data_settings = payload.get(DATA_HPARAMS_KEY)
    recorded = {**metadata, "step": int(payload.get("global_step", 0)), "source": str(path),
                "sigma_rel": float(averages["sigma_rels"][tracked_index(averages["sigma_rels"], sigma_rel)]),
                "parameters": sum(p.numel() for p in module.net.parameters()),
                "stored_dtype": str(stored_dtype).removeprefix("torch.")}
    write_export(out, module.describe(), stored_state(module.net.state_dict(), stored_dtype, path), data_settings,
                 recorded)
    return {**recorded, DATA_HPARAMS_KEY: data_settings}


def stored_state(state: dict[str, torch.Tensor], dtype: torch.dtype, path: str | Path) -> dict[str, torch.Tensor]:
    """The floating-point tensors of `state` cast to `dtype` for storage; an overflow is refused by name."""
    stored = {}
    for name, tensor in state.items():
        cast = tensor.to(dtype) if tensor.is_floating_point() else tensor
        if cast.is_floating_point() and not torch.isfinite(cast).all() and torch.isfinite(tensor).all():
            raise ValueError(f"{path}: EMA weight {name} exceeds {dtype}'s range (max |w| "
                             f"{tensor.abs().max().item():.3g}): export it as float32")
        stored[name] = cast
    return stored


# --- SDXL: a pipeline folder -------------------------------------------------------------------------------------


def load_sdxl_denoiser(
    folder: str | Path,  # local diffusers SDXL folder (model_index.json, unet/, vae/, ...)
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,  # weights dtype; None: as stored
    guidance_scale: float = 1.0,  # classifier-free guidance weight; 1: the conditional denoiser alone
):
    """The SDXL UNet of a local pipeline folder as a denoiser in its VAE latent space (`SDXLDenoiser`, in eval
    mode), and the pipeline it came from (its text encoders build the `SDXLCondition`s): `(denoiser, pipe)`.
    Needs the `sdxl` extra (diffusers, transformers)."""
    from lcsbench.analysis.sdxl.pipeline import unconditional_condition
    from lcsbench.models.sdxl import SDXLDenoiser, load_sdxl_pipeline

    pipe = load_sdxl_pipeline(folder, device=device, dtype=dtype)
    unconditional = unconditional_condition(pipe, 1) if guidance_scale != 1.0 else None
    return SDXLDenoiser(pipe.unet, pipe.scheduler, guidance_scale, unconditional).eval(), pipe
