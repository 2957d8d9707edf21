"""Length-generalization figures: success vs k per row, and the judged samples with their requests marked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lcsbench.analysis.lengthgen.matching import judge_request
from lcsbench.analysis.lengthgen.protocol import cell_centres_pixels
from lcsbench.analysis.lengthgen.tally import K_MAX_STRICT_THRESHOLD, K_MAX_THRESHOLD
from lcsbench.data.scenes import DEFAULT_GRID_SIZE


def plot_success_curves(report: Mapping, path=None, title: str = "length generalization"):
    """Success rate vs k, one line per row (model beside oracle), with the 25% / 50% k_max thresholds."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no backend switch

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    styles = {"model": ("tab:blue", "o"), "oracle": ("tab:gray", "s")}
    for name, row in report["rows"].items():
        ks = [int(k) for k in row["per_k"]]
        rates = [row["per_k"][str(k)]["success_rate"] for k in ks]
        color, marker = styles.get(name, (None, "^"))
        ax.plot(ks, rates, marker=marker, color=color, label=f"{name} (k_max {row['k_max']}, strict {row['k_max_strict']})")
    ax.axhline(K_MAX_THRESHOLD, color="tab:red", lw=0.8, ls="--")
    ax.axhline(K_MAX_STRICT_THRESHOLD, color="tab:orange", lw=0.8, ls=":")
    ax.set_xlabel("k (requested objects)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def detection_grid(
    images: np.ndarray,  # [N, H, W, 3] uint8
    requests: Sequence[Mapping],  # their protocol requests
    detections: Sequence[Mapping],  # their judge outputs
    grid_size: int = DEFAULT_GRID_SIZE,  # conditioning grid G (the matching tolerance is one of its cells)
    scale: int = 4,  # upscaling so the marks are visible
    columns: int | None = None,  # tiles per row; default: a square grid
    tolerance_cells: float = 1.0,  # the matching of the report the grid illustrates
    match: str = "cell",
):
    """A PIL image: the samples tiled, requested centres as green crosses (and, under the cell rule, the
    requested cells as green squares), detections as circles (yellow when matched to a request, red when
    extra; colour requests: circles only)."""
    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    tile_w, tile_h = w * scale, h * scale
    canvas = Image.new("RGB", (columns * (tile_w + 2) + 2, rows * (tile_h + 2) + 2), "white")
    for i in range(n):
        r, c = divmod(i, columns)
        left, top = 2 + c * (tile_w + 2), 2 + r * (tile_h + 2)
        canvas.paste(Image.fromarray(images[i]).resize((tile_w, tile_h), Image.NEAREST), (left, top))
        draw = ImageDraw.Draw(canvas)
        request, detection = requests[i], detections[i]
        matched = set()
        if "locations" in request:
            pairs = judge_request(request, detection, w, grid_size, tolerance_cells, match)["pairs"]
            matched = {d for _, d in pairs}
            for x, y in request["locations"]:
                px, py = left + x * tile_w, top + y * tile_h
                if match == "cell":
                    cx, cy = cell_centres_pixels([(x, y)], grid_size, w)[0] * scale
                    half = scale * w / grid_size / 2
                    draw.rectangle([left + cx - half, top + cy - half, left + cx + half, top + cy + half],
                                   outline=(0, 160, 0))
                draw.line([(px - 3, py), (px + 3, py)], fill=(0, 255, 0))
                draw.line([(px, py - 3), (px, py + 3)], fill=(0, 255, 0))
        centres = detection["centres"]
        for j, (x, y) in enumerate(np.asarray(centres).reshape(-1, 2).tolist()):
            px, py = left + x * scale, top + y * scale
            color = (255, 220, 0) if (j in matched or "locations" not in request) else (255, 0, 0)
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], outline=color)
    return canvas



def save_figures(result, out: str | Path, title: str) -> None:
    """A study's figures in `out` (a `study.Result`): `lengthgen.png` (success vs k) and, per row and k, the judged
    images with their requests marked: `samples_k{K}.png` for the model row, `{row}_k{K}.png` for the others."""
    out = Path(out)
    plot_success_curves(result.report, out / "lengthgen.png", title=title)
    protocol = result.protocol
    for name, images in result.images.items():
        prefix = "samples" if name == "model" else name
        for k in protocol.ks:
            index = [i for i, request in enumerate(result.requests) if request["k"] == k]
            detection_grid(images[index], [result.requests[i] for i in index],
                           [result.detections[name][i] for i in index], protocol.grid_size,
                           tolerance_cells=protocol.tolerance_cells, match=protocol.match
                           ).save(out / f"{prefix}_k{k}.png")
