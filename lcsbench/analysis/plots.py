"""Figures and image grids of the analyses (paper Figures 2, 5, 10, 11), on matplotlib's object API.

Each figure function returns a `matplotlib.figure.Figure` built without pyplot, so importing or calling this
module never selects a backend or touches a notebook's figures; `save_figure` writes a PNG (`Figure.savefig`
renders through Agg), and callbacks hand the same figure to TensorBoard's `add_figure`. `image_grid` tiles
sample images into one uint8 picture (pure torch) for TensorBoard's `add_image` and `lcsbench sample`, after
`upscale` (nearest neighbour, so a 32 px tile is seen at 96 px without blur) and `outline_cells` (the conditioned
location cells drawn on each tile, so a grid shows what was asked beside what was drawn).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from lcsbench.analysis.features import FeatureCosines
from lcsbench.analysis.locality import LocalityProfile


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 1) -> torch.Tensor:
    """Tile `[N, C, H, W]` images in [-1, 1] into one `uint8 [H', W', C]` image (white gaps)."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = ((images.detach().float().cpu() * 127.5 + 128).clamp(0, 255)).to(torch.uint8)
    grid = torch.full((c, rows * (h + padding) + padding, columns * (w + padding) + padding), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = pixels[i]
    return grid.permute(1, 2, 0).contiguous()


CELL_OUTLINE = (-1.0, 1.0, -1.0)  # lime in [-1, 1] RGB: brighter than any CLEVR material's green


def upscale(images: Tensor, min_size: int = 96) -> Tensor:
    """`[N, C, H, W]` images enlarged by the smallest whole factor that makes H at least `min_size`, each pixel a
    block of identical pixels (nearest neighbour)."""
    factor = max(1, math.ceil(min_size / images.shape[-2]))
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def outline_cells(images: Tensor, location_grid: Tensor) -> Tensor:
    """`[N, C, H, W]` images in [-1, 1] with the cells of their `[N or 1, G, G]` location conditioner (counts > 0)
    outlined in CELL_OUTLINE, one line of max(1, H // 96) px just inside each cell (cell (i, j) covers rows
    i H / G .. (i + 1) H / G and the same in columns). Returns a copy."""
    images = images.detach().float().clone()
    n, c, h, w = images.shape
    grid = location_grid.expand(n, *location_grid.shape[-2:]) if location_grid.shape[0] == 1 else location_grid
    g = grid.shape[-1]
    width = max(1, h // 96)
    colour = torch.tensor(CELL_OUTLINE if c == 3 else (1.0,) * c)
    for index, cells in enumerate(grid.cpu()):
        for i, j in (cells > 0).nonzero().tolist():
            top, bottom = round(i * h / g), round((i + 1) * h / g)
            left, right = round(j * w / g), round((j + 1) * w / g)
            for rows, cols in ((slice(top, top + width), slice(left, right)),
                               (slice(bottom - width, bottom), slice(left, right)),
                               (slice(top, bottom), slice(left, left + width)),
                               (slice(top, bottom), slice(right - width, right))):
                images[index, :, rows, cols] = colour.view(c, 1, 1)
    return images


def _image(tensor: Tensor) -> Tensor:
    """[C, H, W] in [-1, 1] -> [H, W, C] in [0, 1] for imshow (first 3 channels, or grey)."""
    image = tensor.detach().float().cpu()
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    return ((image + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


def _mark(axis, centre: Sequence[float], color: str = "lime") -> None:
    axis.plot([centre[1]], [centre[0]], marker="+", color=color, markersize=8, mew=1.5)


def _radius_box(axis, centre: Sequence[float], radius: float, color: str = "white") -> None:
    if radius == radius:  # not NaN
        from matplotlib.patches import Rectangle

        xlim, ylim = axis.get_xlim(), axis.get_ylim()  # keep the image's extent: the square may leave it
        axis.add_patch(Rectangle((centre[1] - radius - 0.5, centre[0] - radius - 0.5), 2 * radius + 1,
                                 2 * radius + 1, fill=False, edgecolor=color, linewidth=0.8, clip_on=True))
        axis.set_xlim(xlim)
        axis.set_ylim(ylim)


def locality_grid(
    profile: LocalityProfile,               # measurements over noise levels
    target: int = 0,                        # which target pixel's heatmap to show
    max_conditioners: int = 6,              # conditional-influence columns shown at most
    title: str | None = None,               # figure title
) -> Figure:
    """Figure-2-style grid: one row per noise level; columns: noisy input, denoised output, pixel heatmap at
    the target (Eq. 9, with its 90% square), the same for D - c_skip x when measured, and one conditional-
    influence map per conditioner (Eq. 10). Every map has its colourbar; pixels are (row, col) from the
    top-left corner, as in the caption."""
    from matplotlib.lines import Line2D

    num_cond = 0 if profile.influence is None else min(len(profile.conditioners), max_conditioners)
    residual = profile.heat_without_skip is not None
    first_cond = 4 if residual else 3
    rows, cols = len(profile.sigmas), first_cond + num_cond
    figure = Figure(figsize=(2.2 * cols, 2.0 * rows + 1.0), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    centre = profile.pixels[target]
    for s, sigma in enumerate(profile.sigmas):
        axes[s, 0].imshow(_image(profile.noisy[s].clamp(-1, 1)))
        _mark(axes[s, 0], centre)
        axes[s, 0].set_ylabel(f"sigma={sigma:.3g}")
        axes[s, 1].imshow(_image(profile.denoised[s]))
        maps = [(2, profile.heat[s, target], "magma", float(profile.pixel_radius[s, target]))]
        if residual:
            maps.append((3, profile.heat_without_skip[s, target], "magma",
                         float(profile.pixel_radius_without_skip[s, target])))
        for column, heat, cmap, radius in maps:
            image = axes[s, column].imshow(heat.numpy(), cmap=cmap)
            figure.colorbar(image, ax=axes[s, column], shrink=0.8).ax.tick_params(labelsize=5)
            _mark(axes[s, column], centre)
            _radius_box(axes[s, column], centre, radius)
        for j in range(num_cond):
            axis = axes[s, first_cond + j]
            image = axis.imshow(profile.influence[s, j].numpy(), cmap="viridis")
            figure.colorbar(image, ax=axis, shrink=0.8).ax.tick_params(labelsize=5)
            if profile.conditioner_centres:
                _mark(axis, profile.conditioner_centres[j], color="red")
                _radius_box(axis, profile.conditioner_centres[j], float(profile.conditional_radius[s, j]))
            _mark(axis, centre)
    headers = ["x (noisy)", "D(x)", f"Eq. 9 |dD/dx| at {tuple(centre)}"]
    headers += [f"Eq. 9 of D - c_skip x"] if residual else []
    headers += [f"Eq. 10 cell {tuple(profile.conditioners[j])}" for j in range(num_cond)]
    for c, header in enumerate(headers):
        axes[0, c].set_title(header, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.legend(handles=[Line2D([], [], marker="+", color="lime", ls="", label="target pixel"),
                           Line2D([], [], marker="+", color="red", ls="", label="conditioned cell's centre"),
                           Line2D([], [], marker="s", mfc="none", color="0.5", ls="", label="90% radius square")],
                  loc="outside lower center", ncols=3, fontsize=7)
    figure.suptitle((title + "\n" if title else "") + "pixels: (row, col) from the top-left; grid cells: (row, "
                    "col) of the G x G grid", fontsize=9)
    return figure


def radius_curves(profile: LocalityProfile, title: str | None = None, scenes: dict | None = None) -> Figure:
    """Figure-10-style curves against sigma: the 90% locality radius (pixel, per target, and conditional, per
    conditioner), and each conditioner's influence at each target pixel. With `scenes` (analysis.locality.
    scenes_summary over several scenes) the radius panels show the mean over scenes with a band of one standard
    deviation across scenes instead. The radius axis runs from 0 to the image size (a radius of half the image
    size already covers the whole image from its centre)."""
    panels = 1 if profile.influence is None else 3
    figure = Figure(figsize=(4.4 * panels, 3.6), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    sigmas = profile.sigmas
    size = profile.heat.shape[-1]
    many = scenes is not None and scenes.get("scenes", 1) > 1
    keys = [("pixel_radius", 0, "D"), ("pixel_radius_without_skip", 0, "D - c_skip x")]
    keys += [("conditional_radius", 1, "conditioners")] if profile.influence is not None else []
    if many:
        for key, panel, label in keys:
            mean, std = scenes.get(f"{key}_mean"), scenes.get(f"{key}_scene_std")
            if mean is None:
                continue
            mean = torch.tensor([float("nan") if v is None else v for v in mean])
            std = torch.tensor([0.0 if v is None else v for v in std])
            axes[panel].plot(sigmas, mean.numpy(), marker="o", ms=3, label=f"{label}: mean of {scenes['scenes']} scenes")
            axes[panel].fill_between(sigmas, (mean - std).numpy(), (mean + std).numpy(), alpha=0.2, lw=0)
    else:
        for p, pixel in enumerate(profile.pixels):
            axes[0].plot(sigmas, profile.pixel_radius[:, p].numpy(), marker="o", ms=3, label=f"D at {tuple(pixel)}")
        if profile.influence is not None:
            for j, cond in enumerate(profile.conditioners):
                axes[1].plot(sigmas, profile.conditional_radius[:, j].numpy(), marker="o", ms=3,
                             label=f"cell {tuple(cond)}")
    axes[0].set_title(f"pixel locality (Eq. 9): {profile.fraction:.0%} radius", fontsize=9)
    if profile.influence is not None:
        axes[1].set_title(f"conditional locality (Eq. 10): {profile.fraction:.0%} radius", fontsize=9)
        for p, pixel in enumerate(profile.pixels[:4]):
            for j, cond in enumerate(profile.conditioners[:8]):
                axes[2].plot(sigmas, profile.influence_at_targets[:, p, j].numpy(), marker=".", ms=3,
                             label=f"cell {tuple(cond)} at pixel {tuple(pixel)}")
        axes[2].set_title("Eq. 10 influence at target pixels (first scene)", fontsize=9)
        axes[2].set_yscale("symlog", linthresh=1e-4)
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("sigma (noise level)")
        axis.legend(fontsize=6)
    for axis in axes[:min(2, panels)]:
        axis.set_ylim(0, size)
        axis.axhline(size / 2, color="0.6", lw=0.8, ls=":")
        axis.set_ylabel(f"radius (pixels; image {size} px, dotted: half of it)")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def cosine_matrices(cosines: FeatureCosines, max_layers: int = 40, title: str | None = None) -> Figure:
    """Figure-5/11-style labelled cosine matrices: the average over the chosen layers first, then each layer."""
    panels = [("average: " + _short(cosines.averaged_layers), cosines.average)]
    panels += [(name, matrix) for name, matrix in list(cosines.per_layer.items())[:max_layers]]
    cols = min(len(panels), 6)
    rows = math.ceil(len(panels) / cols)
    k = len(cosines.labels)
    size = 1.2 + 0.28 * k
    figure = Figure(figsize=(size * cols, size * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    image = None
    for axis, (name, matrix) in zip(axes.flat, panels):
        image = axis.imshow(matrix.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        axis.set_title(name.removesuffix(".emb_linear"), fontsize=7)
        axis.set_xticks(range(k), cosines.labels, rotation=90, fontsize=6)
        axis.set_yticks(range(k), cosines.labels, fontsize=6)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.6, label="cosine")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _short(names: Sequence[str]) -> str:
    return f"{len(names)} layers" if len(names) > 2 else ", ".join(n.removesuffix(".emb_linear") for n in names)


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write a figure as PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def heat_to_image(heat: Tensor) -> Tensor:
    """A map [H, W] -> [1, H, W] normalised to [0, 1], for TensorBoard add_image."""
    heat = heat.detach().float().cpu()
    return (heat / heat.max().clamp_min(torch.finfo(torch.float32).tiny))[None]
