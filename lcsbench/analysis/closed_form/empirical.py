"""The empirical conditional denoiser: the exact optimal denoiser of the training set (issue 23, item 1).

    D(x; sigma, c) = E[x0 | x, c] = sum_e w_e x0_e,  w = softmax_e(log p_e - |x - x0_e|^2 / (2 sigma^2))

over the training examples e whose label grid equals c (training_set.py: an example is an image with one of the
labels the DataModule draws for it). It is the score the training loss is minimised by, so a network that
reached it would redraw training scenes: it memorises. When no training example has the label c (e.g. more
objects than any training image), it falls back to every example (the unconditional optimal denoiser) and says so
per sample (`EmpiricalResult.fell_back`).

`nearest_training_distance` is the memorisation measure that goes with it: the L2 distance of an image to its
nearest training image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lcsbench.analysis.closed_form.posterior import (DEFAULT_MEMORY_BUDGET, PosteriorMean, chunk_length,
                                                     per_sample_sigma)
from lcsbench.analysis.closed_form.training_set import TrainingSet


@dataclass(frozen=True)
class EmpiricalResult:
    denoised: Tensor   # [B, C, H, W]
    fell_back: Tensor  # [B] bool: no training example had this label grid; D is the unconditional one


def matching_examples(labels: Tensor, grid: Tensor) -> Tensor:
    """Indices of the examples whose label grid equals `grid` [G, G] (possibly none)."""
    return (labels == grid.to(labels.device, labels.dtype)).flatten(1).all(dim=1).nonzero().flatten()


def empirical_denoise(
    train: TrainingSet,                      # images and labelled examples (training_set.py)
    x: Tensor,                               # noisy images [B, C, H, W]
    sigma: Tensor | float,                   # noise level: scalar or [B]
    cond: Tensor,                            # location grids [B, G, G]
    memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes of one chunk's intermediates
) -> EmpiricalResult:
    """E[x0 | x, c] over the training examples labelled c (module docstring), in x's dtype."""
    batch = x.shape[0]
    images = train.images.flatten(1)                                  # [N, D]
    dtype = images.dtype
    flat = x.reshape(batch, -1).to(dtype)
    if flat.shape[1] != images.shape[1] or cond.shape != (batch, train.grid_size, train.grid_size):
        raise ValueError(f"expected x [B, {', '.join(map(str, train.image_shape))}] and cond [B, {train.grid_size}, "
                         f"{train.grid_size}]; found {tuple(x.shape)} and {tuple(cond.shape)}")
    sigma2 = per_sample_sigma(sigma, batch, dtype, flat.device) ** 2
    half_norms = 0.5 * images.pow(2).sum(dim=1)                       # |x0_i|^2 / 2, [N]
    unique, inverse = torch.unique(cond.flatten(1), dim=0, return_inverse=True)
    groups, unmatched = [], []  # (query rows, their examples); the grids no example has share one group
    for u, grid in enumerate(unique):
        rows = (inverse == u).nonzero().flatten()
        members = matching_examples(train.labels, grid.view(train.grid_size, train.grid_size))
        if members.numel():
            groups.append((rows, members))
        else:
            unmatched.append(rows)
    fell_back = torch.zeros(batch, dtype=torch.bool)
    if unmatched:
        rows = torch.cat(unmatched)
        groups.append((rows, torch.arange(train.labels.shape[0], device=train.labels.device)))
        fell_back[rows.cpu()] = True
    pieces, order = [], []
    for rows, members in groups:
        queries, scale = flat[rows], sigma2[rows]
        step = chunk_length(memory_budget, (images.shape[1] + 4 * len(rows)) * images.element_size(), len(members))
        state = PosteriorMean.start((len(rows),), images.shape[1], flat)
        for chunk in members.split(step):
            index = train.image_index[chunk]
            x0 = images[index]                                        # [Ec, D]
            logits = (queries @ x0.T - half_norms[index]) / scale[:, None] + train.log_weight[chunk]
            state = state.update(logits, lambda weights: weights @ x0)
        pieces.append(state.mean())
        order.append(rows)
    denoised = torch.cat(pieces)[torch.argsort(torch.cat(order))]
    return EmpiricalResult(denoised=denoised.view(x.shape).to(x.dtype), fell_back=fell_back)


def nearest_training_distance(
    images: Tensor,                          # [B, C, H, W] in [-1, 1]
    training_images: Tensor,                 # [N, C, H, W] in [-1, 1] (TrainingSet.images)
    memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes of one chunk's distance matrix
) -> Tensor:
    """`[B]` L2 distance of each image to its nearest training image (the memorisation measure)."""
    reference = training_images.flatten(1)
    flat = images.reshape(images.shape[0], -1).to(reference.dtype)
    if flat.shape[1] != reference.shape[1]:
        raise ValueError(f"images of shape {tuple(images.shape[1:])} cannot be compared with training images of "
                         f"shape {tuple(training_images.shape[1:])}")
    step = chunk_length(memory_budget, (reference.shape[1] + 2 * flat.shape[0]) * reference.element_size(),
                        reference.shape[0])
    nearest = torch.full((flat.shape[0],), float("inf"), dtype=reference.dtype)
    for chunk in reference.split(step):
        nearest = torch.minimum(nearest, torch.cdist(flat, chunk).amin(dim=1))
    return nearest


class EmpiricalDenoiser(nn.Module):
    """The empirical conditional denoiser on the one denoiser interface (diffusion/denoiser.py): call it as
    `denoiser(x, sigma, cond) -> D`; it says its image shape, conditioning kind and grid size. The training
    set is held in buffers, so `.to(device)` moves it. `last_fell_back` [B] and `fallbacks` (counts over all
    calls) record the samples whose label grid no training example has."""

    conditioning = "location"
    network = None

    def __init__(
        self,
        train: TrainingSet,                      # images and labelled examples (training_set.py)
        memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes of one chunk's intermediates
    ):
        super().__init__()
        self.register_buffer("images", train.images, persistent=False)
        self.register_buffer("labels", train.labels, persistent=False)
        self.register_buffer("image_index", train.image_index, persistent=False)
        self.register_buffer("log_weight", train.log_weight, persistent=False)
        self.memory_budget = memory_budget
        self.image_shape = train.image_shape
        self.grid_size = train.grid_size
        self.last_fell_back = torch.zeros(0, dtype=torch.bool)
        self.fallbacks = {"calls": 0, "samples": 0, "samples_fell_back": 0}

    def training_set(self) -> TrainingSet:
        return TrainingSet(self.images, self.labels, self.image_index, self.log_weight)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor) -> Tensor:
        result = empirical_denoise(self.training_set(), x, sigma, cond.to(self.labels.device), self.memory_budget)
        self.last_fell_back = result.fell_back
        self.fallbacks = {"calls": self.fallbacks["calls"] + 1, "samples": self.fallbacks["samples"] + x.shape[0],
                          "samples_fell_back": self.fallbacks["samples_fell_back"] + int(result.fell_back.sum())}
        return result.denoised
