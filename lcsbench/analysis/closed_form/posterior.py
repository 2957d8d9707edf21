"""The posterior mean over training examples, accumulated chunk by chunk (memory bounded by a budget).

Both closed forms are softmax-weighted means (EDM convention, x = x0 + sigma n):

    D(x; sigma, c) = sum_e w_e v_e,   w = softmax_e( log p_e - |x - x0_e|^2 / (2 sigma^2) )

over the examples e allowed by the label (the empirical denoiser: the whole image; the local machine: one cell's
patch). Expanding the square, the |x|^2 term is the same for every e and drops out of the softmax:

    logit_e = (<x, x0_e> - |x0_e|^2 / 2) / sigma^2 + log p_e

The examples come in chunks; `PosteriorMean` keeps the running maximum logit, the running normaliser and the
running weighted sum (a streaming log-sum-exp), so no [queries x all examples] tensor is ever held. Each update is
functional (no in-place writes), so the result differentiates with autograd and torch.func like any denoiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_MEMORY_BUDGET = 2**29  # bytes of chunk intermediates one call may hold (512 MiB)


def per_sample_sigma(sigma: Tensor | float, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Noise levels `[B]` from a scalar, a 0-d tensor or a `[B]` (or `[B, 1, 1, 1]`) tensor; positive."""
    sigma = torch.as_tensor(sigma, dtype=dtype, device=device).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(batch)
    if sigma.numel() != batch:
        raise ValueError(f"sigma must be a scalar or one value per image ([{batch}]); found {sigma.numel()} values")
    if not bool((sigma > 0).all()):
        raise ValueError(f"a closed-form denoiser needs sigma > 0 (D is the posterior mean at that noise level); "
                         f"found {sigma.min().item()}")
    return sigma


def budget_from_gib(gib: float, name: str = "memory_budget_gib", default: float = 0.5, what: str = "one chunk") -> int:
    """Bytes of a memory budget given in GiB (the option `name` of `what`, default `default`), or a ValueError that
    says what is expected: a positive, finite number of at least one byte (an infinite budget would size one chunk
    to every example at once, NaN compares false with everything)."""
    try:
        finite = math.isfinite(gib)
    except TypeError:
        finite = False
    if isinstance(gib, bool) or not finite or gib <= 0 or int(gib * 2**30) < 1:
        raise ValueError(f"{name} is the memory {what} may use, a positive, finite number of GiB (default "
                         f"{default:g}); found {gib!r}")
    return int(gib * 2**30)


def chunk_length(budget_bytes: int, bytes_per_example: int, total: int) -> int:
    """How many examples one chunk takes so that its intermediates fit the budget (at least one)."""
    if budget_bytes < 1:
        raise ValueError(f"memory_budget is a positive number of bytes; found {budget_bytes}")
    return max(1, min(total, budget_bytes // max(1, bytes_per_example)))


@dataclass(frozen=True)
class PosteriorMean:
    """Running state of a streaming softmax-weighted mean over the last axis of the logits.

    `top` [...]: the largest logit so far (-inf: none allowed yet); `normaliser` [...]: sum of exp(logit - top);
    `weighted` [..., d]: sum of exp(logit - top) * value.
    """

    top: Tensor
    normaliser: Tensor
    weighted: Tensor

    @staticmethod
    def start(shape: tuple[int, ...], dim: int, like: Tensor) -> "PosteriorMean":
        return PosteriorMean(top=torch.full(shape, float("-inf"), dtype=like.dtype, device=like.device),
                             normaliser=torch.zeros(shape, dtype=like.dtype, device=like.device),
                             weighted=torch.zeros((*shape, dim), dtype=like.dtype, device=like.device))

    def update(self, logits: Tensor, contract: Callable[[Tensor], Tensor]) -> "PosteriorMean":
        """Fold in one chunk: `logits` [..., Ec] (-inf = not allowed), `contract(weights [..., Ec]) -> [..., d]`
        the weighted sum of the chunk's values. The shift by the running maximum is detached: the mean does not
        depend on it, so its gradient is exactly zero."""
        top = torch.maximum(self.top, logits.detach().amax(dim=-1))
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        weights = torch.exp(logits - shift[..., None])
        rescale = torch.exp(self.top - shift)  # 0 where nothing was allowed before
        return PosteriorMean(top=top, normaliser=self.normaliser * rescale + weights.sum(dim=-1),
                             weighted=self.weighted * rescale[..., None] + contract(weights))

    def mean(self) -> Tensor:
        """The posterior mean [..., d]; every position must have had at least one allowed example."""
        return self.weighted / self.normaliser[..., None]
