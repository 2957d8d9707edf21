"""One length-generalization study, start to end: requests -> samples -> oracle renders -> judge -> tally.

`run(denoiser, judge, protocol)` is the whole study in one call (a notebook, `python -m lcsbench lengthgen`,
`oracle-check` and the `LengthGenCurve` callback all call it) and returns a `Result`: the lengthgen.json
document, the images and detections per row. The steps are here too, for callers that need one alone.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lcsbench.analysis.lengthgen.matching import judge_request
from lcsbench.analysis.lengthgen.protocol import (LengthGenProtocol, SuccessRule, crowding, oracle_scene,
                                                  request_conditioner)
from lcsbench.analysis.lengthgen.tally import LengthGenTally, lengthgen_report
from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS


@dataclass
class Result:
    """What one study found: the lengthgen.json document and, per row ("model", "oracle"), what it was made of."""

    protocol: LengthGenProtocol  # the settings, with the grid size the study used
    requests: list[dict]  # one per sample, grouped by k
    report: dict  # the lengthgen.json document (package docstring)
    images: dict[str, np.ndarray]  # row -> uint8 [N, H, W, 3], one image per request
    detections: dict[str, list[dict]]  # row -> the judge's output per image
    tallies: dict[str, LengthGenTally]  # row -> per-k counts


def run(
    denoiser,  # the Denoiser (diffusion/denoiser.py) whose row is measured; None: the oracle row alone
    judge,  # .detect(images [B, 3, H, W] in [-1, 1]) -> detections, .resolution (models/judge.py)
    protocol: LengthGenProtocol,  # what is requested and how it is judged
    oracle_root: str | Path | None = None,  # render the oracle row (Blender) here, first; None: no oracle row
    oracle_samples: int = 64,  # Cycles samples per pixel of the oracle renders
    samples_file: str | Path | None = None,  # keep the model row's samples here; reused when drawn alike
    samples_key: Mapping | None = None,  # what else identifies those samples (e.g. {"ckpt_sha256": ...})
    record: Mapping | None = None,  # settings appended to the report's protocol entry (checkpoint, judge, ...)
    batch: int = 64,  # images per sampler and judge call
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,  # called with (done, total) while sampling
    log: Callable[[str], None] | None = None,  # told, in one line, when saved samples are judged again
) -> Result:
    """The whole length-generalization study: requests, the oracle row (when `oracle_root` is given) before the
    model row (so a render that fails loses no samples), judging, tallies and the report. Raises what the
    renderer (RenderError) or the shard reader (ShardError) raise for the oracle row."""
    resolution = judge.resolution if denoiser is None else denoiser.image_shape[-1]
    if denoiser is not None and denoiser.conditioning != protocol.kind:
        raise ValueError(f"the {protocol.kind} protocol was asked for but the denoiser is "
                         f"{denoiser.conditioning}-conditioned: build the protocol's SuccessRule with kind "
                         f"{denoiser.conditioning!r}")
    grid_size = protocol.grid_size or getattr(denoiser, "grid_size", None)
    if grid_size is None and protocol.kind == "location":
        raise ValueError("a location protocol needs the grid size: the denoiser states none, so pass "
                         "LengthGenProtocol(grid_size=...)")
    protocol = dataclasses.replace(protocol, grid_size=grid_size)
    requests = protocol.requests()
    images: dict[str, np.ndarray] = {}
    if oracle_root is not None:
        images["oracle"] = render_oracle(requests, oracle_root, resolution,
                                         grid_size if protocol.match == "cell" else None, oracle_samples,
                                         protocol.seed)
    if denoiser is not None:
        images = {"model": model_samples(denoiser, requests, protocol, samples_file, samples_key, batch, device,
                                         progress, log), **images}
    tallies, detections = {}, {}
    for name, row in images.items():
        tallies[name], detections[name] = judge_images(judge, row, requests, protocol.rule, grid_size,
                                                       protocol.tolerance_cells, batch, device, protocol.match)
    rule = protocol.rule
    description = {"kind": protocol.kind, "ks": list(protocol.ks), "order": protocol.order, "match": protocol.match,
                   "tolerance_cells": protocol.tolerance_cells, "crowding": crowding(requests, resolution),
                   "grid_size": grid_size, "resolution": resolution, "trained_counts": list(rule.trained_counts),
                   "label_mode": rule.label_mode, "samples_per_k": protocol.samples_per_k,
                   "success_rule": rule.describe(), **(record or {})}
    return Result(protocol, requests, lengthgen_report(description, tallies), images, detections, tallies)


def render_oracle(
    requests: Sequence[Mapping],  # protocol requests
    root: str | Path,  # the oracle's shards (reused when the same layouts are asked again)
    resolution: int,  # image size in pixels
    grid_size: int | None,  # the cell rule: each object at a random point of its requested cell; None: exactly there
    samples: int,  # Cycles samples per pixel
    seed: int = 0,  # object placement and render seed
) -> np.ndarray:
    """Blender renders of the requested layouts (`oracle_scene`), `uint8 [N, H, W, 3]`; a `root` rendered with
    other settings is refused by the renderer (RenderError)."""
    from lcsbench.data.render import render_layouts
    from lcsbench.data.shards import read_layout_images

    placement = torch.Generator().manual_seed(seed)
    scenes = [oracle_scene(request, resolution, grid_size, placement) for request in requests]
    render_layouts(Path(root), scenes, resolution=resolution, samples=samples, seed=seed)
    return read_layout_images(Path(root), len(requests))


def model_samples(
    denoiser,  # the Denoiser to sample
    requests: Sequence[Mapping],  # protocol requests
    protocol: LengthGenProtocol,  # num_steps and seed, and what identifies the samples
    samples_file: str | Path | None = None,  # reuse the samples saved here when drawn alike; save new ones here
    samples_key: Mapping | None = None,  # what else identifies them (e.g. the checkpoint's hash)
    batch: int = 64,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """The model row's images: the ones saved in `samples_file` when drawn with the same settings, else new ones
    (`sample_requests`), saved there."""
    settings = {**(samples_key or {}), "kind": protocol.kind, "ks": list(protocol.ks),
                "samples_per_k": protocol.samples_per_k, "order": protocol.order, "seed": protocol.seed,
                "steps": protocol.num_steps}
    channels, height, width = denoiser.image_shape
    if samples_file is not None:
        saved = load_samples(samples_file, settings, shape=(len(requests), height, width, channels))
        if saved is not None:
            if log is not None:
                log(f"judging the {len(saved)} samples saved in {samples_file} (same checkpoint and sampling "
                    f"settings) without sampling again")
            return saved
    images = sample_requests(denoiser, requests, protocol.grid_size, denoiser.image_shape, protocol.num_steps, batch,
                             protocol.seed, device, progress)
    if samples_file is not None:
        save_samples(samples_file, images, settings)
    return images


def sample_requests(
    denoiser,  # denoiser(x, sigma, cond) -> D(x) (a model's `.denoiser`)
    requests: Sequence[Mapping],  # protocol requests
    grid_size: int,  # conditioning grid G of the model
    shape: tuple[int, int, int],  # (C, H, W) of one image
    num_steps: int = PAPER_HEUN_STEPS,  # Heun steps (the paper's sampler, E.1)
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
