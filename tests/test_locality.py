"""Closed-form checks of the locality analyses (paper Appendix F, Eq. 9 and 10) on toy denoisers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lcsbench.analysis.locality import (
    conditional_influence,
    grid_cell_centre,
    locality_profile,
    locality_radius,
    pixel_jacobian,
)


class LinearDenoiser(nn.Module):
    """D(x) = A x on the flattened image: its Jacobian is A itself."""

    def __init__(self, channels: int, height: int, width: int, seed: int = 0):
        super().__init__()
        n = channels * height * width
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", torch.randn(n, n, generator=generator, dtype=torch.float64))

    def forward(self, x, sigma, cond):
        return (x.flatten(1) @ self.matrix.T).view_as(x)


class ConvDenoiser(nn.Module):
    """D(x) = conv2d(x, K) ('same' padding), one channel: the Jacobian of pixel p is K laid around p."""

    def __init__(self, kernel: torch.Tensor):
        super().__init__()
        self.register_buffer("kernel", kernel[None, None])

    def forward(self, x, sigma, cond):
        return F.conv2d(x, self.kernel, padding=self.kernel.shape[-1] // 2)


class PatchLocalToy(nn.Module):
    """D at a pixel of grid cell (i, j) depends only on the pixels of cells within `radius` cells of (i, j)
    (a (2r+1)m patch, like the paper's Exp. 3 model), and only on the conditioners inside that patch."""

    def __init__(self, grid_size: int, radius: int):
        super().__init__()
        self.grid_size, self.radius = grid_size, radius

    def neighbourhood_sum(self, cells: torch.Tensor) -> torch.Tensor:  # [B, 1, G, G] -> [B, 1, G, G]
        box = torch.ones(1, 1, 2 * self.radius + 1, 2 * self.radius + 1, dtype=cells.dtype)
        return F.conv2d(cells, box, padding=self.radius)

    def forward(self, x, sigma, cond):
        cell = x.shape[-1] // self.grid_size
        cell_means = F.avg_pool2d(x.mean(1, keepdim=True), cell)
        patch = F.interpolate(self.neighbourhood_sum(cell_means), scale_factor=cell, mode="nearest")
        labels = F.interpolate(self.neighbourhood_sum(cond[:, None].to(x.dtype)), scale_factor=cell,
                               mode="nearest")
        return torch.tanh(x) * (1 + patch**2) + torch.sin(patch) * labels


def test_linear_denoiser_heatmap_is_the_row_of_A():
    channels, height, width = 2, 5, 6
    model = LinearDenoiser(channels, height, width)
    x = torch.randn(3, channels, height, width, dtype=torch.float64)
    pixels = [(0, 0), (2, 3), (4, 5)]
    heat = pixel_jacobian(model, x, 1.0, torch.zeros(3, 4, 4), pixels, chunk_size=4)
    rows = model.matrix.abs().view(channels, height, width, channels, height, width)
    for p, (r, c) in enumerate(pixels):
        expected = rows[:, r, c].sum(dim=1).mean(dim=0)  # sum over input channels, mean over output channels
        torch.testing.assert_close(heat[p].double(), expected, rtol=0, atol=1e-12)


def test_chunk_size_and_memory_budget_do_not_change_the_result():
    model = LinearDenoiser(1, 4, 4)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    pixels = [(r, c) for r in range(4) for c in range(4)]
    whole = pixel_jacobian(model, x, 0.5, torch.zeros(2, 2, 2), pixels, chunk_size=1000)
    for chunks in (pixel_jacobian(model, x, 0.5, torch.zeros(2, 2, 2), pixels, chunk_size=3),
                   pixel_jacobian(model, x, 0.5, torch.zeros(2, 2, 2), pixels, memory_budget=1)):
        torch.testing.assert_close(chunks, whole, rtol=0, atol=0)


def test_batched_jacobian_matches_a_per_pixel_autograd_loop_on_a_nonlinear_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.SiLU(),
                        nn.Conv2d(8, 3, 3, padding=1)).double()

    def denoiser(x, sigma, cond):
        return x + sigma * net(x)

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pixels = [(0, 7), (3, 4), (7, 0)]
    heat = pixel_jacobian(denoiser, x, 0.7, torch.zeros(2, 8), pixels, chunk_size=2)
    x_req = x.clone().requires_grad_(True)
    out = denoiser(x_req, 0.7, None)
    for p, (r, c) in enumerate(pixels):
        per_channel = []
        for ch in range(3):
            (grad,) = torch.autograd.grad(out[:, ch, r, c].sum(), x_req, retain_graph=True)
            per_channel.append(grad.abs().sum(1).mean(0))
        torch.testing.assert_close(heat[p].double(), torch.stack(per_channel).mean(0), rtol=1e-10, atol=1e-12)


