"""Figures of the SDXL studies (paper Figures 6, 7 and 13), as matplotlib figures the caller saves.

Built on matplotlib's object API (`Figure`, no pyplot), so importing this module never switches a backend.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from lcsbench.analysis.sdxl.studies import AttentionStudy, LocalityStudy


def _image(tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def locality_figure(study: LocalityStudy):
    """Figure 6: per stop step (rows) the decoded denoised estimate, the per-pixel dominant word (grey where
    no set of words dominates), and the Eq. 9 heat map of each target pixel with its locality-radius square."""
    words = study.steps[0].influence.words
    palette = matplotlib.colormaps["tab10" if len(words) <= 10 else "tab20"]
    colors = ["#d0d0d0"] + [palette(i % palette.N) for i in range(len(words))]
    cmap = ListedColormap(colors)
    rows, cols = len(study.steps), 2 + len(study.pixels)
    fig = Figure(figsize=(2.4 * cols, 2.4 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, at in enumerate(study.steps):
        axes[r, 0].imshow(_image(at.denoised_image))
        axes[r, 0].set_ylabel(f"step {at.step}\nsigma {at.sigma:.2f}")
        top = at.ranking.order[0] + 1
        label = np.where(at.ranking.num_dominant.numpy() > 0, top.numpy(), 0)
        axes[r, 1].imshow(label, cmap=cmap, vmin=0, vmax=len(words), interpolation="nearest")
        for p, (pixel, heat, radius) in enumerate(zip(study.pixels, at.heat, at.pixel_radius)):
            ax = axes[r, 2 + p]
            ax.imshow(heat.numpy(), cmap="magma")
            ax.plot(pixel[1], pixel[0], "c+", markersize=8)
            if radius == radius:  # the radius square, clipped to the latent
                height, width = heat.shape
                top, left = max(pixel[0] - radius, 0) - 0.5, max(pixel[1] - radius, 0) - 0.5
                bottom, right = min(pixel[0] + radius, height - 1) + 0.5, min(pixel[1] + radius, width - 1) + 0.5
                ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="cyan",
                                       linewidth=1))
                ax.set_xlim(-0.5, width - 0.5)
                ax.set_ylim(height - 0.5, -0.5)
            if r == 0:
                ax.set_title(f"d D / d x at {pixel}")
            ax.set_xlabel(f"radius {radius:g}")
    axes[0, 0].set_title("denoised estimate")
    axes[0, 1].set_title("dominant word")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=colors[i + 1], label=w) for i, w in enumerate(words)] + \
        [Patch(color=colors[0], label="no dominant set")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8)
    fig.suptitle(study.prompt, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    return fig


def word_influence_figure(study: LocalityStudy):
    """The word-ablation maps themselves: rows are stop steps, columns words, one colour scale per row."""
    words = study.steps[0].influence.words
    fig = Figure(figsize=(1.8 * len(words), 1.9 * len(study.steps)))
    axes = fig.subplots(len(study.steps), len(words), squeeze=False)
    for r, at in enumerate(study.steps):
        vmax = float(at.influence.maps.max())
        for c, word in enumerate(words):
            axes[r, c].imshow(at.influence.maps[c].numpy(), cmap="viridis", vmin=0, vmax=vmax)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(word, fontsize=9)
        axes[r, 0].set_ylabel(f"step {at.step}")
    fig.tight_layout()
    return fig


def _matrix(ax, matrix, labels: Sequence[str], title: str, annotate: bool) -> None:
    ax.imshow(np.asarray(matrix, dtype=float), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title, fontsize=8)
    if annotate:
        for i in range(len(labels)):
            for j in range(len(labels)):
                value = float(matrix[i][j])
                if value == value:
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5)


def cosine_groups_figure(study: AttentionStudy, analysis: dict):
    """Figure 7: Eq. 3 cosine matrices averaged over each layer group (rows) at each captured step (columns)."""
    groups = list(analysis["averages"])
    fig = Figure(figsize=(3.4 * len(study.steps), 3.4 * len(groups)))
    axes = fig.subplots(len(groups), len(study.steps), squeeze=False)
    for r, group in enumerate(groups):
        for c, step in enumerate(study.steps):
            _matrix(axes[r, c], analysis["averages"][group][step], analysis["labels"],
                    f"{group}, step {step}", annotate=True)
    fig.tight_layout()
    return fig


def cosine_layers_figure(study: AttentionStudy, analysis: dict, step: int):
    """Figure 13: the cosine matrix of every captured cross-attention layer at one step."""
    layers = study.layers
    cols = min(5, len(layers))
    rows = -(-len(layers) // cols)
    fig = Figure(figsize=(2.8 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, layer in enumerate(layers):
        short = layer.replace(".transformer_blocks.", ".tb").replace(".attentions.", ".a").replace(".attn2", "")
        _matrix(axes.flat[index], analysis["matrices"][(layer, step)], analysis["labels"], short, annotate=False)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    fig.suptitle(f"cross-attention cosine similarity per layer, step {step}", fontsize=10)
    fig.tight_layout()
    return fig


def composition_figure(study: AttentionStudy, analysis: dict):
    """Compositional analysis: cosine between a token's vector in a composite prompt and in its single prompt,
    averaged over each layer group, one bar group per composite entry and one bar per step."""
    pairs = analysis["pairs"]
    groups = list(analysis["groups"])
    fig = Figure(figsize=(4.2 * len(groups), 3.6))
    axes = fig.subplots(1, len(groups), squeeze=False)
    width = 0.8 / len(study.steps)
    for g, group in enumerate(groups):
        ax = axes[0, g]
        members = analysis["groups"][group]
        for s, step in enumerate(study.steps):
            values = [np.nanmean([analysis["composition"][(layer, step)][c] for layer in members]) for c, _ in pairs]
            ax.bar(np.arange(len(pairs)) + s * width, values, width, label=f"step {step}")
        ax.set_xticks(np.arange(len(pairs)) + width * (len(study.steps) - 1) / 2, [c for c, _ in pairs],
                      rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-1, 1)
        ax.axhline(0, color="k", linewidth=0.5)
        ax.set_title(group, fontsize=9)
    axes[0, 0].set_ylabel("cosine with single prompt")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return fig
