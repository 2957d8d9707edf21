"""Feature-space disentanglement of conditioners (paper Section 3.2, Eq. 3; Appendix E.4; Figures 5, 11).

The heuristic of Eq. 3: if the conditions compose in some feature space, their mean difference vectors
against the unconditional input, `E[h(x, c_k)] - E[h(x, empty)]`, are orthogonal. We measure it where the
conditioning enters the network: in EDM2 the only path of the label into the image features is the
per-block scale `c = 1 + emb_linear(emb) * emb_gain` (edm2-facts section 6), the role of the paper's
"MCScale" layers. A forward hook on every module named `emb_linear` captures that modulation, per sample
and noise level; cosine similarities between the mean difference vectors give one K x K matrix per layer,
and their average over chosen layers (the paper's "feature-space" panel).

Works on any denoiser `denoiser(x, sigma, cond) -> D` that owns (or is given) an nn.Module with such
layers; no Lightning.
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from lcsbench.analysis.locality import Denoiser, _module_of

MODULATION_LAYER = "emb_linear"  # EDM2 Block's conditioning projection: c = 1 + emb_linear(emb, gain=emb_gain)


# ---------------------------------------------------------------------------------------------------------------
# Finding and capturing the modulation layers


def modulation_layers(network: nn.Module, layer_name: str = MODULATION_LAYER) -> dict[str, nn.Module]:
    """Every submodule whose own attribute name is `layer_name`, keyed by its path in `network`, in
    registration (execution) order, e.g. `unet.enc.64x64_block0.emb_linear`."""
    return {name: module for name, module in network.named_modules() if name.rsplit(".", 1)[-1] == layer_name}


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
def capture_outputs(network: nn.Module, names: Sequence[str]) -> Iterator[dict[str, list[Tensor]]]:
    """Forward hooks on the named submodules; yields {name: [output per call]} and removes the hooks on exit,
    also after an error."""
    modules = dict(network.named_modules())
    captured: dict[str, list[Tensor]] = {name: [] for name in names}
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            captured[name].append(output.detach())
        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
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
) -> dict[str, Tensor]:
    """{layer: [K, D]}: for each condition k, the mean over samples and noise levels of the layer's output
    given c_k minus the same mean given the unconditional input (Eq. 3's E[h | c_k] - E[h | empty])."""
    network = network if network is not None else _module_of(denoiser)
    if network is None:
        raise ValueError("feature capture needs the nn.Module behind the denoiser: pass network=<module> (the "
                         "denoiser is a plain function)")
    names = resolve_layers(list(modulation_layers(network)), layers)
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
    with torch.no_grad(), capture_outputs(network, names) as captured:
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
                    out = captured[name].pop().float().flatten(1)
                    if out.shape[0] == 1 and len(chunk) > 1:  # an embedding broadcast over the batch
                        out = out.expand(len(chunk), -1)
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
    average_layers: Sequence[str] | None = None,  # names or glob patterns to average; None: every layer
) -> FeatureCosines:
    """Cosine matrix per layer and their mean over the chosen layers (NaN entries ignored in the mean)."""
    names = list(vectors)
    if not names:
        raise ValueError("no layers to compare: mean_difference_vectors returned no layer")
    first = vectors[names[0]]
    if first.shape[0] != len(labels):
        raise ValueError(f"{len(labels)} labels for {first.shape[0]} conditions: give one label per condition")
    per_layer = {name: cosine_matrix(v) for name, v in vectors.items()}
    averaged = resolve_layers(names, average_layers)
    average = torch.stack([per_layer[name] for name in averaged]).nanmean(dim=0)
    return FeatureCosines(labels=list(labels), per_layer=per_layer, averaged_layers=averaged, average=average)


def paper_conditions(kind: str, grid_size: int = 16) -> tuple[Tensor, list[str]]:
    """The paper's single conditions to compare (Figure 5: the 8 colours; for location models the 12
    evaluation locations), as a stack of conditioners [K, ...] and their labels."""
    from lcsbench.data.conditioning import (PAPER_COLORS, PAPER_LOCATIONS, check_kind, counts_from_colors,
                                            grid_from_locations)

    check_kind(kind)
    if kind == "color":
        return torch.stack([counts_from_colors([name]) for name in PAPER_COLORS]), list(PAPER_COLORS)
    conditions = torch.stack([grid_from_locations([loc], grid_size) for loc in PAPER_LOCATIONS])
    return conditions, [f"({x:.2f},{y:.2f})" for x, y in PAPER_LOCATIONS]