class OldStyleSquare(torch.autograd.Function):
    """A custom autograd function without setup_context: torch.func (vmap, vjp) refuses it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def per_sample_denoiser():
    """A nonlinear net whose output depends on a per-sample sigma [B] and conditioner [B, 8]."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1)).double()

    def denoiser(x, sigma, cond):
        scale = sigma.view(-1, 1, 1, 1) * (1 + cond.sum(1)).view(-1, 1, 1, 1)
        return x + scale * net(x)

    return net, denoiser


def test_replicated_jacobian_equals_the_vmapped_one_with_per_sample_sigma_and_cond():
    _, denoiser = per_sample_denoiser()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    cond = torch.tensor([[0.0] * 8, [1.0] * 8], dtype=torch.float64)
    pixels = [(0, 7), (3, 4), (7, 0)]
    vmapped = pixel_jacobian(denoiser, x, sigma, cond, pixels, method="vmap")
    for chunk_size in (1, 4, None):
        replicated = pixel_jacobian(denoiser, x, sigma, cond, pixels, chunk_size=chunk_size, method="replicate")
        torch.testing.assert_close(replicated, vmapped, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="'auto', 'vmap' or 'replicate'"):
        pixel_jacobian(denoiser, x, sigma, cond, pixels, method="loop")


def test_auto_falls_back_to_replication_when_vmap_refuses_the_denoiser():
    net, _ = per_sample_denoiser()

    def denoiser(x, sigma, cond):
        return OldStyleSquare.apply(net(x))

    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        pixel_jacobian(denoiser, x, 1.0, torch.zeros(1, 8), [(2, 2)], method="vmap")
    with pytest.warns(UserWarning, match="method='replicate'"):
        heat = pixel_jacobian(denoiser, x, 1.0, torch.zeros(1, 8), [(2, 2)])
    x_req = x.clone().requires_grad_(True)
    out = denoiser(x_req, 1.0, None)
    rows = [torch.autograd.grad(out[0, ch, 2, 2], x_req, retain_graph=True)[0].abs().sum(1).mean(0) for ch in range(3)]
    torch.testing.assert_close(heat[0], torch.stack(rows).mean(0), rtol=1e-12, atol=1e-14)


def test_kernel_radius_is_recovered_from_the_heatmap():
    # Mass 0.5 at the centre, 0.3 on the ring at distance 1, 0.2 on the ring at distance 2 of a 5x5 kernel.
    kernel = torch.zeros(5, 5, dtype=torch.float64)
    ring1 = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (3, 3)]
    ring2 = [(i, j) for i in range(5) for j in range(5) if max(abs(i - 2), abs(j - 2)) == 2]
    kernel[2, 2] = 0.5
    for i, j in ring1:
        kernel[i, j] = -0.3 / len(ring1)  # the sign does not matter: |J| is measured
    for i, j in ring2:
        kernel[i, j] = 0.2 / len(ring2)
    model = ConvDenoiser(kernel)
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    heat = pixel_jacobian(model, x, 1.0, torch.zeros(1, 8), [(7, 8)])[0]
    assert heat.sum().item() == pytest.approx(1.0)
    assert heat[5:10, 6:11].sum().item() == pytest.approx(1.0)  # everything within the kernel's footprint
    assert locality_radius(heat, (7, 8), 0.9) == 2
    assert locality_radius(heat, (7, 8), 0.75) == 1
    assert locality_radius(heat, (7, 8), 0.5) == 0


