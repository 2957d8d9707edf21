"""The object judge: a small conv U-Net predicting an object-centre heatmap and per-pixel colour logits.

Centre-heatmap detection (CenterNet-style): the net predicts, per pixel, the logit that an object's centre
lies in that pixel, and 8 colour logits (scenes.COLOR_NAMES order). Targets are a Gaussian bump around the
pixel holding each centre (1 at that pixel); `centre_heatmap_loss` is the penalty-reduced focal loss of
CenterNet (Zhou et al. 2019, Eq. 1). `extract_peaks` turns a heatmap into centres: 3x3 max-pool NMS, a
score threshold, and a 3x3 weighted-centroid refinement to sub-pixel (x, y), origin top-left, pixel i
covering [i, i+1) like the scene JSON's pixel_coords. Only torch here (nn layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_COLORS = 8


class ConvBlock(nn.Sequential):
    """Two 3x3 convs with GroupNorm and SiLU."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
    ) -> None:
        groups = min(8, out_channels)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(groups, out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.GroupNorm(groups, out_channels), nn.SiLU(),
        )


class CentreHeatmapNet(nn.Module):
    """U-Net: image [B, 3, H, W] in [-1, 1] -> [B, 1 + 8, H, W] (centre logit, colour logits)."""

    def __init__(
        self,
        channels: int = 32,  # channels at full resolution (doubled at each of the downsamplings)
        levels: int = 2,  # number of 2x downsamplings; H and W must be divisible by 2**levels
    ) -> None:
        super().__init__()
        self.config = {"channels": channels, "levels": levels}  # constructor arguments, for checkpoints
        self.levels = levels
        widths = [channels * 2**i for i in range(levels + 1)]
        self.encoders = nn.ModuleList([ConvBlock(3, widths[0])] +
                                      [ConvBlock(widths[i], widths[i + 1]) for i in range(levels)])
        self.decoders = nn.ModuleList([ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels))])
        self.head = nn.Conv2d(widths[0], 1 + NUM_COLORS, 1)
        nn.init.constant_(self.head.bias[:1], -4.0)  # start from "no object anywhere" (CenterNet's prior)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] % 2**self.levels or images.shape[-2] % 2**self.levels:
            raise ValueError(f"the judge needs image sides divisible by {2**self.levels}, got {tuple(images.shape[-2:])}")
        skips = []
        x = images
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            x = decoder(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1))
        return self.head(x)


def centre_targets(
    centres: torch.Tensor,  # [B, N, 2] centres (x, y) in pixels; NaN rows are padding
    height: int,  # heatmap height
    width: int,  # heatmap width
    sigma: float = 1.0,  # Gaussian radius in pixels
) -> torch.Tensor:
    """`[B, 1, H, W]` target heatmap: max over objects of a Gaussian at the pixel holding each centre."""
    batch = centres.shape[0]
    ys = torch.arange(height, dtype=torch.float32, device=centres.device).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32, device=centres.device).view(1, 1, 1, width)
    valid = ~torch.isnan(centres).any(-1)  # [B, N]
    cells = torch.nan_to_num(centres).floor()
    cx = cells[..., 0].clamp(0, width - 1).view(batch, -1, 1, 1)
    cy = cells[..., 1].clamp(0, height - 1).view(batch, -1, 1, 1)
    bumps = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))  # [B, N, H, W]
    bumps = bumps * valid.view(batch, -1, 1, 1)
    if bumps.shape[1] == 0:
        return torch.zeros(batch, 1, height, width, device=centres.device)
    return bumps.amax(dim=1, keepdim=True)


def centre_heatmap_loss(
    logits: torch.Tensor,  # [B, 1, H, W] centre logits
    target: torch.Tensor,  # [B, 1, H, W] centre_targets
    alpha: float = 2.0,  # focusing exponent
    beta: float = 4.0,  # penalty reduction near centres
) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss (CenterNet Eq. 1), normalised by the number of objects."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.ge(1.0 - 1e-6).float()
    pos_loss = -((1 - prob) ** alpha) * torch.log(prob) * positive
    neg_loss = -((1 - target) ** beta) * prob**alpha * torch.log(1 - prob) * (1 - positive)
    return (pos_loss.sum() + neg_loss.sum()) / positive.sum().clamp_min(1.0)


def centre_color_loss(
    color_logits: torch.Tensor,  # [B, 8, H, W]
    centres: torch.Tensor,  # [B, N, 2] pixels, NaN padding
    colors: torch.Tensor,  # [B, N] colour indices, -1 padding
) -> torch.Tensor:
    """Cross-entropy of the colour logits read at the pixel holding each object centre."""
    valid = ~torch.isnan(centres).any(-1) & colors.ge(0)
    if not valid.any():
        return color_logits.sum() * 0.0
    b, n = valid.nonzero(as_tuple=True)
    height, width = color_logits.shape[-2:]
    px = centres[b, n, 0].floor().long().clamp(0, width - 1)
    py = centres[b, n, 1].floor().long().clamp(0, height - 1)
    return F.cross_entropy(color_logits[b, :, py, px], colors[b, n])


def extract_peaks(
    heatmap: torch.Tensor,  # [H, W] centre probabilities of one image
    threshold: float = 0.5,  # minimum peak probability
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima (3x3 NMS) above threshold -> (`[m, 2]` float centres (x, y) in pixels, `[m, 2]` long (row, col)).

    Each centre is the 3x3 weighted centroid of the heatmap around its peak pixel, in pixel-centre
    coordinates (pixel (row, col) has centre (col + 0.5, row + 0.5)).
    """
    if heatmap.dim() != 2:
        raise ValueError(f"extract_peaks takes one [H, W] heatmap, got shape {tuple(heatmap.shape)}")
    pooled = F.max_pool2d(heatmap[None, None], 3, stride=1, padding=1)[0, 0]
    peak = (heatmap == pooled) & (heatmap > threshold)
    # plateaus (equal neighbours) would give several peaks for one object: keep the first in raster order
    peak_idx = peak.nonzero()
    kept: list[torch.Tensor] = []
    for rc in peak_idx:
        if all((rc - other).abs().max() > 1 for other in kept):
            kept.append(rc)
    if not kept:
        return torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.long)
    cells = torch.stack(kept)
    padded = F.pad(heatmap, (1, 1, 1, 1))
    offsets = torch.tensor([-1.0, 0.0, 1.0], device=heatmap.device)
    centres = []
    for row, col in cells.tolist():
        window = padded[row : row + 3, col : col + 3]
        weight = window.sum()
        dy = (window.sum(1) * offsets).sum() / weight
        dx = (window.sum(0) * offsets).sum() / weight
        centres.append(torch.stack([col + 0.5 + dx, row + 0.5 + dy]))
    return torch.stack(centres).float().cpu(), cells.cpu()
