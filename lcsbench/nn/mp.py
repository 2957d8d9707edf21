"""Magnitude-preserving (MP) primitives of EDM2 (Karras et al. 2024, Sec. 3 and Appendix B).

Every op keeps unit expected RMS for unit-RMS inputs, so the network needs no biases, GroupNorm or
LayerNorm. Stateless helpers are plain functions; the two layers with state (`MPFourier`, `MPConv`) are
tiny modules. Forced weight normalization (Eq. 66) is `force_weight_norm_`, which the training loop calls
after every optimizer step (the paper we reproduce: "weight renormalization after the weights are
updated"); the forward pass only does the differentiable normalization (Eq. 47), so the stored weights
stay plain leaf tensors that `torch.compile`, DDP and EMA copies handle without surprises.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lcsbench.nn.multi_tensor import normalize_rows_

# --- normalization: x / (eps + RMS(x)) over every dim but the first (Eq. 47 / Eq. 66) -------------


def normalize(
    x: torch.Tensor,
    dim: int | tuple[int, ...] | None = None,  # dims to reduce; default: all but dim 0
    eps: float = 1e-4,  # added to the RMS, not to the L2 norm
) -> torch.Tensor:
    """Scale `x` to unit RMS over `dim`: the norm is reduced in float32 (no float32 copy of `x` is made, which
    under bf16 autocast would double the activation memory), the result is in x's dtype."""
    if dim is None:
        dim = tuple(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    reduced = x.numel() // max(norm.numel(), 1)
    rms = norm / math.sqrt(reduced)
    return x / (eps + rms).to(x.dtype)


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """Unit RMS over channels at every pixel: `normalize(x, dim=1)`."""
    return normalize(x, dim=1)


# --- resampling: 2x2 box down, nearest up (the default [1,1] filter of EDM2) -----------------------


def resample(x: torch.Tensor, mode: str = "keep") -> torch.Tensor:
    """`keep` | `down` (2x2 average pool) | `up` (nearest-neighbour x2)."""
    if mode == "keep":
        return x
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    raise ValueError(f"resample mode must be 'keep', 'down' or 'up', got {mode!r}")


# --- MP nonlinearity and blends -----------------------------------------------------------------


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its RMS on a standard normal (Eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Weighted sum with weight `t` on `b`, rescaled to unit RMS for independent inputs (Eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenate `a` then `b` along `dim`, `b` weighted by `t`, keeping unit RMS (Eq. 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    wa = scale / math.sqrt(na) * (1 - t)
    wb = scale / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


# --- MP Fourier features of the noise level (Eq. 75) ----------------------------------------------


class MPFourier(torch.nn.Module):
    """Random, frozen Fourier features: `[N] -> [N, C]`, unit RMS, computed in float32."""

    def __init__(
        self,
        num_channels: int,  # C: number of features
        bandwidth: float = 1.0,  # std of the frequencies, in cycles per unit input
    ):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).ger(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


# --- MP convolution / linear layer with weight normalization (Eq. 47, Eq. 66) ----------------------


class MPConv(torch.nn.Module):
    """Bias-free conv (kernel [kh, kw]) or linear (kernel []) whose rows are normalized to norm |gain|."""

    def __init__(
        self,
        in_channels: int,  # input channels (features for a linear layer)
        out_channels: int,  # output channels
        kernel: tuple[int, ...] | list[int],  # [] for linear, [kh, kw] for a conv
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        weight = torch.randn(out_channels, in_channels, *kernel)
        self.weight = torch.nn.Parameter(normalize(weight))  # stored rows have unit RMS from the start

    @torch.no_grad()
    def force_weight_norm_(self) -> None:
        """Forced weight normalization (Eq. 66): rescale every stored row to unit RMS, in place."""
        self.weight.copy_(normalize(self.weight.to(torch.float32)))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        w = normalize(self.weight.to(torch.float32))  # differentiable ("traditional") weight norm
        w = w * (gain / math.sqrt(w[0].numel()))  # each row now has L2 norm |gain|
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def force_weight_norm_(module: torch.nn.Module) -> int:
    """Renormalize every `MPConv` weight inside `module` to unit-RMS rows (Eq. 66); returns how many.

    All weights are renormalized together, a few kernels per row length (multi_tensor.normalize_rows_),
    instead of a handful per layer: after every optimizer step this was ~5 launches x every layer."""
    weights = [layer.weight for layer in module.modules() if isinstance(layer, MPConv)]
    normalize_rows_(weights)
    return len(weights)