def test_patch_local_model_has_zero_jacobian_outside_its_patch():
    grid_size, radius, resolution = 4, 1, 16  # cells of 4 px; patch = 3x3 cells = 12x12 px
    model = PatchLocalToy(grid_size, radius)
    x = torch.randn(2, 3, resolution, resolution, dtype=torch.float64)
    cond = torch.zeros(2, grid_size, grid_size)
    pixels = [(0, 0), (5, 9), (15, 10)]
    heat = pixel_jacobian(model, x, 1.0, cond, pixels)
    for p, (r, c) in enumerate(pixels):
        ci, cj = r // 4, c // 4
        inside = torch.zeros(resolution, resolution, dtype=torch.bool)
        inside[max(ci - radius, 0) * 4:(ci + radius + 1) * 4, max(cj - radius, 0) * 4:(cj + radius + 1) * 4] = True
        assert torch.all(heat[p][~inside] == 0)
        assert torch.all(heat[p][inside] > 0)


def test_conditional_influence_is_zero_outside_the_dependency_radius():
    grid_size, radius, resolution = 4, 1, 16
    model = PatchLocalToy(grid_size, radius)
    x = torch.randn(3, 3, resolution, resolution, dtype=torch.float64)
    cond = torch.zeros(3, grid_size, grid_size)
    cond[:, 0, 0] = 1
    cond[:, 2, 3] = 2
    result = conditional_influence(model, x, 0.8, cond)
    assert result.conditioners == [(0, 0), (2, 3)]
    assert result.maps.shape == (2, resolution, resolution)
    for j, (gi, gj) in enumerate(result.conditioners):
        near = torch.zeros(resolution, resolution, dtype=torch.bool)
        near[max(gi - radius, 0) * 4:(gi + radius + 1) * 4, max(gj - radius, 0) * 4:(gj + radius + 1) * 4] = True
        assert torch.all(result.maps[j][~near] == 0)
        assert torch.all(result.maps[j][near] > 0)
    # One batched forward with chunks of ablations gives the same maps.
    chunked = conditional_influence(model, x, torch.full((3,), 0.8, dtype=torch.float64), cond, chunk_size=1)
    torch.testing.assert_close(chunked.maps, result.maps)


def test_conditional_influence_is_the_channel_norm_of_the_ablation_difference():
    def denoiser(x, sigma, cond):  # colour counts [B, 8] add a fixed per-colour image
        pattern = torch.arange(8 * 3 * 4 * 4, dtype=x.dtype).view(8, 3, 4, 4).sin()
        return x + torch.einsum("bk,kchw->bchw", cond.to(x.dtype), pattern)

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    cond = torch.zeros(2, 8)
    cond[0, 1] = 1
    cond[:, 5] = 1
    result = conditional_influence(denoiser, x, 1.0, cond)
    pattern = torch.arange(8 * 3 * 4 * 4, dtype=torch.float64).view(8, 3, 4, 4).sin()
    assert result.conditioners == [(1,), (5,)]
    torch.testing.assert_close(result.maps[0], pattern[1].norm(dim=0) / 2)  # active in one sample of two
    torch.testing.assert_close(result.maps[1], pattern[5].norm(dim=0))


def test_locality_radius_closed_forms():
    heat = torch.zeros(9, 9)
    heat[4, 4] = 1.0
    assert locality_radius(heat, (4, 4)) == 0
    heat[4, 7] = 9.0  # 90% of the energy three columns away
    assert locality_radius(heat, (4, 4), 0.9) == 3
    assert locality_radius(heat, (4, 4), 0.1) == 0
    # Squares are clipped at the border: a corner target still reaches the far corner.
    corner = torch.ones(5, 5)
    assert locality_radius(corner, (0, 0), 1.0) == 4
    assert locality_radius(corner, (0, 0), 0.16) == 1  # 2x2 = 4 of 25 pixels
    assert math.isnan(locality_radius(torch.zeros(4, 4), (1, 1)))


