"""The one denoiser interface every model, analysis and command shares (docs/architecture.md, "One denoiser interface").

A denoiser is called as `denoiser(x, sigma, cond) -> D(x)`: the denoised image in the EDM convention (the score
is `(D - x) / sigma^2`). Beside the call it says what its callers need, so that no sampler, analysis, command or
callback reaches into a model's network to find out:

    image_shape   (C, H, W) of the images it denoises: the full image also for the patch-local model, the
                  VAE latent for SDXL
    conditioning  the kind of `cond`: "location" ([B, G, G] counts), "color" ([B, 8] counts), "text" (SDXL)
    grid_size     the location grid G (None for other kinds)
    network       the nn.Module whose layers the feature analyses may hook (the global U-Net, the patch-local
                  model's patch U-Net, SDXL's UNet)

The global and patch-local LightningModules present it as `module.denoiser` (a `BoundDenoiser` around their
denoising method), the SDXL adapter is one itself, and a test's plain function can be wrapped in a
`BoundDenoiser`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

CONDITIONING_KINDS = ("location", "color", "text")


@runtime_checkable
class Denoiser(Protocol):
    """`denoiser(x, sigma, cond) -> D(x)` with the description above."""

    image_shape: tuple[int, int, int]
    conditioning: str
    grid_size: int | None
    network: nn.Module | None

    def __call__(self, x: Tensor, sigma: Tensor | float, cond) -> Tensor: ...


@dataclass(frozen=True)
class BoundDenoiser:
    """A denoising function with its description (the `Denoiser` protocol)."""

    function: Callable[[Tensor, "Tensor | float", object], Tensor]  # (x, sigma, cond) -> D(x)
    image_shape: tuple[int, int, int]                              # (C, H, W)
    conditioning: str                                              # location | color | text
    grid_size: int | None = None                                   # location grid G
    network: nn.Module | None = None                               # layers the feature analyses hook

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONING_KINDS:
            raise ValueError(f"a denoiser's conditioning is one of {CONDITIONING_KINDS}, got {self.conditioning!r}")
        if len(self.image_shape) != 3:
            raise ValueError(f"a denoiser's image_shape is (C, H, W), got {self.image_shape!r}")

    def __call__(self, x: Tensor, sigma: Tensor | float, cond) -> Tensor:
        return self.function(x, sigma, cond)
