"""Pixel and conditional locality of a denoiser (paper Section 4, Appendix F; Figures 2, 6, 10, 12).

Every function works on the one denoiser interface of docs/architecture.md, `denoiser(x, sigma, cond) -> D`:
x `[B, C, H, W]`, sigma a scalar or `[B]`, cond the structured conditioner (location grid `[B, G, G]`,
colour counts `[B, 8]`, or any `[B, ...]` tensor of counts). No Lightning, no model internals.

- `pixel_jacobian`: Eq. 9, the mean absolute Jacobian from a target pixel to every input pixel, one
  vector-Jacobian product per (target pixel, output channel), all of them batched with `torch.func.vmap`
  over one-hot cotangents and chunked to a memory budget.
- `conditional_influence`: Eq. 10, `||D(x, C)_p - D(x, C \\ j)_p||_2` over channels, for every active
  conditioner j, with all ablations in one batched forward.
- `locality_radius`: Appendix F, the half-width of the smallest square centred on the target that holds
  a given fraction (90%) of the map's total energy.
- `locality_profile`: the same measurements over a grid of noise levels (Figures 2 and 10), optionally also
  the Eq. 9 map of `D - c_skip x` (`without_skip`): the skip term c_skip x of EDM's preconditioning puts a spike
  at the target pixel at low noise that says nothing about what the network learned;
- `locality_targets`: the target pixels of one conditioner (its cells' centres, or the image centre);
- `scenes_summary`: radii over several scenes, their mean and spread across scenes (Figure 2's evidence);
- `run`: the whole study of `python -m lcsbench locality` in one call: per scene a conditioner
  (`scene_conditioner`), the model's own sample for it, and its `locality_profile` (a `LocalityStudy`).

The denoiser must be in eval mode (the caller's job): the analyses never change module state.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lcsbench.data.scenes import cell_centre
from lcsbench.diffusion.denoiser import BoundDenoiser, Denoiser
from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS

SIGMA_DATA = 0.5  # EDM2's data standard deviation: c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)


DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes the batched backward of one chunk may use (a heuristic, see below)


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def check_pixels(pixels: Sequence[Sequence[int]], height: int, width: int) -> list[tuple[int, int]]:
    """Target pixels as a list of integer (row, col) inside an H x W image; a clear error otherwise."""
    checked = []
    for pixel in pixels:
        if len(pixel) != 2:
            raise ValueError(f"a target pixel is a (row, col) pair; found {tuple(pixel)!r}")
        row, col = int(pixel[0]), int(pixel[1])
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(
                f"target pixel (row={row}, col={col}) lies outside the {height}x{width} image: valid rows are "
                f"0..{height - 1} and valid cols 0..{width - 1} (pixels are (row, col), origin top-left)"
            )
        checked.append((row, col))
    if not checked:
        raise ValueError(f"no target pixels given: pass at least one (row, col) with 0 <= row < {height}, "
                         f"0 <= col < {width}")
    return checked


def _check_image_batch(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be an image batch [B, C, H, W]; found shape {tuple(x.shape)}: "
                         f"add a batch dimension with x[None]")


# ---------------------------------------------------------------------------------------------------------------
# Pixel locality: Eq. 9, heat[p, h, w] = mean_c sum_c' |dD[c, p] / dx[c', h, w]|, averaged over the batch.


def _module_of(denoiser: Denoiser) -> nn.Module | None:
    """The nn.Module behind a denoiser (its `network`, the module itself, or the owner of a bound method)."""
    network = getattr(denoiser, "network", None)
    if isinstance(network, nn.Module):
        return network
    if isinstance(denoiser, nn.Module):
        return denoiser
    owner = getattr(denoiser, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _activation_bytes(denoiser: Denoiser, forward: Callable[[], Tensor]) -> tuple[Tensor, int]:
    """Run `forward` once and estimate the bytes of the activations its backward walks through.

    The estimate sums the outputs of every leaf module (a proxy for the gradients the backward of one
    cotangent materialises); for a plain function it falls back to 8x the size of D.
    """
    module = _module_of(denoiser)
    total = [0]

    def count(_module, _inputs, output):
        if isinstance(output, Tensor):
            total[0] += output.numel() * output.element_size()

    handles = []
    if module is not None:
        handles = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())]
    try:
        out = forward()
    finally:
        for handle in handles:
            handle.remove()
    return out, max(total[0], 8 * out.numel() * out.element_size())


def pixel_jacobian(
    denoiser: Denoiser,                     # denoiser(x, sigma, cond) -> D, in eval mode
    x: Tensor,                              # noisy inputs [B, C, H, W]
    sigma: Tensor | float,                  # noise level: scalar or [B]
    cond: Tensor,                           # structured conditioner [B, ...]
    pixels: Sequence[Sequence[int]],        # target pixels as (row, col)
    chunk_size: int | None = None,          # cotangents per batched backward; None: from memory_budget
    memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes one chunk may use when chunk_size is None
    method: str = "auto",                   # "vmap", "replicate", or "auto" (vmap, else replicate)
) -> Tensor:
    """Eq. 9 heat maps `[P, H, W]`: how strongly each input pixel moves D at each target pixel.

    `heat[p, h, w] = mean over output channels c of sum over input channels c' of |dD[b, c, p] / dx[b, c',
    h, w]|`, averaged over the batch b. One vector-Jacobian product per (target pixel, output channel) with
    a one-hot cotangent, batched in chunks, in one of two ways:
    - "vmap": one forward, then the VJPs `torch.func.vmap`-batched over the cotangents;
    - "replicate": per chunk, the batch repeated once per cotangent, one forward and one backward. It costs
      a forward per cotangent but needs no vmap support, so it runs denoisers with custom autograd
      functions or Python-side data-dependent code that `torch.func` refuses.
    "auto" tries vmap and falls back to replicate (with a warning) if vmap raises.
    A cotangent is one-hot in every sample at once: this assumes, as every diffusion denoiser does, that
    samples do not interact (no batch statistics), so each sample's gradient lands in its own slot of x.
    """
    _check_image_batch(x)
    targets = check_pixels(pixels, x.shape[2], x.shape[3])
    if method not in ("auto", "vmap", "replicate"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'replicate'; found {method!r}")
    x = x.detach()

    def forward(inputs: Tensor) -> Tensor:
        return denoiser(inputs, sigma, cond)

    holder: dict[str, int] = {}

    def forward_measured(inputs: Tensor) -> Tensor:
        out, holder["bytes"] = _activation_bytes(denoiser, lambda: forward(inputs))
        return out

    with frozen_parameters(_module_of(denoiser)):
        if method == "replicate":
            return _replicated_heat(denoiser, x, sigma, cond, targets, chunk_size, memory_budget)
        try:
            return _batched_heat(forward_measured, holder, x, targets, chunk_size, memory_budget)
        except (RuntimeError, NotImplementedError) as error:
            if method == "vmap" or "out of memory" in str(error).lower():
                raise
            heat = _replicated_heat(denoiser, x, sigma, cond, targets, chunk_size, memory_budget)  # a denoiser
            # that is itself broken raises again here, before any warning
            warnings.warn(f"pixel_jacobian: torch.func.vmap failed on this denoiser ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200]}); used method='replicate' instead", stacklevel=2)
            return heat


@contextmanager
def frozen_parameters(module: nn.Module | None):
    """Turn off requires_grad on the module's parameters for the duration (restored after, also on error):
    the VJPs then skip every weight-gradient kernel (2-3x faster on CPU)."""
    params = [] if module is None else [p for p in module.parameters() if p.requires_grad]
    try:
        for param in params:
            param.requires_grad_(False)
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def _check_output_shape(out: Tensor, x: Tensor) -> None:
    if out.ndim != 4 or out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:]:
        raise ValueError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}: "
                         f"expected D with the input's batch and spatial size")


def _heat_from_chunks(vjp_chunk, targets, out_channels: int, chunk_size: int, height: int, width: int) -> Tensor:
    """The Eq. 9 reduction both methods share: `vjp_chunk(start, stop)` returns the input gradients
    `[stop - start, B, C, H, W]` of rows start..stop of the (target pixel, output channel) list; the rows
    are reduced chunk by chunk (sum over input channels c', mean over samples, then over output channels)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of cotangents; found {chunk_size}")
    total = len(targets) * out_channels
    heat_rows = []
    for start in range(0, total, chunk_size):
        grads = vjp_chunk(start, min(start + chunk_size, total))
        grads = grads.to(torch.promote_types(grads.dtype, torch.float32))  # fp16/bf16 nets reduce in fp32
        heat_rows.append(grads.abs().sum(dim=2).mean(dim=1))
        del grads
    return torch.cat(heat_rows).view(len(targets), out_channels, height, width).mean(dim=1).detach()


def _batched_heat(forward_measured, holder, x, targets, chunk_size, memory_budget) -> Tensor:
    """Eq. 9 rows for every (target, output channel): one forward, vmapped VJPs over one-hot cotangents.

    The forward records attention in SDPA's math form (matmuls and a softmax): vmap has no batching rule for the
    backward of the fused attention kernels and would loop over the cotangents one at a time there."""
    with sdpa_kernel(SDPBackend.MATH):
        out, vjp_fn = torch.func.vjp(forward_measured, x)
    _check_output_shape(out, x)
    if chunk_size is None:
        per_cotangent = holder["bytes"] + 2 * x.numel() * x.element_size() + out.numel() * out.element_size()
        chunk_size = max(1, int(memory_budget // per_cotangent))
    batched_vjp = torch.func.vmap(vjp_fn)

    def vjp_chunk(start: int, stop: int) -> Tensor:
        cotangents = _one_hot_cotangents(tuple(out.shape), targets, start, stop, out.dtype, out.device)
        return batched_vjp(cotangents)[0]

    return _heat_from_chunks(vjp_chunk, targets, out.shape[1], chunk_size, *x.shape[2:])


def _one_hot_cotangents(out_shape, targets, start, stop, dtype, device) -> Tensor:
    """`[stop - start, *out_shape]` one-hot cotangents for rows start..stop of the (target, output channel)
    list; row i is (target pixel, output channel) = divmod(i, out_channels), one-hot in every sample."""
    out_channels = out_shape[1]
    index = torch.arange(start, stop, device=device)
    pixel, chans = index // out_channels, index % out_channels
    rows = torch.tensor([t[0] for t in targets], device=device)[pixel]
    cols = torch.tensor([t[1] for t in targets], device=device)[pixel]
    cotangents = torch.zeros((stop - start, *out_shape), dtype=dtype, device=device)
    cotangents[torch.arange(stop - start, device=device), :, chans, rows, cols] = 1
    return cotangents


def _repeat_batch(value, copies: int, batch: int):
    """A per-sample tensor `[B, ...]` repeated `copies` times along the batch; anything else unchanged."""
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    return value


def _replicated_heat(denoiser, x, sigma, cond, targets, chunk_size, memory_budget) -> Tensor:
    """Eq. 9 rows by replication: per chunk of n cotangents, D on the batch repeated n times, one backward."""
    batch = x.shape[0]
    with torch.no_grad():  # the probe only sizes D and the activations
        probe, activation_bytes = _activation_bytes(denoiser, lambda: denoiser(x, sigma, cond))
    _check_output_shape(probe, x)
    if chunk_size is None:  # a copy holds its activations for the backward, plus x, D and their gradients
        per_copy = activation_bytes + 2 * x.numel() * x.element_size() + 2 * probe.numel() * probe.element_size()
        chunk_size = max(1, int(memory_budget // per_copy))

    def vjp_chunk(start: int, stop: int) -> Tensor:
        copies = stop - start
        inputs = x.repeat(copies, 1, 1, 1).requires_grad_(True)
        with torch.enable_grad():
            out = denoiser(inputs, _repeat_batch(sigma, copies, batch), _repeat_batch(cond, copies, batch))
            cotangents = _one_hot_cotangents(tuple(probe.shape), targets, start, stop, out.dtype, out.device)
            (grads,) = torch.autograd.grad(out, inputs, cotangents.view_as(out))
        return grads.view(copies, *x.shape)

    return _heat_from_chunks(vjp_chunk, targets, probe.shape[1], chunk_size, *x.shape[2:])


# ---------------------------------------------------------------------------------------------------------------
# Conditional locality: Eq. 10, ||D(x, C)_p - D(x, C \ j)_p||_2 over channels, for every active conditioner.


@dataclass
class ConditionalInfluence:
    """Eq. 10 maps `[J, H, W]` and which entry of the conditioner each map ablates.

    `conditioners[j]` indexes one sample's conditioner (cond[b][conditioners[j]]): a (row, col) grid cell for
    a location grid, a (colour,) index for colour counts.
    """

    maps: Tensor
    conditioners: list[tuple[int, ...]]


def active_conditioners(cond: Tensor) -> list[tuple[int, ...]]:
    """Entries of the conditioner that are non-zero in at least one sample, in row-major order."""
    if cond.ndim < 2:
        raise ValueError(f"cond must be batched [B, ...]; found shape {tuple(cond.shape)}: add cond[None]")
    active = (cond != 0).flatten(1).any(dim=0).view(cond.shape[1:])
    return [tuple(int(i) for i in index) for index in active.nonzero().tolist()]


def conditional_influence(
    denoiser: Denoiser,                     # denoiser(x, sigma, cond) -> D, in eval mode
    x: Tensor,                              # noisy inputs [B, C, H, W]
    sigma: Tensor | float,                  # noise level: scalar or [B]
    cond: Tensor,                           # structured conditioner [B, ...] of counts
    chunk_size: int | None = None,          # ablations per forward; None: all in one batched forward
) -> ConditionalInfluence:
    """Eq. 10 for every active conditioner j (an entry non-zero in some sample), averaged over the batch.

    Removing conditioner j zeroes that entry (every object in that grid cell, or that colour). A sample in
    which j is already zero contributes zero to map j, so pass one conditioner repeated over the batch (several
    noise draws of one scene) to average like the paper. Forward passes only, no gradients.
    """
    _check_image_batch(x)
    batch = x.shape[0]
    if cond.shape[0] != batch:
        raise ValueError(f"cond has batch {cond.shape[0]} but x has batch {batch}: give one conditioner per sample")
    conditioners = active_conditioners(cond)
    if not conditioners:
        raise ValueError(
            f"cond {tuple(cond.shape)} has no active conditioner (every entry is zero), so there is nothing to "
            f"ablate: pass a conditioner with at least one non-zero entry (a location or a colour)"
        )
    variants = [cond]
    for index in conditioners:
        ablated = cond.clone()
        ablated[(slice(None), *index)] = 0
        variants.append(ablated)
    all_cond = torch.cat(variants)  # [(J + 1) * B, ...], the full conditioner first
    copies = len(variants)
    per_sample = isinstance(sigma, Tensor) and sigma.numel() > 1  # [B] (or [B, 1, 1, 1]) noise levels
    all_sigma = sigma.reshape(batch).repeat(copies) if per_sample else sigma
    step = copies if chunk_size is None else max(1, int(chunk_size))
    with torch.no_grad():
        outputs = []
        for start in range(0, copies, step):
            stop = min(start + step, copies)
            sub_sigma = all_sigma[start * batch:stop * batch] if per_sample else all_sigma
            outputs.append(denoiser(x.repeat(stop - start, 1, 1, 1), sub_sigma,
                                    all_cond[start * batch:stop * batch]))
        out = torch.cat(outputs)
        out = out.to(torch.promote_types(out.dtype, torch.float32)).view(copies, batch, *outputs[0].shape[1:])
    maps = (out[:1] - out[1:]).norm(dim=2).mean(dim=1)  # norm over channels, mean over samples: [J, H, W]
    return ConditionalInfluence(maps=maps, conditioners=conditioners)


# ---------------------------------------------------------------------------------------------------------------
# Locality radius: Appendix F, the smallest centred square that holds `fraction` of the total energy.


def locality_radius(
    heat: Tensor,                           # non-negative map [H, W] (a pixel or conditional map)
    centre: Sequence[int],                  # (row, col) the square is centred on
    fraction: float = 0.9,                  # share of the total energy the square must hold
) -> float:
    """Half-width r of the smallest square `[row-r, row+r] x [col-r, col+r]` (clipped to the image) whose
    energy, the sum of the map's values, is at least `fraction` of the total. r = 0 is the target pixel
    alone; a k x k kernel centred on the target has radius at most (k - 1) / 2. NaN for an all-zero map.
    """
    if heat.ndim != 2:
        raise ValueError(f"heat must be one map [H, W]; found shape {tuple(heat.shape)}: index the map first")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1]; found {fraction}")
    height, width = heat.shape
    row, col = check_pixels([centre], height, width)[0]
    energy = heat.detach().double().abs()
    total = energy.sum()
    if total <= 0:
        return float("nan")
    # Integral image: square sums for every radius at once.
    integral = torch.nn.functional.pad(energy.cumsum(0).cumsum(1), (1, 0, 1, 0))
    radii = torch.arange(max(row, height - 1 - row, col, width - 1 - col) + 1, dtype=torch.long)
    top, bottom = (row - radii).clamp(min=0), (row + radii + 1).clamp(max=height)
    left, right = (col - radii).clamp(min=0), (col + radii + 1).clamp(max=width)
    inside = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
    enough = inside >= fraction * total * (1 - 1e-12)
    return float(radii[enough.nonzero()[0, 0]])


def grid_cell_centre(cell: Sequence[int], grid_size: int, resolution: int) -> tuple[int, int]:
    """The pixel (row, col) that holds the centre of grid cell (row, col) of a G x G location grid."""
    x, y = cell_centre(int(cell[0]), int(cell[1]), grid_size)
    return int(y * resolution), int(x * resolution)


def locality_targets(
    denoiser: Denoiser,  # states the conditioning kind, the grid size and the image size
    cond: Tensor,  # one conditioner: a [G, G] location grid or [8] colour counts
    max_targets: int | None = None,  # at most this many target pixels (the first conditioned cells); None: all
) -> tuple[list[tuple[int, int]], Callable[[tuple[int, ...]], tuple[int, int]] | None]:
    """The target pixels of Figure 2 for one conditioner, and the pixel each conditioner names (for the Eq. 10
    radii of `locality_profile`): a location model with conditioned cells: the cells' centres, and cell -> its
    centre; otherwise (a colour model, an empty grid): the image centre, and no conditioner pixels."""
    resolution = denoiser.image_shape[-1]
    if denoiser.conditioning == "location" and bool((cond != 0).any()):
        grid_size = denoiser.grid_size
        cells = cond.nonzero().tolist()[:max_targets]
        return ([grid_cell_centre(cell, grid_size, resolution) for cell in cells],
                lambda cell: grid_cell_centre(cell, grid_size, resolution))
    return [(resolution // 2, resolution // 2)], None


def without_skip(denoiser: Denoiser, sigma_data: float = SIGMA_DATA) -> BoundDenoiser:
    """`D(x) - c_skip(sigma) x`, the network's part of EDM's denoiser (c_skip = sigma_data^2 / (sigma^2 +
    sigma_data^2), EDM Table 1): its Eq. 9 map has no identity spike at the target pixel."""
    def residual(x: Tensor, sigma, cond) -> Tensor:
        sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma_t = sigma_t.reshape(-1, 1, 1, 1) if sigma_t.ndim else sigma_t
        return denoiser(x, sigma, cond) - sigma_data ** 2 / (sigma_t ** 2 + sigma_data ** 2) * x

    return BoundDenoiser(residual, denoiser.image_shape, denoiser.conditioning, denoiser.grid_size,
                         getattr(denoiser, "network", None))


# ---------------------------------------------------------------------------------------------------------------
# Summaries over noise levels (Figures 2 and 10).


@dataclass
class LocalityProfile:
    """Pixel and conditional locality of one scene over a grid of noise levels.

    heat `[S, P, H, W]` (Eq. 9 per sigma and target), influence `[S, J, H, W]` (Eq. 10), pixel_radius `[S, P]`,
    conditional_radius `[S, J]` (each map about its conditioner's centre), influence_at_targets `[S, P, J]`
    (Eq. 10 at each target pixel: the Figure 10 curves), noisy `[S, C, H, W]` and denoised `[S, C, H, W]`
    for the first sample.
    """

    sigmas: list[float]
    pixels: list[tuple[int, int]]
    conditioners: list[tuple[int, ...]]
    conditioner_centres: list[tuple[int, int]] | None
    fraction: float
    heat: Tensor
    influence: Tensor | None
    pixel_radius: Tensor
    conditional_radius: Tensor | None
    influence_at_targets: Tensor | None
    noisy: Tensor
    denoised: Tensor
    heat_without_skip: Tensor | None = None  # Eq. 9 of D - c_skip x `[S, P, H, W]` (when measured)
    pixel_radius_without_skip: Tensor | None = None  # its radii `[S, P]`

    def summary(self) -> dict:
        """JSON-ready numbers (no maps): radii and influences per noise level."""
        out = {
            "sigmas": self.sigmas,
            "pixels": [list(p) for p in self.pixels],
            "fraction": self.fraction,
            "pixel_radius": self.pixel_radius.tolist(),
            "pixel_radius_mean": _nanmean(self.pixel_radius, dim=1).tolist(),
        }
        if self.influence is not None:
            out |= {
                "conditioners": [list(c) for c in self.conditioners],
                "conditioner_centres": None if self.conditioner_centres is None
                else [list(c) for c in self.conditioner_centres],
                "conditional_radius": _nan_to_none(self.conditional_radius.tolist()),
                "conditional_radius_mean": _nan_to_none(_nanmean(self.conditional_radius, dim=1).tolist()),
                "influence_at_targets": self.influence_at_targets.tolist(),
            }
        if self.pixel_radius_without_skip is not None:
            out["pixel_radius_without_skip"] = _nan_to_none(self.pixel_radius_without_skip.tolist())
            out["pixel_radius_without_skip_mean"] = _nan_to_none(
                _nanmean(self.pixel_radius_without_skip, dim=1).tolist())
        out["pixel_radius"] = _nan_to_none(out["pixel_radius"])
        out["pixel_radius_mean"] = _nan_to_none(out["pixel_radius_mean"])
        return out

    def maps(self) -> dict:
        """The maps as numpy arrays (the layout of `python -m lcsbench locality`'s locality_maps.npz, less the
        sample): `sigmas [S]`, `pixels [P, 2]`, `heat [S, P, H, W]`, where measured `heat_without_skip
        [S, P, H, W]`, `conditioners [J, d]`, `influence [S, J, H, W]`, `conditioner_centres [J, 2]`."""
        import numpy as np

        maps = {"sigmas": np.asarray(self.sigmas), "pixels": np.asarray(self.pixels), "heat": self.heat.numpy()}
        if self.heat_without_skip is not None:
            maps["heat_without_skip"] = self.heat_without_skip.numpy()
        if self.influence is not None:
            maps |= {"conditioners": np.asarray(self.conditioners), "influence": self.influence.numpy()}
            if self.conditioner_centres is not None:
                maps["conditioner_centres"] = np.asarray(self.conditioner_centres)
        return maps


def _nanmean(values: Tensor, dim: int) -> Tensor:
    return values.nanmean(dim=dim)


def _nan_to_none(values):
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if values != values else values


def locality_profile(
    denoiser: Denoiser,                     # denoiser(x, sigma, cond) -> D, in eval mode
    images: Tensor,                         # clean images [B, C, H, W] the noise is added to
    cond: Tensor,                           # structured conditioner [B, ...]
    sigmas: Sequence[float],                # noise levels to measure at
    pixels: Sequence[Sequence[int]],        # target pixels as (row, col)
    conditioner_centres: Callable[[tuple[int, ...]], tuple[int, int]] | None = None,  # conditioner -> pixel
    fraction: float = 0.9,                  # energy share of the locality radius
    seed: int = 0,                          # noise seed: the same noise direction at every sigma
    chunk_size: int | None = None,          # cotangents per batched backward (pixel_jacobian)
    memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes per chunk when chunk_size is None
    conditional: bool = True,               # also measure Eq. 10 (needs an active conditioner)
    skip_removed: bool = False,             # also Eq. 9 of D - c_skip x (`without_skip`)
) -> LocalityProfile:
    """Eq. 9 and Eq. 10 maps and their radii at each sigma for x = images + sigma * n, one fixed n."""
    _check_image_batch(images)
    targets = check_pixels(pixels, images.shape[2], images.shape[3])
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
    heat, heat_residual, influence, noisy, denoised = [], [], [], [], []
    residual = without_skip(denoiser) if skip_removed else None
    conditioners: list[tuple[int, ...]] = []
    for sigma in sigmas:
        x = images + float(sigma) * noise
        heat.append(pixel_jacobian(denoiser, x, float(sigma), cond, targets, chunk_size, memory_budget).cpu())
        if residual is not None:
            heat_residual.append(pixel_jacobian(residual, x, float(sigma), cond, targets, chunk_size,
                                                memory_budget).cpu())
        with torch.no_grad():
            denoised.append(denoiser(x[:1], float(sigma), cond[:1]).float().cpu()[0])
        noisy.append(x[0].float().cpu())
        if conditional:
            result = conditional_influence(denoiser, x, float(sigma), cond)
            influence.append(result.maps.cpu())
            conditioners = result.conditioners
    heat_t = torch.stack(heat)
    pixel_radius = torch.tensor([[locality_radius(h, t, fraction) for h, t in zip(level, targets)]
                                 for level in heat_t])
    heat_residual_t = residual_radius = None
    if residual is not None:
        heat_residual_t = torch.stack(heat_residual)
        residual_radius = torch.tensor([[locality_radius(h, t, fraction) for h, t in zip(level, targets)]
                                        for level in heat_residual_t])
    influence_t = conditional_radius = at_targets = centres = None
    if conditional:
        influence_t = torch.stack(influence)
        centres = [conditioner_centres(c) for c in conditioners] if conditioner_centres else None
        conditional_radius = torch.tensor(
            [[locality_radius(m, centres[j], fraction) if centres else float("nan") for j, m in enumerate(level)]
             for level in influence_t])
        rows = torch.tensor([t[0] for t in targets])
        cols = torch.tensor([t[1] for t in targets])
        at_targets = influence_t[:, :, rows, cols].transpose(1, 2)  # [S, P, J]
    return LocalityProfile(
        sigmas=[float(s) for s in sigmas], pixels=targets, conditioners=conditioners, conditioner_centres=centres,
        fraction=fraction, heat=heat_t, influence=influence_t, pixel_radius=pixel_radius,
        conditional_radius=conditional_radius, influence_at_targets=at_targets,
        noisy=torch.stack(noisy), denoised=torch.stack(denoised), heat_without_skip=heat_residual_t,
        pixel_radius_without_skip=residual_radius,
    )


def scenes_summary(profiles: Sequence[LocalityProfile]) -> dict:
    """Radii of several scenes (each a LocalityProfile over the same sigmas): per scene the mean over its
    targets / conditioners, then the mean and the standard deviation across scenes per sigma (Figure 2 with
    its spread). Keys `<radius>_mean`, `<radius>_scene_std` and `<radius>_per_scene` for pixel_radius,
    conditional_radius and pixel_radius_without_skip, where measured."""
    out: dict = {"scenes": len(profiles)}
    for name in ("pixel_radius", "conditional_radius", "pixel_radius_without_skip"):
        radii = [getattr(p, name) for p in profiles]
        if any(r is None for r in radii):
            continue
        per_scene = torch.stack([_nanmean(r, dim=1) for r in radii])  # [scenes, S]
        std = per_scene.std(dim=0, unbiased=False) if len(profiles) > 1 else torch.zeros(per_scene.shape[1])
        out[f"{name}_mean"] = _nan_to_none(_nanmean(per_scene, dim=0).tolist())
        out[f"{name}_scene_std"] = _nan_to_none(std.tolist())
        out[f"{name}_per_scene"] = _nan_to_none(per_scene.tolist())
    return out


# ---------------------------------------------------------------------------------------------------------------
# One study over scenes (Figure 2 with its spread): `python -m lcsbench locality`, or a notebook, in one call.


def scene_conditioner(
    denoiser: Denoiser,  # states its conditioning kind and grid size
    objects: int,  # conditioned objects k
    scene: int = 0,  # which scene of the study
    seed: int = 0,  # the study's seed (random subsets)
) -> tuple[Tensor, list[str]]:
    """The conditioner of one scene and what it names: for a location model the paper's first k locations (scene
    0) or a random k-subset of them (other scenes, seeded by seed and scene), as "x,y"; for a colour model the
    paper's first k colours. A ValueError for a k outside the paper's list."""
    from lcsbench.analysis.lengthgen import requested_locations
    from lcsbench.data.conditioning import PAPER_COLORS, PAPER_LOCATIONS, counts_from_colors, grid_from_locations

    if denoiser.conditioning == "location":
        if not 1 <= objects <= len(PAPER_LOCATIONS):
            raise ValueError(f"a location model is conditioned on 1..{len(PAPER_LOCATIONS)} of the paper's "
                             f"locations; found {objects}")
        chosen = PAPER_LOCATIONS[:objects] if scene == 0 else requested_locations(
            objects, "random", torch.Generator().manual_seed(seed * 1000 + scene))
        return grid_from_locations(chosen, denoiser.grid_size), [f"{x:.2f},{y:.2f}" for x, y in chosen]
    if not 1 <= objects <= len(PAPER_COLORS):
        raise ValueError(f"a colour model is conditioned on 1..{len(PAPER_COLORS)} colours; found {objects}")
    chosen = PAPER_COLORS[:objects]
    return counts_from_colors(chosen), list(chosen)


@dataclass
class LocalityStudy:
    """What `run` measured: one LocalityProfile per scene, what each scene was conditioned on and its sample."""

    kind: str  # the denoiser's conditioning: location | color
    resolution: int  # image size in pixels
    noise_draws: int  # noise draws averaged in Eq. 9 and 10
    seed: int
    profiles: list[LocalityProfile]  # per scene
    conditioned: list[list[str]]  # per scene: its locations "x,y" or colours
    samples: list[Tensor]  # per scene: the model's own sample [C, H, W], in [-1, 1]

    def summary(self) -> dict:
        """The numbers of locality.json: settings, the first scene's radii and influences, radii per scene with
        their mean and spread (`scenes_summary`), and for a colour model the names of the ablated colours."""
        summary = {"kind": self.kind, "conditioned": self.conditioned[0], "resolution": self.resolution,
                   "samples": self.noise_draws, "noise_draws": self.noise_draws, "seed": self.seed,
                   **self.profiles[0].summary(), **scenes_summary(self.profiles),
                   "scene_conditioned": self.conditioned, "pixel_convention": "(row, col) from the top-left corner"}
        if self.kind == "color":  # the ablated colour slots (conditioning.py's COLOR_NAMES order)
            from lcsbench.data.scenes import COLOR_NAMES

            summary["conditioner_names"] = [COLOR_NAMES[index[0]] for index in self.profiles[0].conditioners]
        return summary


def run(
    denoiser: Denoiser,  # in eval mode, on `device`
    sigmas: Sequence[float],  # noise levels
    objects: int = 3,  # conditioned objects per scene (scene_conditioner)
    scenes: int = 1,  # scenes measured: the first the paper's first k, the others random k-subsets
    noise_draws: int = 2,  # noise draws averaged in Eq. 9 and 10
    steps: int = PAPER_HEUN_STEPS,  # Heun steps of each scene's own sample
    targets: Sequence[Sequence[int]] | None = None,  # target pixels (row, col); None: each scene's conditioned cells
    fraction: float = 0.9,  # energy share of the locality radius
    seed: int = 0,  # sample, subset and noise seed
    chunk_size: int | None = None,  # cotangents per batched backward (pixel_jacobian)
    memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes per batched backward when chunk_size is None
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,  # called with (scenes done, scenes) after each scene
    log: Callable[[str], None] | None = None,  # told in one line what each scene measures, before it starts
) -> LocalityStudy:
    """Pixel and conditional locality of `denoiser` on its own samples (paper Figure 2, Figure 10, Appendix F):
    per scene, one sample for the scene's conditioner (EDM Heun sampler), re-noised at each sigma with
    `noise_draws` draws, and its Eq. 9 maps (also of D - c_skip x) and Eq. 10 maps at the target pixels."""
    from lcsbench.diffusion.sampler import edm_sampler

    started, resolution = time.perf_counter(), denoiser.image_shape[-1]
    profiles, conditioned, samples = [], [], []
    for scene in range(scenes):
        cond_one, described = scene_conditioner(denoiser, objects, scene, seed)
        cond = cond_one[None].repeat(noise_draws, *([1] * cond_one.ndim)).to(device)
        pixels, centres = locality_targets(denoiser, cond_one)  # the conditioned cells' centres, or the middle
        pixels = check_pixels(targets or pixels, resolution, resolution)
        generator = torch.Generator().manual_seed(seed + 7919 * scene)
        noise = torch.randn(1, *denoiser.image_shape, generator=generator).to(device)
        if log is not None:
            log(f"scene {scene + 1}/{scenes}: sampling one {resolution}x{resolution} image for {denoiser.conditioning} "
                f"{described} ({steps} steps), then {len(pixels)} target pixels x {len(sigmas)} noise levels x "
                f"{noise_draws} noise draws ({time.perf_counter() - started:.0f} s so far)")
        with torch.no_grad():
            sample = edm_sampler(denoiser, noise, cond[:1], num_steps=steps).clamp(-1, 1)
        profiles.append(locality_profile(denoiser, sample.repeat(noise_draws, 1, 1, 1), cond, sigmas, pixels,
                                         conditioner_centres=centres, fraction=fraction, seed=seed + 1 + scene,
                                         chunk_size=chunk_size, memory_budget=memory_budget, skip_removed=True))
        conditioned.append(described)
        samples.append(sample[0].float().cpu())
        if progress is not None:
            progress(scene + 1, scenes)
    return LocalityStudy(denoiser.conditioning, resolution, noise_draws, seed, profiles, conditioned, samples)
