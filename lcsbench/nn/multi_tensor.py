"""In-place updates of many tensors in a few kernels, for the steps EDM2 takes after every backward pass.

A network of ~100 layers has ~300 parameter tensors; an op per tensor costs ~300 kernel launches (and on a GPU,
a host-side launch queue that the small 32 px models cannot hide). Both helpers here concatenate the tensors
into one buffer per group, do the arithmetic once, and copy back with one `_foreach_copy_`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch

# --- forced weight normalization of many weights at once (EDM2 Eq. 66) ---------------------------------------


@torch.no_grad()
def normalize_rows_(weights: Sequence[torch.Tensor], eps: float = 1e-4) -> None:
    """Rescale every output row (`w[i]`) of every weight to unit RMS in place: `w[i] / (eps + RMS(w[i]))`,
    computed in float32. Weights are grouped by row length (fan-in), one concatenated buffer per group."""
    groups: dict[tuple[int, torch.device], list[torch.Tensor]] = defaultdict(list)
    for weight in weights:
        groups[(weight[0].numel(), weight.device)].append(weight)
    for (row_length, _), group in groups.items():
        rows = torch.cat([w.reshape(w.shape[0], row_length).to(torch.float32) for w in group])
        rms = torch.linalg.vector_norm(rows, dim=1, keepdim=True) / math.sqrt(row_length)
        rows = rows / (eps + rms)
        sources = [chunk.view(w.shape) for chunk, w in zip(rows.split([w.shape[0] for w in group]), group)]
        torch._foreach_copy_(group, sources)


# --- EDM2's force_finite: non-finite gradient entries become 0 -----------------------------------------------


@torch.no_grad()
def zero_nonfinite_(tensors: Sequence[torch.Tensor]) -> None:
    """Set every NaN and +-Inf entry of `tensors` to 0 in place (one `nan_to_num_` per dtype and device)."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = defaultdict(list)
    for tensor in tensors:
        groups[(tensor.dtype, tensor.device)].append(tensor)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        flat.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        torch._foreach_copy_(group, [chunk.view(t.shape) for chunk, t in zip(flat.split([t.numel() for t in group]),
                                                                             group)])
