"""Feature-space disentanglement of conditioners (paper Section 3.2, Eq. 3; Appendix E.4; Figures 5, 11).

The heuristic of Eq. 3: if the conditions compose in some feature space, their mean difference vectors
against the unconditional input, `E[h(x, c_k)] - E[h(x, empty)]`, are orthogonal. In EDM2 the only path of the
label into the image features is the per-block scale `c = 1 + emb_linear(emb) * emb_gain` (edm2-facts
section 6), the paper's "MCScale" layers, whose "layer activations" E.4 analyses. Two feature sites:

- `modulated` (the default): the block's image features after the conditional scale, `mp_silu(y * c)` (the
  input of the block's `conv_res1`), `[C, H, W]` per sample. Image-dependent, so the mean over samples means
  something, and an untrained network does not look disentangled here.
- `scale`: the scale itself (`emb_linear`'s output, `[C]`). It depends only on the noise level and the label,
  and for one-hot colours its difference vectors are near-orthogonal already at initialisation (a random
  linear map of orthogonal inputs): kept as an option, not as evidence.

Cosine similarities between the mean difference vectors give one K x K matrix per layer; layers are grouped
by resolution (`enc 64x64`, `dec 16x16`, ...), and the paper's "feature-space" panel is the average over the
first two encoder resolutions (E.4: "layers with resolution 128 and 64").

Chance level: low cosines alone do not show disentanglement, because a random network maps one-hot
conditions to near-orthogonal directions too (measured on an untrained tiny colour model with its emb gains
at 0.3: mean |cos| 0.15 over the feature-space layers at the modulated site, 0.12 at the scale site).
`reinitialised_copy` gives the same network with its weight matrices re-drawn and its gains kept, `chance_level`
runs a measurement through it, and the commands report its matrices beside the model's: only a model well below
its own chance level reads as disentangled.

Works on any denoiser `denoiser(x, sigma, cond) -> D` that owns (or is given) an nn.Module with such
layers; no Lightning.
"""

from __future__ import annotations

import fnmatch
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lcsbench.analysis.locality import _module_of
from lcsbench.data.scenes import DEFAULT_GRID_SIZE
from lcsbench.diffusion.denoiser import Denoiser
from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS

MODULATION_LAYER = "emb_linear"  # EDM2 Block's conditioning projection: c = 1 + emb_linear(emb, gain=emb_gain)
MODULATED_INPUT_OF = "conv_res1"  # the Block layer whose input is the modulated features mp_silu(y * c)
FEATURE_SITES = ("modulated", "scale")
RESOLUTION = re.compile(r"(?:^|\.)(enc|dec)\.(\d+)x(\d+)_")  # EDM2 block names: unet.enc.32x32_block0


# ---------------------------------------------------------------------------------------------------------------
# Finding and capturing the modulation layers


def modulation_layers(network: nn.Module, layer_name: str = MODULATION_LAYER) -> dict[str, nn.Module]:
    """Every submodule whose own attribute name is `layer_name`, keyed by its path in `network`, in
    registration (execution) order, e.g. `unet.enc.64x64_block0.emb_linear`."""
    return {name: module for name, module in network.named_modules() if name.rsplit(".", 1)[-1] == layer_name}


def feature_layers(network: nn.Module, site: str = "modulated") -> dict[str, nn.Module]:
    """The layers of a feature site, keyed by name, in execution order, each with the module to hook.

    `scale`: every `emb_linear` (name `...block0.emb_linear`, its output is hooked). `modulated`: every block
    with an `emb_linear` and a `conv_res1` (name `...block0`, the input of its `conv_res1` is hooked).
    """
    if site == "scale":
        return modulation_layers(network)
    if site != "modulated":
        raise ValueError(f"the feature site must be one of {FEATURE_SITES}, got {site!r}")
    return {name: getattr(module, MODULATED_INPUT_OF) for name, module in network.named_modules()
            if isinstance(getattr(module, MODULATION_LAYER, None), nn.Module)
            and isinstance(getattr(module, MODULATED_INPUT_OF, None), nn.Module)}


def resolution_group(name: str) -> str | None:
    """`enc 64x64` for `unet.enc.64x64_block0` (EDM2's names), None for a name without a resolution."""
    match = RESOLUTION.search(name)
    return f"{match.group(1)} {match.group(2)}x{match.group(3)}" if match else None


