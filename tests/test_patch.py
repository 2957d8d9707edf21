"""Patch-local EDM2 (Exp. 3): locality by construction, batched = per-cell loop, patch sampling."""

from __future__ import annotations

import pytest
import torch

from lcsbench.nn.edm2 import Precond
from lcsbench.nn.patch import (
    PatchLocal,
    all_subgrids,
    check_geometry,
    gather_cells,
    patch_label_dim,
    patch_labels,
    sample_training_cells,
)

G, M = 4, 4  # 4 x 4 cells of 4 px: 16 x 16 images


def patch_net(radius: int) -> Precond:
    """A tiny EDM2 patch denoiser with non-zero gains, so its output really mixes pixels and labels."""
    torch.manual_seed(0)
    net = Precond(img_resolution=(2 * radius + 1) * M, img_channels=3, label_dim=patch_label_dim(radius),
                  model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], channels_per_head=16)
    with torch.no_grad():
        for param in net.parameters():
            if param.ndim == 0:
                param.fill_(0.7)
    return net.eval()


def cell_slice(row: int, col: int) -> tuple[slice, slice]:
    return slice(row * M, (row + 1) * M), slice(col * M, (col + 1) * M)


def random_cond(batch: int, objects: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cond = torch.zeros(batch, G, G)
    for b in range(batch):
        cells = torch.randperm(G * G, generator=generator)[:objects]
        cond[b].view(-1)[cells] = 1
    return cond


@pytest.mark.parametrize("row,col", [(0, 0), (1, 2), (3, 3)])
def test_cell_output_has_zero_jacobian_outside_its_patch(row, col):
    model = PatchLocal(patch_net(1), grid_size=G, radius=1)
    x = torch.randn(1, 3, G * M, G * M, requires_grad=True)
    out = model(x, torch.tensor(1.5), random_cond(1))
    rows, cols = cell_slice(row, col)
    (grad,) = torch.autograd.grad(out[0, :, rows, cols].square().sum(), x)
    influence = grad.abs().sum(dim=(0, 1))
    inside = torch.zeros(G * M, G * M, dtype=torch.bool)
    inside[max(0, (row - 1) * M):(row + 2) * M, max(0, (col - 1) * M):(col + 2) * M] = True
    assert torch.all(influence[~inside] == 0)
    cell = torch.zeros_like(inside)
    cell[rows, cols] = True
    assert influence[inside & ~cell].sum() > 0  # it does look beyond its own cell, within the patch


def test_cell_output_ignores_conditioners_outside_its_patch():
    model = PatchLocal(patch_net(1), grid_size=G, radius=1)
    x = torch.randn(2, 3, G * M, G * M)
    cond = random_cond(2)
    with torch.no_grad():
        base = model(x, 2.0, cond)
        far = cond.clone()
        far[:, 3, 3] += 1  # outside the patch of cell (0, 0) with r = 1
        moved = model(x, 2.0, far)
        near = cond.clone()
        near[:, 1, 1] += 1  # inside it
        nearby = model(x, 2.0, near)
    rows, cols = cell_slice(0, 0)
    assert torch.equal(base[:, :, rows, cols], moved[:, :, rows, cols])
    assert not torch.allclose(base[:, :, rows, cols], nearby[:, :, rows, cols])
    assert not torch.allclose(base[:, :, cell_slice(3, 3)[0], cell_slice(3, 3)[1]],
                              moved[:, :, cell_slice(3, 3)[0], cell_slice(3, 3)[1]])


def per_cell_reference(net: Precond, x: torch.Tensor, sigma: float, cond: torch.Tensor, radius: int) -> torch.Tensor:
    """The definition, one cell at a time: crop the zero-padded image and grid, denoise, copy the centre."""
    pad = radius * M
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    grid = torch.nn.functional.pad(cond, (radius,) * 4)
    out = torch.empty_like(x)
    size = (2 * radius + 1) * M
    for b in range(x.shape[0]):
        for row in range(G):
            for col in range(G):
                patch = padded[b:b + 1, :, row * M:row * M + size, col * M:col * M + size]
                subgrid = grid[b, row:row + 2 * radius + 1, col:col + 2 * radius + 1]
                centre = torch.tensor([(col + 0.5) / G * 2 - 1, (row + 0.5) / G * 2 - 1])
                label = patch_labels(subgrid, centre)[None]
                denoised = net(patch, torch.tensor([sigma]), label)
                rows, cols = cell_slice(row, col)
                out[b, :, rows, cols] = denoised[0, :, pad:pad + M, pad:pad + M]
    return out


@pytest.mark.parametrize("radius,max_patches", [(1, 4096), (1, 5), (2, 7)])
def test_batched_reconstruction_equals_the_per_cell_loop(radius, max_patches):
    net = patch_net(radius)
    model = PatchLocal(net, grid_size=G, radius=radius, max_patches=max_patches)
    x = torch.randn(2, 3, G * M, G * M)
    cond = random_cond(2)
    with torch.no_grad():
        batched = model(x, 0.8, cond)
        reference = per_cell_reference(net, x, 0.8, cond, radius)
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)


