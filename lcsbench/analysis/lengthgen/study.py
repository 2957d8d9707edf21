"""One length-generalization study, start to end: requests -> samples -> oracle renders -> judge -> tally.

`run(denoiser, judge, protocol)` is the whole study in one call (a notebook, `python -m lcsbench lengthgen`,
`oracle-check` and the `LengthGenCurve` callback all call it) and returns a `Result`: the lengthgen.json
document, the images and detections per row. The steps are here too, for callers that need one alone.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lcsbench.analysis.lengthgen.matching import judge_request
from lcsbench.analysis.lengthgen.protocol import SuccessRule, request_conditioner
from lcsbench.analysis.lengthgen.tally import LengthGenTally


def sample_requests(
    denoiser,  # denoiser(x, sigma, cond) -> D(x) (a model's `.denoiser`)
    requests: Sequence[Mapping],  # protocol requests
    grid_size: int,  # conditioning grid G of the model
    shape: tuple[int, int, int],  # (C, H, W) of one image
    num_steps: int = 32,  # Heun steps (the paper's sampler, E.1)
    batch: int = 64,  # images per sampler call
    seed: int = 0,  # noise seed
    device: torch.device | str = "cpu",
    progress=None,  # called with (done, total) after each batch
) -> np.ndarray:
    """Sample one image per request with the EDM sampler; `uint8 [N, H, W, 3]`."""
    from lcsbench.diffusion.sampler import edm_sampler

    noise = torch.randn((len(requests), *shape), generator=torch.Generator().manual_seed(seed))
    conds = torch.stack([request_conditioner(r, grid_size) for r in requests])
    chunks = []
    for start in range(0, len(requests), batch):
        stop = start + batch
        chunks.append(edm_sampler(denoiser, noise[start:stop].to(device), conds[start:stop].to(device),
                                  num_steps=num_steps).float().cpu())
        if progress is not None:
            progress(min(stop, len(requests)), len(requests))
    return (torch.cat(chunks) * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_samples(path: str | Path, images: np.ndarray, settings: Mapping) -> None:
    """Keep a model row's samples (`uint8 [N, H, W, 3]`) with the settings that drew them, so the row can be
    judged again (another tolerance, another judge) without sampling again (`load_samples`)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, images=images, settings=np.array(json.dumps(dict(settings), sort_keys=True)))
    partial.replace(path)  # a crash while writing leaves no half file under the real name


def load_samples(path: str | Path, settings: Mapping, shape: Sequence[int] | None = None) -> np.ndarray | None:
    """The samples saved at `path` if they were drawn with exactly `settings` (and, given `shape`, are uint8
    images of exactly that shape `[N, H, W, 3]`), else None (absent, unreadable, other settings or another shape:
    the caller samples again)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if json.loads(str(saved["settings"])) != json.loads(json.dumps(dict(settings), sort_keys=True)):
                return None
            images = saved["images"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if shape is not None and (images.dtype != np.uint8 or tuple(images.shape) != tuple(shape)):
        return None
    return images


def judge_images(
    judge,  # anything with .detect(images [B, 3, H, W] in [-1, 1]) -> list of detections (models/judge.py)
    images: np.ndarray,  # uint8 [N, H, W, 3]
    requests: Sequence[Mapping],  # their protocol requests
    rule: SuccessRule,  # success rule of the trained model
    grid_size: int,  # conditioning grid G
    tolerance_cells: float = 1.0,
    batch: int = 64,
    device: torch.device | str = "cpu",
    match: str = "cell",  # cell | point (MATCH_RULES)
) -> tuple[LengthGenTally, list[dict]]:
    """Judge images against their requests: the tally and the per-image detections."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    detections: list[dict] = []
    for start in range(0, len(pixels), batch):
        detections += judge.detect(pixels[start:start + batch].to(device))
    tally = LengthGenTally()
    resolution = images.shape[2]
    for request, detection in zip(requests, detections):
        tally.add(request["k"], judge_request(request, detection, resolution, grid_size, tolerance_cells, match),
                  rule)
    return tally, detections