def feature_space_layers(names: Sequence[str]) -> list[str]:
    """The layers the paper's "feature-space" panel averages: the first two encoder resolutions (E.4's "layers
    with resolution 128 and 64" of a 128 px model); every layer when the names carry no resolution."""
    encoder = [n for n in names if (resolution_group(n) or "").startswith("enc ")]
    first_two = list(dict.fromkeys(resolution_group(n) for n in encoder))[:2]
    chosen = [n for n in encoder if resolution_group(n) in first_two]
    return chosen or list(names)


def resolve_layers(available: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """Requested layer names or glob patterns (`unet.enc.64x64*`) -> the matching available names, in the
    network's order. A name or pattern that matches nothing is an error listing the valid names."""
    if not available:
        raise ValueError(f"the network has no '{MODULATION_LAYER}' layers to hook: feature cosines need a "
                         f"network whose blocks modulate features with a conditioning embedding (EDM2 Blocks)")
    if requested is None:
        return list(available)
    chosen: set[str] = set()
    for pattern in requested:
        matches = [name for name in available if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise ValueError(
                f"layer {pattern!r} does not exist in the network. Valid layer names ({len(available)}): "
                f"{', '.join(available)}. Glob patterns such as '*enc.64x64*' select several."
            )
        chosen.update(matches)
    return [name for name in available if name in chosen]


@contextmanager
def capture_outputs(network: nn.Module, names: Sequence[str], site: str = "scale"
                    ) -> Iterator[dict[str, list[Tensor]]]:
    """Hooks on the named layers of a feature site (`feature_layers`); yields {name: [feature per call]} and
    removes the hooks on exit, also after an error. `scale` hooks a module's output, `modulated` the input of
    the block's `conv_res1`."""
    layers = feature_layers(network, site)
    captured: dict[str, list[Tensor]] = {name: [] for name in names}
    handles = []

    def output_hook(name: str):
        def hook(_module, _inputs, output):
            captured[name].append(output.detach())
        return hook

    def input_hook(name: str):
        def hook(_module, inputs):
            captured[name].append(inputs[0].detach())
        return hook

    try:
        for name in names:
            if site == "scale":
                handles.append(layers[name].register_forward_hook(output_hook(name)))
            else:
                handles.append(layers[name].register_forward_pre_hook(input_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------------------------
# Mean difference vectors and cosine matrices (Eq. 3)


def mean_difference_vectors(
    denoiser: Denoiser,                     # denoiser(x, sigma, cond) -> D, in eval mode
    images: Tensor,                         # clean images [B, C, H, W] the noise is added to
    sigmas: Sequence[float],                # noise levels to average over
    conditions: Tensor,                     # K conditioners [K, ...], one per condition to compare
    unconditional: Tensor | None = None,    # the reference conditioner [...]; None: all zeros (empty)
    layers: Sequence[str] | None = None,    # layer names or glob patterns; None: every modulation layer
    network: nn.Module | None = None,       # the module to hook; None: the denoiser's own module
    seed: int = 0,                          # noise seed (the same noise for every condition)
    batch_size: int = 64,                   # images per forward
    site: str = "modulated",                # feature site: modulated | scale (module docstring)
) -> dict[str, Tensor]:
    """{layer: [K, D]}: for each condition k, the mean over samples and noise levels of the layer's features
    given c_k minus the same mean given the unconditional input (Eq. 3's E[h | c_k] - E[h | empty])."""
    network = network if network is not None else _module_of(denoiser)
    if network is None:
        raise ValueError("feature capture needs the nn.Module behind the denoiser: pass network=<module> (the "
                         "denoiser is a plain function)")
    names = resolve_layers(list(feature_layers(network, site)), layers)
    if conditions.ndim < 2 or conditions.shape[0] == 0:
        raise ValueError(f"conditions must be a non-empty stack [K, ...] of conditioners; found shape "
                         f"{tuple(conditions.shape)}")
    if unconditional is None:
        unconditional = torch.zeros_like(conditions[0])
    all_cond = torch.cat([conditions, unconditional[None].to(conditions.dtype)])  # [K + 1, ...]
    num = all_cond.shape[0]
    batch = images.shape[0]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sums = {name: None for name in names}
    with torch.no_grad(), capture_outputs(network, names, site) as captured:
        for sigma in sigmas:
            noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
            x = images + float(sigma) * noise
            # Every (condition, sample) pair, in chunks of batch_size: condition-major order.
            pairs = [(k, b) for k in range(num) for b in range(batch)]
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                ks = torch.tensor([k for k, _ in chunk])
                bs = torch.tensor([b for _, b in chunk])
                denoiser(x[bs.to(x.device)], float(sigma), all_cond[ks].to(images.device))
                for name in names:
                    out = per_image_features(captured[name], len(chunk), name)
                    per_condition = torch.zeros(num, out.shape[1], device=out.device).index_add_(
                        0, ks.to(out.device), out)
                    sums[name] = per_condition if sums[name] is None else sums[name] + per_condition
                    captured[name].clear()
    count = batch * len(sigmas)
    vectors = {}
    for name in names:
        means = sums[name] / count
        vectors[name] = (means[:-1] - means[-1:]).cpu()
    return vectors


def reinitialised_copy(network: nn.Module, seed: int = 0) -> nn.Module:
    """`network` with every weight of two or more dimensions re-drawn from N(0, 1) (EDM2's MPConv init; its
    forward normalises the weights) and every scalar or vector parameter (gains, biases) kept: the chance
    level of Eq. 3's heuristic for this architecture and these conditioning gains."""
    import copy

    fresh = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in fresh.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator).to(parameter))
    return fresh


def chance_level(
    denoiser: Denoiser,                     # the trained denoiser the measurement runs through
    measure: Callable[[], "FeatureCosines"],  # the model's measurement (mean_difference_vectors, feature_cosines)
    seed: int = 0,                          # seeds the re-drawn weights
) -> "FeatureCosines":
    """The chance level of a feature measurement (module docstring): `measure` again with the denoiser's network
    re-initialised in place (`reinitialised_copy`: weight matrices re-drawn, gains kept), so the denoiser calls
    the re-drawn weights; the trained weights are back afterwards, also when `measure` fails."""
    network = _module_of(denoiser)
    if network is None:
        raise ValueError("the chance level re-draws the weights of the nn.Module behind the denoiser, and this "
                         "denoiser states none (Denoiser.network): pass a denoiser with its network")
    trained = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(reinitialised_copy(network, seed=seed).state_dict())
    try:
        return measure()
    finally:
        network.load_state_dict(trained)


def condition_samples(
    denoiser: Denoiser,                     # the denoiser to sample, in eval mode
    conditions: Tensor,                     # K conditioners [K, ...] on the denoiser's device
    count: int,                             # images to draw
    num_steps: int = PAPER_HEUN_STEPS,      # Heun steps
    seed: int = 0,                          # noise seed
) -> Tensor:
    """`[count, C, H, W]` samples of the denoiser in [-1, 1], one per condition in turn (cycling): images of the
    model's own distribution to measure its feature differences on."""
    from lcsbench.diffusion.sampler import edm_sampler

    noise = torch.randn((count, *denoiser.image_shape), generator=torch.Generator().manual_seed(seed))
    which = torch.arange(count) % len(conditions)
    with torch.no_grad():
        return edm_sampler(denoiser, noise.to(conditions.device), conditions[which.to(conditions.device)],
                           num_steps=num_steps).clamp(-1, 1)


def per_image_features(calls: list[Tensor], images: int, name: str) -> Tensor:
    """`[images, D]` features of one forward from what a layer's hook caught (one tensor per network call).

    One row per image: the layer's features flattened. A row broadcast over the batch (an embedding of batch 1)
    is repeated. When the network ran on several pieces per image (the patch-local model denoises G x G
    patches per image, in image-major order, possibly over several calls), each piece's features are averaged
    over its pixels and the pieces concatenated, so an image's vector still says which patch responded.
    """
    rows = torch.cat(calls).float()
    if rows.shape[0] == images:
        return rows.flatten(1)
    if rows.shape[0] == 1:
        return rows.flatten(1).expand(images, -1)
    if rows.shape[0] % images:
        raise ValueError(f"layer {name} saw {rows.shape[0]} inputs in a forward of {images} images: its features "
                         f"cannot be assigned to images")
    pieces = rows.mean(dim=(2, 3)) if rows.ndim == 4 else rows.flatten(1)
    return pieces.reshape(images, -1)


def cosine_matrix(vectors: Tensor) -> Tensor:
    """[K, K] cosine similarities between the rows of [K, D]; NaN where a vector is zero (no direction)."""
    vectors = vectors.double()
    norms = vectors.norm(dim=1)
    unit = vectors / norms.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    cosine = unit @ unit.T
    zero = norms == 0
    cosine[zero] = float("nan")
    cosine[:, zero] = float("nan")
    return cosine.float()


@dataclass
class FeatureCosines:
    """Eq. 3 cosine matrices: one per layer `[K, K]`, and their mean over `averaged_layers`."""

    labels: list[str]
    per_layer: dict[str, Tensor]
    averaged_layers: list[str]
    average: Tensor
    per_resolution: dict[str, Tensor]  # {"enc 64x64": mean of that resolution's layers}, EDM2 names only

    def summary(self) -> dict:
        def clean(matrix: Tensor):
            return [[None if v != v else round(float(v), 6) for v in row] for row in matrix.tolist()]

        return {
            "labels": self.labels,
            "layers": list(self.per_layer),
            "averaged_layers": self.averaged_layers,
            "average": clean(self.average),
            "per_layer": {name: clean(m) for name, m in self.per_layer.items()},
            "mean_abs_off_diagonal": {name: off_diagonal_mean(m) for name, m in self.per_layer.items()},
            "average_mean_abs_off_diagonal": off_diagonal_mean(self.average),
            "per_resolution": {group: clean(m) for group, m in self.per_resolution.items()},
            "per_resolution_mean_abs_off_diagonal": {group: off_diagonal_mean(m)
                                                     for group, m in self.per_resolution.items()},
        }


def off_diagonal_mean(matrix: Tensor) -> float | None:
    """Mean |cosine| off the diagonal: 0 for perfectly disentangled conditions, 1 for identical ones."""
    mask = ~torch.eye(matrix.shape[0], dtype=torch.bool)
    values = matrix[mask].abs()
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else None


def feature_cosines(
    vectors: dict[str, Tensor],             # {layer: [K, D]} from mean_difference_vectors
    labels: Sequence[str],                  # one name per condition (K)
    average_layers: Sequence[str] | None = None,  # names or glob patterns to average; None: the feature space
) -> FeatureCosines:
    """Cosine matrix per layer, their mean per resolution, and their mean over the chosen layers (default: the
    paper's "feature-space" layers, `feature_space_layers`); NaN entries are ignored in the means."""
    names = list(vectors)
    if not names:
        raise ValueError("no layers to compare: mean_difference_vectors returned no layer")
    first = vectors[names[0]]
    if first.shape[0] != len(labels):
        raise ValueError(f"{len(labels)} labels for {first.shape[0]} conditions: give one label per condition")
    per_layer = {name: cosine_matrix(v) for name, v in vectors.items()}
    averaged = feature_space_layers(names) if average_layers is None else resolve_layers(names, average_layers)
    average = torch.stack([per_layer[name] for name in averaged]).nanmean(dim=0)
    groups: dict[str, list[str]] = {}
    for name in names:
        if resolution_group(name) is not None:
            groups.setdefault(resolution_group(name), []).append(name)
    per_resolution = {group: torch.stack([per_layer[n] for n in members]).nanmean(dim=0)
                      for group, members in groups.items()}
    return FeatureCosines(labels=list(labels), per_layer=per_layer, averaged_layers=averaged, average=average,
                          per_resolution=per_resolution)


def paper_conditions(kind: str, grid_size: int = DEFAULT_GRID_SIZE) -> tuple[Tensor, list[str]]:
    """The paper's single conditions to compare (Figure 5: the 8 colours; for location models the 12
    evaluation locations), as a stack of conditioners [K, ...] and their labels."""
    from lcsbench.data.conditioning import (PAPER_COLORS, PAPER_LOCATIONS, check_kind, counts_from_colors,
                                            grid_from_locations)

    check_kind(kind)
    if kind == "color":
        return torch.stack([counts_from_colors([name]) for name in PAPER_COLORS]), list(PAPER_COLORS)
    conditions = torch.stack([grid_from_locations([loc], grid_size) for loc in PAPER_LOCATIONS])
    return conditions, [f"({x:.2f},{y:.2f})" for x, y in PAPER_LOCATIONS]