def test_patches_covering_the_image_see_every_pixel_like_the_global_model():
    radius = G - 1  # every patch spans the whole image whatever its cell
    model = PatchLocal(patch_net(radius), grid_size=G, radius=radius)
    x = torch.randn(1, 3, G * M, G * M, requires_grad=True)
    out = model(x, torch.tensor(3.0), random_cond(1))
    rows, cols = cell_slice(0, 0)
    (grad,) = torch.autograd.grad(out[0, :, rows, cols].sum(), x)
    assert (grad.abs().sum(dim=(0, 1)) > 0).float().mean() > 0.95
    assert sample_training_cells(random_cond(4), radius)[2].sum() == 0  # no negative patch exists


def test_positive_and_negative_patches_follow_the_rule():
    cond = random_cond(64, objects=2, seed=3)
    generator = torch.Generator().manual_seed(0)
    active = all_subgrids(cond, 1).flatten(-2).sum(-1)  # active conditioners per cell's patch
    picked = torch.zeros(G, G)
    for _ in range(20):
        positive, negative, has_negative = sample_training_cells(cond, 1, generator)
        assert torch.all(gather_cells(active, positive) >= 1)
        assert torch.all(has_negative)
        assert torch.all(gather_cells(active, negative) == 0)
        picked[positive[:, 0], positive[:, 1]] += 1
    assert (picked > 0).sum() >= 12  # draws spread over the grid, not a fixed cell
    with pytest.raises(ValueError, match="no active conditioner"):
        sample_training_cells(torch.zeros(2, G, G), 1)


def test_bad_geometry_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="does not divide the image resolution 40"):
        check_geometry(16, 1, 40)
    with pytest.raises(ValueError, match="radius r must be >= 0"):
        PatchLocal(patch_net(1), grid_size=G, radius=-1)
    with pytest.raises(ValueError, match=r"img_resolution \(12\) must be \(2r\+1\) \* cell size = 5 \* m"):
        PatchLocal(patch_net(1), grid_size=G, radius=2)
    wrong_labels = Precond(img_resolution=20, img_channels=3, label_dim=11, model_channels=16, channel_mult=[1, 2],
                           num_blocks=1, attn_resolutions=[], channels_per_head=16)
    with pytest.raises(ValueError, match=r"label_dim is 11, but radius 2 needs \(2r\+1\)\^2 \+ 2 = 27"):
        PatchLocal(wrong_labels, grid_size=G, radius=2)
    model = PatchLocal(patch_net(1), grid_size=G, radius=1)
    with pytest.raises(ValueError, match=r"conditioner grid \[B, 4, 4\]"):
        model(torch.randn(1, 3, 16, 16), 1.0, torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match=r"expected images \[B, C, 16, 16\]"):
        model(torch.randn(1, 3, 32, 32), 1.0, torch.zeros(1, G, G))
