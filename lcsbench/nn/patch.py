"""Patch-local denoiser (the paper's Experiment 3, Appendix E.3): local conditional scores by construction.

The image is a G x G grid of cells of m = resolution / G pixels. The output of cell (i, j) is the
centre cell of an EDM2 denoiser applied to the (2r+1)m x (2r+1)m patch around it, conditioned only
on the (2r+1) x (2r+1) conditioner subgrid of that patch and on the patch centre's absolute
coordinates. So by construction the score at a pixel depends on no pixel and no conditioner outside
its patch (a local conditional score, Section 3).

Border policy: the patch of a cell near the border reaches outside the image; pixels there are 0
in the noisy input (and in the training target), and conditioner cells there are empty. The
network knows where it is from the coordinates, so it learns the border like any other region.

Label vector of a patch (length (2r+1)^2 + 2): the flattened subgrid under the label scale
(`nn.edm2.scale_label`, as `lcsbench.data.conditioning.encode_label` does for the full grid: the
counts as they are, or scaled to unit L2 norm; an empty subgrid stays zero), followed by the patch
centre (x, y) in [-1, 1] divided by sqrt(2) (norm at most 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lcsbench.nn.edm2 import check_label_scale, scale_label


# Patches per network call on the CPU: 16 images of Exp 3's model (4,096 patches) took 0.225 s per image per call in
# chunks of 256 patches against 0.303 s in one chunk of 4,096 (bf16, one core; issue 32).
CPU_CHUNK_PATCHES = 256


def patch_label_dim(radius: int) -> int:
    """Length of a patch's label vector: the (2r+1)^2 subgrid plus the two centre coordinates."""
    return (2 * radius + 1) ** 2 + 2


def check_geometry(grid_size: int, radius: int, resolution: int | None = None) -> None:
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    if radius < 0:
        raise ValueError(f"radius r must be >= 0 (a patch is (2r+1) x (2r+1) cells), got {radius}")
    if resolution is not None and resolution % grid_size:
        raise ValueError(f"grid size {grid_size} does not divide the image resolution {resolution}: "
                         f"choose a grid size that divides it (e.g. 16 for 32, 64 or 128 pixels)")


def cell_centres(grid_size: int, device=None) -> torch.Tensor:
    """[G, G, 2] centre (x, y) of every cell in [-1, 1] (x = column, y = row)."""
    centre = (torch.arange(grid_size, device=device, dtype=torch.float32) + 0.5) / grid_size * 2 - 1
    rows, cols = torch.meshgrid(centre, centre, indexing="ij")
    return torch.stack([cols, rows], dim=-1)