def test_bad_inputs_give_clear_errors():
    model = LinearDenoiser(1, 4, 4)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"outside the 4x4 image: valid rows are 0..3 and valid cols 0..3"):
        pixel_jacobian(model, x, 1.0, torch.zeros(1, 2), [(1, 1), (4, 0)])
    with pytest.raises(ValueError, match="no target pixels"):
        pixel_jacobian(model, x, 1.0, torch.zeros(1, 2), [])
    with pytest.raises(ValueError, match="outside"):
        locality_radius(torch.ones(4, 4), (-1, 2))
    with pytest.raises(ValueError, match="no active conditioner"):
        conditional_influence(model, x, 1.0, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"image batch \[B, C, H, W\]"):
        pixel_jacobian(model, x[0], 1.0, torch.zeros(1, 2), [(0, 0)])


def test_locality_profile_over_noise_levels():
    grid_size, radius, resolution = 4, 1, 16
    model = PatchLocalToy(grid_size, radius)
    images = torch.randn(2, 3, resolution, resolution, dtype=torch.float64)
    cond = torch.zeros(2, grid_size, grid_size)
    cond[:, 1, 2] = 1
    centre = grid_cell_centre((1, 2), grid_size, resolution)
    assert centre == (6, 10)
    profile = locality_profile(model, images, cond, [0.1, 1.0, 10.0], [centre],
                               conditioner_centres=lambda c: grid_cell_centre(c, grid_size, resolution))
    assert profile.heat.shape == (3, 1, resolution, resolution)
    assert profile.influence.shape == (3, 1, resolution, resolution)
    assert profile.influence_at_targets.shape == (3, 1, 1)
    # The patch is 12x12 px around cell (1, 2): no radius can exceed the patch's reach from the centre.
    assert torch.all(profile.pixel_radius <= 6) and torch.all(profile.conditional_radius <= 6)
    summary = profile.summary()
    assert summary["conditioners"] == [[1, 2]] and len(summary["pixel_radius_mean"]) == 3


def test_real_edm2_unet_jacobian_matches_the_autograd_loop():
    """The batched VJPs run through the real EDM2 blocks (clamp, cosine attention, MP layers) unchanged."""
    from lcsbench.data.conditioning import encode_label
    from lcsbench.nn.edm2 import preset

    torch.manual_seed(0)
    net = preset("tiny", label_dim=256, img_resolution=16).eval()
    with torch.no_grad():  # at init emb_gain = out_gain = 0 and D = c_skip x: give every path gradient
        for name, param in net.named_parameters():
            if name.endswith("gain"):
                param.fill_(0.5)

    def denoiser(x, sigma, cond):
        return net(x, sigma, encode_label(cond, "location"))

    x = torch.randn(1, 3, 16, 16)
    cond = torch.zeros(1, 16, 16, dtype=torch.long)
    cond[0, 4, 11] = 1
    heat = pixel_jacobian(denoiser, x, 0.8, cond, [(4, 11)])
    x_req = x.clone().requires_grad_(True)
    out = denoiser(x_req, 0.8, cond)
    expected = torch.stack([torch.autograd.grad(out[:, c, 4, 11].sum(), x_req, retain_graph=True)[0].abs().sum(1)[0]
                            for c in range(3)]).mean(0)
    torch.testing.assert_close(heat[0], expected, rtol=1e-4, atol=1e-6)
    assert heat[0].sum() > 0


