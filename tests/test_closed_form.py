"""Exactness of the closed-form denoisers (issue 23): the empirical conditional denoiser and the local conditional
score machine against brute-force loops on a toy training set, their limits in sigma, and the exact locality of
the local machine measured with the project's own Eq. 9 / Eq. 10 analyses."""

from __future__ import annotations

import math

import pytest
import torch

from lcsbench.analysis.closed_form import (EmpiricalDenoiser, LocalScoreMachine, TrainingSet, empirical_denoise,
                                           label_distribution, nearest_training_distance, training_set)
from lcsbench.analysis.closed_form.local import cell_bank, equivariant_local_denoise, local_denoise
from lcsbench.analysis.locality import conditional_influence, pixel_jacobian
from lcsbench.diffusion.denoiser import Denoiser
from lcsbench.diffusion.sampler import edm_sampler

GRID, CELL, CHANNELS = 4, 2, 3  # 8 x 8 px toy images on a 4 x 4 grid of 2 px cells


def toy_training_set(images: int = 7, seed: int = 0, dtype=torch.float64) -> TrainingSet:
    """Random images with random label grids (0-2 objects per cell, a few cells each) and random priors."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(images, CHANNELS, GRID * CELL, GRID * CELL, generator=generator, dtype=dtype) * 2 - 1
    labels = torch.zeros(images + 3, GRID, GRID, dtype=torch.long)
    for grid in labels:
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            row, col = torch.randint(0, GRID, (2,), generator=generator).tolist()
            grid[row, col] += 1
    index = torch.cat([torch.arange(images), torch.randint(0, images, (3,), generator=generator)])
    weight = torch.rand(images + 3, generator=generator, dtype=dtype) + 0.1
    return TrainingSet(pixels, labels, index, (weight / weight.sum()).log())


def toy_queries(train: TrainingSet, batch: int = 4, seed: int = 1, sigma: float = 0.7):
    """Noisy versions of training images, one conditioned on a training label, the others on new grids."""
    generator = torch.Generator().manual_seed(seed)
    x = train.images[:batch] + sigma * torch.randn(train.images[:batch].shape, generator=generator,
                                                   dtype=train.images.dtype)
    cond = torch.zeros(batch, GRID, GRID, dtype=torch.long)
    cond[0] = train.labels[2]
    cond[1, 0, 0], cond[1, 3, 3] = 1, 1
    cond[2, 1, 2] = 2
    cond[3] = train.labels[5]
    cond[3, 3, 0] += 1
    return x, cond


# --- brute force: the definitions, one example, one cell at a time ----------------------------------------------


def brute_empirical(train: TrainingSet, x, sigma: float, cond):
    out, fell_back = [], []
    for b in range(x.shape[0]):
        members = [e for e in range(len(train.labels)) if torch.equal(train.labels[e], cond[b])]
        fell_back.append(not members)
        members = members or list(range(len(train.labels)))
        logits = torch.stack([train.log_weight[e] - (x[b] - train.images[train.image_index[e]]).pow(2).sum()
                              / (2 * sigma**2) for e in members])
        weights = torch.softmax(logits, dim=0)
        out.append(sum(w * train.images[train.image_index[e]] for w, e in zip(weights, members)))
    return torch.stack(out), torch.tensor(fell_back)


def padded_patch(image, row: int, col: int, radius: int):
    pad = radius * CELL
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    size = (2 * radius + 1) * CELL
    return padded[:, row * CELL:row * CELL + size, col * CELL:col * CELL + size]


def padded_subgrid(grid, row: int, col: int, radius: int):
    padded = torch.nn.functional.pad(grid, (radius, radius, radius, radius))
    return padded[row:row + 2 * radius + 1, col:col + 2 * radius + 1]


def brute_local(train: TrainingSet, x, sigma: float, cond, radius: int, equivariant: bool):
    out = torch.zeros_like(x)
    fallbacks = torch.zeros(x.shape[0], dtype=torch.long)
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    bank = {(e, cell): (padded_subgrid(train.labels[e], *cell, radius),
                        padded_patch(train.images[train.image_index[e]], *cell, radius))
            for e in range(len(train.labels)) for cell in cells}  # every training patch and its sub-grid
    for b in range(x.shape[0]):
        for row, col in cells:
            query, grid = padded_patch(x[b], row, col, radius), padded_subgrid(cond[b], row, col, radius)
            candidates = [(int((bank[e, cell][0] != grid).sum()), e, cell)  # (differing label cells, e, cell)
                          for e in range(len(train.labels)) for cell in (cells if equivariant else [(row, col)])]
            fewest = min(h for h, _, _ in candidates)
            fallbacks[b] += fewest > 0
            chosen = [(e, cell) for h, e, cell in candidates if h == fewest]
            logits = torch.stack([train.log_weight[e] - (query - bank[e, cell][1]).pow(2).sum() / (2 * sigma**2)
                                  for e, cell in chosen])
            weights = torch.softmax(logits, dim=0)
            value = 0
            for w, (e, (r, c)) in zip(weights, chosen):
                value = value + w * train.images[train.image_index[e], :, r * CELL:(r + 1) * CELL,
                                                 c * CELL:(c + 1) * CELL]
            out[b, :, row * CELL:(row + 1) * CELL, col * CELL:(col + 1) * CELL] = value
    return out, fallbacks


# --- the training distribution ------------------------------------------------------------------------------------


def obj(x: float, y: float) -> dict:
    return {"pixel_coords": [x, y, 1.0], "color": "red"}


def test_label_distribution_enumerates_each_label_mode_with_its_probability():
    scene = [obj(1, 1), obj(5, 1), obj(5.5, 1.5)]  # the last two share the cell (0, 2) of an 8 px, G = 4 image
    kwargs = dict(grid_size=GRID, width=8, height=8)
    (grid, p), = label_distribution(scene, "all", **kwargs)
    assert p == 1 and grid[0, 0] == 1 and grid[0, 2] == 2
    single = {tuple(g.flatten().tolist()): p for g, p in label_distribution(scene, "single", **kwargs)}
    assert len(single) == 2 and sorted(single.values()) == pytest.approx([1 / 3, 2 / 3])  # equal grids merged
    drop = label_distribution(scene, "drop_one", **kwargs)
    assert sum(p for _, p in drop) == pytest.approx(1) and all(int(g.sum()) == 2 for g, _ in drop)
    random = label_distribution(scene, "random", **kwargs)
    assert sum(p for _, p in random) == pytest.approx(1)
    full = [p for g, p in random if int(g.sum()) == 3]
    assert full == pytest.approx([1 / 3])  # k = 3 with probability 1/3, one subset of that size
    with pytest.raises(ValueError, match="label_mode must be one of"):
        label_distribution(scene, "some", **kwargs)


def test_training_set_mixes_object_counts_equally():
    scenes = [{"objects": [obj(1, 1)], "width": 8, "height": 8}] * 3 + [
        {"objects": [obj(1, 1), obj(7, 7)], "width": 8, "height": 8}]
    train = training_set(torch.zeros(4, 3, 8, 8), scenes, "single", GRID)
    assert len(train.labels) == 3 + 2  # the 2-object image is seen with either of its two labels
    assert train.log_weight.exp().sum().item() == pytest.approx(1)
    assert train.log_weight.exp()[:3].sum().item() == pytest.approx(0.5)  # counts 1 and 2 mixed equally
    with pytest.raises(ValueError, match="one scene per image"):
        training_set(torch.zeros(3, 3, 8, 8), scenes, "all", GRID)


# --- the empirical conditional denoiser ---------------------------------------------------------------------------


def test_empirical_denoiser_matches_the_brute_force_loop_in_small_chunks():
    train = toy_training_set()
    x, cond = toy_queries(train)
    for sigma in (0.3, 4.0):
        expected, fell_back = brute_empirical(train, x, sigma, cond)
        result = empirical_denoise(train, x, sigma, cond, memory_budget=1)  # one example per chunk
        torch.testing.assert_close(result.denoised, expected, rtol=1e-10, atol=1e-10)
        assert result.fell_back.tolist() == fell_back.tolist() == [False, True, True, True]


def test_empirical_denoiser_is_the_nearest_training_image_at_tiny_sigma():
    train = toy_training_set()
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(3, CHANNELS, 8, 8, generator=generator, dtype=torch.float64) * 2 - 1
    cond = torch.stack([train.labels[0], train.labels[0], torch.zeros(GRID, GRID, dtype=torch.long)])
    denoised = empirical_denoise(train, x, 1e-4, cond).denoised
    members = [e for e in range(len(train.labels)) if torch.equal(train.labels[e], train.labels[0])]
    for b, pool in enumerate([members, members, range(len(train.labels))]):  # the empty grid is absent: all
        candidates = train.images[train.image_index[list(pool)]]
        nearest = candidates[(candidates - x[b]).flatten(1).norm(dim=1).argmin()]
        torch.testing.assert_close(denoised[b], nearest, rtol=0, atol=1e-12)
    distance = nearest_training_distance(train.images[2:4] + 0.01, train.images)
    torch.testing.assert_close(distance, torch.full((2,), 0.01 * math.sqrt(CHANNELS * 64), dtype=torch.float64))


def test_empirical_denoiser_is_the_data_mean_at_huge_sigma():
    train = toy_training_set()
    x = torch.zeros(2, CHANNELS, 8, 8, dtype=torch.float64)
    cond = torch.stack([train.labels[4], torch.full((GRID, GRID), 5, dtype=torch.long)])
    result = empirical_denoise(train, x, 1e6, cond)
    prior = train.log_weight.exp()
    members = (train.labels == train.labels[4]).flatten(1).all(dim=1)
    images = train.images[train.image_index]
    conditional = (prior[members, None, None, None] * images[members]).sum(0) / prior[members].sum()
    unconditional = (prior[:, None, None, None] * images).sum(0)  # the absent grid falls back to all examples
    torch.testing.assert_close(result.denoised, torch.stack([conditional, unconditional]), rtol=1e-6, atol=1e-8)
    assert result.fell_back.tolist() == [False, True]


# --- the local conditional score machine --------------------------------------------------------------------------


@pytest.mark.parametrize("equivariant", [False, True], ids=["positional", "equivariant"])
@pytest.mark.parametrize("radius", [0, 1])
def test_local_machine_matches_the_brute_force_loop(equivariant, radius):
    train = toy_training_set(images=5)
    x, cond = toy_queries(train)
    for sigma in (0.4, 2.0):
        expected, fallbacks = brute_local(train, x, sigma, cond, radius, equivariant)
        if equivariant:
            result = equivariant_local_denoise(train, x, sigma, cond, radius, memory_budget=1)
        else:
            result = local_denoise(cell_bank(train, radius), x, sigma, cond, memory_budget=1)
        torch.testing.assert_close(result.denoised, expected, rtol=1e-10, atol=1e-10)
        assert result.fallback_cells.tolist() == fallbacks.tolist()
    if radius == 1:  # 3 x 3 sub-grids: some are new (fallbacks), the training label's are not all
        assert fallbacks.sum() > 0 and fallbacks[0] < GRID * GRID


def test_local_machine_chunking_and_its_match_cache_do_not_change_the_result():
    train = toy_training_set(dtype=torch.float32)
    x, cond = toy_queries(train)
    machine = LocalScoreMachine(train, radius=1)
    with torch.enable_grad():  # with gradients (whatever an earlier test left set): no sub-grid match is cached
        whole = machine(x, torch.full((4,), 0.5), cond)
    assert not machine.matches
    with torch.no_grad():
        for _ in range(2):  # the second call reuses the cached sub-grid match of these grids
            torch.testing.assert_close(machine(x, torch.full((4,), 0.5), cond), whole, rtol=0, atol=0)
        assert len(machine.matches) == 1
        torch.testing.assert_close(machine(x[2:], 0.5, cond[2:]), whole[2:], rtol=1e-6, atol=1e-6)
    machine.memory_budget = 1
    torch.testing.assert_close(machine(x, torch.full((4,), 0.5), cond), whole, rtol=1e-5, atol=1e-5)
    assert machine.fallbacks["calls"] == 5 and machine.last_fallback_cells.shape == (4,)


def patch_pixels(row: int, col: int, radius: int):
    """[8, 8] bool: the pixels of the cells within `radius` cells of cell (row, col)."""
    inside = torch.zeros(GRID * CELL, GRID * CELL, dtype=torch.bool)
    rows = slice(max(0, row - radius) * CELL, (row + radius + 1) * CELL)
    inside[rows, max(0, col - radius) * CELL:(col + radius + 1) * CELL] = True
    return inside


@pytest.mark.parametrize("equivariant", [False, True], ids=["positional", "equivariant"])
def test_local_machine_pixel_jacobian_is_exactly_zero_outside_its_patch(equivariant):
    train = toy_training_set()
    machine = LocalScoreMachine(train, radius=1, equivariant=equivariant)
    x, cond = toy_queries(train, sigma=1.0)
    targets = [(0, 0), (3, 4), (7, 2)]  # pixels of cells (0, 0), (1, 2), (3, 1)
    heat = pixel_jacobian(machine, x, 1.0, cond, targets, method="vmap")
    for (row, col), map_ in zip(targets, heat):
        inside = patch_pixels(row // CELL, col // CELL, radius=1)
        assert (map_[~inside] == 0).all()
        assert (map_[inside] > 0).float().mean() > 0.5  # it does read its patch


@pytest.mark.parametrize("equivariant", [False, True], ids=["positional", "equivariant"])
def test_local_machine_conditional_influence_is_exactly_zero_outside_its_patch(equivariant):
    train = toy_training_set()
    machine = LocalScoreMachine(train, radius=1, equivariant=equivariant)
    x, _ = toy_queries(train, sigma=2.0)
    cond = torch.zeros(4, GRID, GRID, dtype=torch.long)
    cond[:, 0, 0] = cond[:, 3, 3] = cond[:, 1, 2] = 1
    influence = conditional_influence(machine, x, 2.0, cond)
    for (row, col), map_ in zip(influence.conditioners, influence.maps):
        inside = patch_pixels(row, col, radius=1)  # the pixels whose cell's patch holds conditioner (row, col)
        assert (map_[~inside] == 0).all()
    assert influence.maps.amax() > 0  # the labels do move D (inside the patches)


def test_closed_forms_present_the_denoiser_interface_and_sample():
    train = toy_training_set(dtype=torch.float32)
    cond = torch.zeros(2, GRID, GRID, dtype=torch.long)
    cond[:, 1, 1] = 1
    for denoiser in (EmpiricalDenoiser(train), LocalScoreMachine(train, radius=1)):
        assert isinstance(denoiser, Denoiser)
        assert (denoiser.image_shape, denoiser.conditioning, denoiser.grid_size) == ((3, 8, 8), "location", GRID)
        samples = edm_sampler(denoiser, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), cond,
                              num_steps=4)
        assert samples.shape == (2, 3, 8, 8) and torch.isfinite(samples).all()


def test_bad_input_is_a_one_line_error():
    train = toy_training_set()
    x, cond = toy_queries(train)
    with pytest.raises(ValueError, match="sigma > 0"):
        empirical_denoise(train, x, 0.0, cond)
    with pytest.raises(ValueError, match=r"cond \[B, 4, 4\]"):
        LocalScoreMachine(train, radius=1)(x, 1.0, cond[:, :2])
    with pytest.raises(ValueError, match="radius r"):
        LocalScoreMachine(train, radius=-1)
    with pytest.raises(ValueError, match="one value per image"):
        empirical_denoise(train, x, torch.ones(3), cond)