def all_patches(x: torch.Tensor, grid_size: int, radius: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, G, G, C, P, P]: the zero-padded patch around every cell (P = (2r+1)m)."""
    cell = x.shape[-1] // grid_size
    pad = radius * cell
    size = (2 * radius + 1) * cell
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded.unfold(2, size, cell).unfold(3, size, cell).permute(0, 2, 3, 1, 4, 5)


def all_subgrids(cond: torch.Tensor, radius: int) -> torch.Tensor:
    """[B, G, G] conditioner counts -> [B, G, G, 2r+1, 2r+1]: the zero-padded subgrid around every cell."""
    padded = F.pad(cond.to(torch.float32), (radius, radius, radius, radius))
    return padded.unfold(1, 2 * radius + 1, 1).unfold(2, 2 * radius + 1, 1)


def patch_labels(subgrids: torch.Tensor, centres: torch.Tensor, label_scale: str = "counts") -> torch.Tensor:
    """[..., k, k] subgrids and [..., 2] centres -> [..., k*k + 2] label vectors (module docstring)."""
    flat = scale_label(subgrids.flatten(-2), label_scale)
    return torch.cat([flat, centres / math.sqrt(2)], dim=-1)


class PatchLocal(torch.nn.Module):
    """Full-image denoiser `forward(x, sigma, cond) -> D` built from a patch denoiser `net`.

    `net` is any EDM2 `Precond` (or module with the same call `net(x, sigma, labels)`) whose
    `img_resolution` is the patch size (2r+1)m and whose `label_dim` is (2r+1)^2 + 2. All cells
    of all images go through `net` in batched calls of at most `max_patches` patches.
    """

    def __init__(
        self,
        net: torch.nn.Module,  # patch denoiser: Precond(img_resolution=(2r+1)m, label_dim=(2r+1)^2+2)
        grid_size: int,  # G: cells per side, the location-conditioning grid
        radius: int = 1,  # r: a patch spans (2r+1) x (2r+1) cells
        max_patches: int = 4096,  # memory budget: patches per network call
        label_scale: str = "counts",  # subgrid counts as they are, or unit L2 norm (nn.edm2.scale_label)
    ):
        super().__init__()
        check_geometry(grid_size, radius)
        check_label_scale(label_scale)  # refuse an unknown scale now, not at the first call
        window = 2 * radius + 1
        patch_size = getattr(net, "img_resolution", None)
        if patch_size is None or patch_size % window:
            raise ValueError(f"the patch network's img_resolution ({patch_size}) must be (2r+1) * cell size "
                             f"= {window} * m for radius {radius}: build it with img_resolution={window}*m")
        label_dim = getattr(net, "label_dim", None)
        if label_dim != patch_label_dim(radius):
            raise ValueError(f"the patch network's label_dim is {label_dim}, but radius {radius} needs "
                             f"(2r+1)^2 + 2 = {patch_label_dim(radius)} (subgrid plus patch-centre coordinates)")
        if max_patches < 1:
            raise ValueError(f"max_patches must be >= 1, got {max_patches}")
        self.net = net
        self.grid_size = grid_size
        self.radius = radius
        self.cell_size = patch_size // window
        self.patch_size = patch_size
        self.img_resolution = grid_size * self.cell_size
        self.max_patches = max_patches
        self.label_scale = label_scale
        self._labels: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (cond, its version, its labels)

    def check_inputs(self, x: torch.Tensor, cond: torch.Tensor) -> None:
        g = self.grid_size
        if x.ndim != 4 or x.shape[-2:] != (self.img_resolution, self.img_resolution):
            raise ValueError(f"expected images [B, C, {self.img_resolution}, {self.img_resolution}] "
                             f"({g} cells of {self.cell_size} px), got {tuple(x.shape)}")
        if cond.shape != (x.shape[0], g, g):
            raise ValueError(f"expected a location conditioner grid [B, {g}, {g}] = [{x.shape[0]}, {g}, {g}], "
                             f"got {tuple(cond.shape)}: the patch-local model takes location grids only")

    def cell_labels(self, cond: torch.Tensor) -> torch.Tensor:
        """[B, G, G] -> [B, G, G, label_dim]: the label of every cell's patch."""
        centres = cell_centres(self.grid_size, cond.device).expand(cond.shape[0], -1, -1, -1)
        return patch_labels(all_subgrids(cond, self.radius), centres, self.label_scale)

    def flat_labels(self, cond: torch.Tensor) -> torch.Tensor:
        """[B, G, G] -> [B * G * G, label_dim], kept while the sampler passes the same, unchanged `cond` tensor
        (every step of a sample): the labels depend on the conditioner only."""
        cached = self._labels
        if cached is not None and cached[0] is cond and cached[1] == cond._version:
            return cached[2]
        labels = self.cell_labels(cond).reshape(-1, patch_label_dim(self.radius))
        self._labels = None if cond.requires_grad else (cond, cond._version, labels)
        return labels

    def cell_patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B * G * G, C, P, P], in one copy, laid out as the network's weights are (channels-last
        patches for a channels-last network: oneDNN then converts nothing)."""
        patches = all_patches(x, self.grid_size, self.radius)  # a view [B, G, G, C, P, P]
        if not self.channels_last:
            return patches.reshape(-1, x.shape[1], self.patch_size, self.patch_size)
        return patches.permute(0, 1, 2, 4, 5, 3).reshape(-1, self.patch_size, self.patch_size,
                                                          x.shape[1]).permute(0, 3, 1, 2)

    @property
    def channels_last(self) -> bool:
        """Whether the network stores its convolution weights channels-last (EDM2Diffusion's channels_last)."""
        weight = next((p for p in self.net.parameters() if p.ndim == 4), None)
        return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
            and not weight.is_contiguous()

    def denoise_patches(self, patches: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor,
                        chunk: int | None = None) -> torch.Tensor:
        """Run `net` on [N, C, P, P] patches in chunks of `chunk` (default `max_patches`); sigma is [N]."""
        chunk = chunk or self.max_patches
        outputs = [self.net(patches[i:i + chunk], sigma[i:i + chunk], labels[i:i + chunk])
                   for i in range(0, patches.shape[0], chunk)]
        return torch.cat(outputs)

    def chunk_for(self, device: torch.device) -> int:
        """Patches per network call: `max_patches` on an accelerator; on the CPU at most CPU_CHUNK_PATCHES, so that
        a call's activations stay in the caches (memory-bound elementwise layers dominate there)."""
        return min(self.max_patches, CPU_CHUNK_PATCHES) if device.type == "cpu" else self.max_patches

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        """Every cell of every image through `net` in batched calls (no loop over cells): the patches are cut in
        one copy, the labels computed once per conditioner (`flat_labels`), and only the centre cells of the
        outputs are kept; on the CPU in cache-sized chunks (`chunk_for`). Under bf16 autocast (the model's inference
        precision) the network runs in bf16."""
        self.check_inputs(x, cond)
        batch, channels = x.shape[:2]
        g, m, r = self.grid_size, self.cell_size, self.radius
        patches = self.cell_patches(x)
        labels = self.flat_labels(cond)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(batch).repeat_interleave(g * g)
        denoised = self.denoise_patches(patches, sigma, labels, self.chunk_for(x.device))
        centre = denoised[:, :, r * m:(r + 1) * m, r * m:(r + 1) * m]  # the cell itself
        return centre.reshape(batch, g, g, channels, m, m).permute(0, 3, 1, 4, 2, 5).reshape(x.shape)


def reference_forward(model: PatchLocal, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor
                      ) -> torch.Tensor:
    """`model(x, sigma, cond)` as it was computed before its speed-up (issue 32): contiguous patches, the labels
    recomputed at every call, chunks of `max_patches` on every device. The fast path must equal it (exactly in fp32 for a contiguous network); the tests
    and scripts/bench_patch.py compare the two."""
    model.check_inputs(x, cond)
    batch, channels = x.shape[:2]
    g, m, r = model.grid_size, model.cell_size, model.radius
    patches = all_patches(x, g, r).reshape(batch * g * g, channels, model.patch_size, model.patch_size)
    labels = model.cell_labels(cond).reshape(batch * g * g, -1)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
    sigma = sigma.expand(batch).repeat_interleave(g * g)
    denoised = model.denoise_patches(patches, sigma, labels)
    centre = denoised[:, :, r * m:(r + 1) * m, r * m:(r + 1) * m]
    return centre.reshape(batch, g, g, channels, m, m).permute(0, 3, 1, 4, 2, 5).reshape(x.shape)


# ---- training patches (Appendix E.3: one positive and one negative patch per image) -------------


def sample_training_cells(cond: torch.Tensor, radius: int, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, a cell whose patch holds >= 1 active conditioner (positive) and one whose patch
    holds none (negative), uniformly among such cells. Returns `positive`, `negative` as [B, 2]
    (row, col) and `has_negative` [B]: where no negative cell exists (a patch covers every object,
    e.g. for large r), the second cell is drawn uniformly from all cells instead.
    """
    batch, g, _ = cond.shape
    active = all_subgrids(cond, radius).flatten(-2).sum(-1) > 0  # [B, G, G]
    flat = active.reshape(batch, g * g)
    check_labelled(flat.any(dim=1))
    # A masked argmax of uniform noise picks a uniformly random cell among the allowed ones.
    noise = torch.rand(2, batch, g * g, generator=generator, device=cond.device)
    positive = torch.where(flat, noise[0], -1.0).argmax(dim=1)
    has_negative = (~flat).any(dim=1)
    negative = torch.where(~flat | ~has_negative[:, None], noise[1], -1.0).argmax(dim=1)
    return flat_to_cells(positive, g), flat_to_cells(negative, g), has_negative


def check_labelled(labelled: torch.Tensor) -> None:
    """Refuse a batch with an image that names no object ([B] bool): it has no positive patch. On the host the
    check is immediate; on an accelerator it is a device-side assertion, so a training step never waits for it
    (the patch-local model refuses label modes that can name nothing before training starts)."""
    if labelled.device.type != "cpu":
        torch._assert_async(labelled.all(), "an image of the batch names no object: it has no positive patch")
    elif not labelled.all():
        empty = (~labelled).nonzero().flatten().tolist()
        raise ValueError(f"images {empty} of the batch have no active conditioner: a positive patch needs "
                         f"at least one labelled object (check the label mode)")


def flat_to_cells(index: torch.Tensor, grid_size: int) -> torch.Tensor:
    """[B] flat cell indices -> [B, 2] (row, col)."""
    return torch.stack([index // grid_size, index % grid_size], dim=1)


def gather_cells(per_cell: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Pick one cell per image: per_cell [B, G, G, ...], cells [B, 2] -> [B, ...]."""
    return per_cell[torch.arange(per_cell.shape[0], device=per_cell.device), cells[:, 0], cells[:, 1]]