def test_parameters_stay_trainable_after_the_analysis():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 1, 1)
            self.fail = False

        def forward(self, x, sigma, cond):
            if self.fail:
                raise RuntimeError("boom")
            return self.second(self.first(x))

    net = Net()
    net.first.bias.requires_grad_(False)  # a frozen parameter stays frozen
    flags = [p.requires_grad for p in net.parameters()]
    heat = pixel_jacobian(net, torch.randn(1, 1, 4, 4), 1.0, None, [(1, 1)])
    assert heat[0, 1, 1] > 0 and [p.requires_grad for p in net.parameters()] == flags
    net.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        pixel_jacobian(net, torch.randn(1, 1, 4, 4), 1.0, None, [(1, 1)])
    assert [p.requires_grad for p in net.parameters()] == flags


def test_the_skip_removed_map_drops_exactly_the_skip_term():
    from lcsbench.analysis.locality import SIGMA_DATA, scenes_summary, without_skip
    from lcsbench.diffusion.denoiser import BoundDenoiser

    def c_skip(sigma):
        return SIGMA_DATA ** 2 / (sigma ** 2 + SIGMA_DATA ** 2)

    # D = c_skip x + (a local blur scaled by c_out-like 0.3): the network's part is the blur alone
    blur = torch.ones(3, 1, 3, 3, dtype=torch.float64) / 9

    def denoise(x, sigma, cond):
        return c_skip(torch.as_tensor(sigma, dtype=x.dtype)) * x + 0.3 * F.conv2d(x, blur, padding=1, groups=3)

    denoiser = BoundDenoiser(denoise, (3, 8, 8), "location", 4)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    cond = torch.zeros(1, 4, 4)
    target = (4, 4)
    full = pixel_jacobian(denoiser, x, 0.1, cond, [target])[0]
    residual = pixel_jacobian(without_skip(denoiser), x, 0.1, cond, [target])[0]
    # the spike: the target pixel's own entry carries c_skip(0.1) (summed over input channels, mean over outputs)
    assert full[target] == pytest.approx(c_skip(0.1) + 0.3 / 9, rel=1e-9)
    assert residual[target] == pytest.approx(0.3 / 9, rel=1e-9)
    assert torch.allclose(full - residual, torch.zeros_like(full).index_put_(
        (torch.tensor([4]), torch.tensor([4])), torch.tensor([c_skip(0.1)], dtype=torch.float64)))
    profiles = [locality_profile(denoiser, x, cond, [0.1, 10.0], [target], conditional=False, skip_removed=True,
                                 seed=seed) for seed in range(3)]
    assert profiles[0].heat_without_skip.shape == (2, 1, 8, 8)
    summary = scenes_summary(profiles)
    assert summary["scenes"] == 3 and len(summary["pixel_radius_without_skip_mean"]) == 2
    assert summary["pixel_radius_scene_std"] == [0.0, 0.0]  # a linear denoiser: the same maps in every scene
    assert summary["pixel_radius_without_skip_mean"][0] == 1.0  # the 3x3 blur: radius 1 once the spike is gone


def test_locality_targets_read_kind_and_grid_from_the_denoiser():
    """The commands' and the callback's one target choice: conditioned cells' centres, else the image centre."""
    from lcsbench.analysis.locality import locality_targets
    from lcsbench.diffusion.denoiser import BoundDenoiser

    identity = lambda x, sigma, cond: x  # noqa: E731
    location = BoundDenoiser(identity, (3, 32, 32), "location", 16)
    cond = torch.zeros(16, 16)
    cond[2, 5] = cond[9, 1] = 1
    targets, centres = locality_targets(location, cond)
    assert targets == [grid_cell_centre((2, 5), 16, 32), grid_cell_centre((9, 1), 16, 32)]
    assert centres((9, 1)) == grid_cell_centre((9, 1), 16, 32)
    assert locality_targets(location, cond, max_targets=1)[0] == targets[:1]
    assert locality_targets(location, torch.zeros(16, 16)) == ([(16, 16)], None)  # nothing conditioned
    assert locality_targets(BoundDenoiser(identity, (3, 32, 32), "color"), torch.ones(8)) == ([(16, 16)], None)
