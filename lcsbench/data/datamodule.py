"""`CLEVRDataModule`: rendered CLEVR shards -> batches of images, conditioners and network labels.

The datasets it serves, the layout of a batch, the training stream and the validation pass are in
data/datasets.py; the validation sampler in data/samplers.py.

Global batch (EDM2: 2048 images per optimizer step, whatever the number of GPUs): with `global_batch_size` set,
`batch_size` is the most one device takes per forward pass, and `setup` derives the per-device batch and the
Trainer's gradient-accumulation rounds from the world size (`device_batches`), so the learning-rate decay and the
EMA snapshots, which count optimizer steps, mean the same on 1 GPU and on 16. Without it every rank takes
`batch_size` and the global batch grows with the ranks (the configs of the running cpu/smoke studies).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lcsbench.data import conditioning as conditioners
from lcsbench.data.datasets import (  # noqa: F401 (read_tar_samples, sample_generator, SampleDecoder: re-exported)
    SampleDecoder,
    TrainLoader,
    TrainStream,
    ValIndex,
    collate_model_range,
    collate_samples,
    extra_training_shards,
    model_range,
    read_tar_samples,
    rerender_hint,
    sample_generator,
)
from lcsbench.data.samplers import StridedSampler
from lcsbench.data.scenes import parse_counts
from lcsbench.data.shards import MANIFEST, ShardError, load_manifest

__all__ = ["CLEVRDataModule", "ShardError", "SampleDecoder", "TrainStream", "ValIndex", "collate_samples",
           "device_batches", "model_range", "parse_counts", "read_tar_samples"]


def device_batches(
    global_batch_size: int,  # images per optimizer step over all ranks and accumulation rounds
    world_size: int,  # ranks (GPUs x nodes)
    max_device_batch: int,  # the most one device takes per forward pass (its memory)
    rounds: int | None = None,  # accumulation rounds to use; None: the fewest that fit max_device_batch
) -> tuple[int, int]:
    """(per-device batch, accumulation rounds) with per-device batch x world_size x rounds = global_batch_size."""
    if global_batch_size < 1 or world_size < 1 or max_device_batch < 1:
        raise ValueError(f"need global_batch_size, world size and batch_size >= 1; got {global_batch_size}, "
                         f"{world_size}, {max_device_batch}")
    candidates = [rounds] if rounds is not None else range(1, global_batch_size // world_size + 1)
    for r in candidates:
        if global_batch_size % (world_size * r) == 0 and global_batch_size // (world_size * r) <= max_device_batch:
            return global_batch_size // (world_size * r), r
    if rounds is not None:
        raise ValueError(f"global_batch_size {global_batch_size} does not split into {world_size} rank(s) x {rounds} "
                         f"accumulation round(s) of at most {max_device_batch} images: drop "
                         f"trainer.accumulate_grad_batches (the rounds are derived), or choose a global batch "
                         f"divisible by {world_size * rounds}")
    raise ValueError(f"global_batch_size {global_batch_size} does not split evenly over {world_size} rank(s): choose a "
                     f"global batch divisible by the number of ranks (e.g. "
                     f"{global_batch_size // world_size * world_size}), or run on a number of GPUs that divides "
                     f"{global_batch_size}")


# --- the DataModule ----------------------------------------------------------------------------------


class CLEVRDataModule(L.LightningDataModule):
    """Rendered CLEVR shards with location or colour conditioning (paper Appendix E.1; module docstring)."""

    def __init__(
        self,
        root: str,  # dataset directory holding manifest.json (python -m lcsbench render --out ROOT)
        counts: str | int | list[int] = "1-3",  # object counts to mix equally: "1-3", "1,2,5", 4, [1, 3]
        conditioning: str = "location",  # location | color (E.1: one attribute at a time)
        label_mode: str = "all",  # all (Exp. 1) | single (Exp. 2/3) | random | drop_one (Table 2)
        grid_size: int = conditioners.DEFAULT_GRID_SIZE,  # location cells per side; divides the resolution (E.1)
        batch_size: int = 64,  # samples per batch on each rank; with global_batch_size: the most per device
        global_batch_size: int | None = None,  # images per optimizer step on all ranks (EDM2: 2048); None: no fixed
        #   global batch (every rank takes batch_size, the global batch grows with the ranks)
        num_workers: int = 2,  # DataLoader worker processes per rank
        resolution: int | None = None,  # expected image size; None: take the manifest's
        seed: int = 0,  # base seed of shard choice, shuffling and random label modes
        steps_per_epoch: int = 1000,  # optimizer steps per epoch (batches: steps x accumulation rounds, every rank)
        shuffle_buffer: int = 1000,  # training samples in the shuffle buffer per worker
        val_batch_size: int | None = None,  # validation batch size; None: batch_size
        extra_train: Sequence[str] = (),  # roots of other renders (e.g. `render --layout` of the protocol's
        #   layouts, for the judge) whose every shard joins the training stream as one more equally mixed group
    ) -> None:
        super().__init__()
        conditioners.check_kind(conditioning)
        if label_mode not in conditioners.LABEL_MODES:
            raise ValueError(f"label_mode must be one of {conditioners.LABEL_MODES}, got {label_mode!r}")
        if batch_size < 1 or steps_per_epoch < 1 or num_workers < 0 or shuffle_buffer < 1 or grid_size < 1:
            raise ValueError(f"need batch_size, steps_per_epoch, shuffle_buffer, grid_size >= 1 and num_workers >= 0; "
                             f"got {batch_size}, {steps_per_epoch}, {shuffle_buffer}, {grid_size}, {num_workers}")
        if global_batch_size is not None:
            device_batches(global_batch_size, 1, batch_size)  # a bad global batch fails at parse time
        self.root = Path(root)
        self.counts = parse_counts(counts)
        self.conditioning, self.label_mode, self.grid_size = conditioning, label_mode, grid_size
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.max_device_batch, self.global_batch_size = batch_size, global_batch_size
        self.accumulation = 1  # gradient-accumulation rounds per optimizer step (plan_batches)
        self.requested_resolution = resolution
        self.steps_per_epoch, self.shuffle_buffer = steps_per_epoch, shuffle_buffer
        self.val_batch_size = val_batch_size
        self.extra_train = [Path(root) for root in extra_train]
        self.extra_shards: dict[str, list[str]] = {}
        self.manifest: dict | None = None
        self._loader_iterations = 0
        self.save_hyperparameters()

    # Known without reading the data, so a model can be linked to it at parse time.
    @property
    def label_dim(self) -> int:
        return conditioners.label_dim(self.conditioning, self.grid_size)

    @property
    def resolution(self) -> int:
        if self.manifest is None:
            self.setup()
        return int(self.manifest["settings"]["resolution"])

    def setup(self, stage: str | None = None) -> None:
        """Plan the batches for the Trainer's world size; read and check the manifest (once): resolution, grid size,
        and shards for every requested count."""
        if self.trainer is not None:
            self.plan_batches(self.trainer)
        if self.manifest is not None:
            return
        manifest = load_manifest(self.root)
        settings = manifest.get("settings", {})
        self.fix = rerender_hint(self.root, settings)
        resolution = settings.get("resolution")
        if not isinstance(resolution, int):
            raise ValueError(f"{self.root / MANIFEST} has no integer settings.resolution (found {resolution!r}): "
                             f"it was not written by `python -m lcsbench render`; re-render the dataset")
        if self.requested_resolution is not None and self.requested_resolution != resolution:
            raise ValueError(f"resolution {self.requested_resolution} was requested but {self.root} holds "
                             f"{resolution}x{resolution} images (manifest settings.resolution): pass "
                             f"resolution={resolution}, or render a {self.requested_resolution}px dataset with "
                             f"`python -m lcsbench render --resolution {self.requested_resolution} ...`")
        conditioners.check_grid_size(self.grid_size, resolution, resolution)
        available = sorted(int(group[1:]) for group, splits in manifest.get("shards", {}).items()
                           if group.startswith("n") and group[1:].isdigit() and splits.get("train"))
        missing = [c for c in self.counts if c not in available]
        if missing:
            raise ValueError(f"{self.root} has no training shards for object count(s) {missing} (manifest "
                             f"has {available}): render them, e.g. `python -m lcsbench render --out <new dir> "
                             f"--counts {','.join(map(str, missing))} --resolution {resolution} ...`, or choose "
                             f"counts among {available}")
        self.extra_shards = {str(root): extra_training_shards(root, resolution) for root in self.extra_train}
        self.manifest = manifest
        self.decoder = SampleDecoder(self.conditioning, self.label_mode, self.grid_size, resolution, self.fix)

    def plan_batches(self, trainer: L.Trainer) -> None:
        """With a global batch: this rank's batch size and the Trainer's accumulation rounds (module docstring)."""
        if self.global_batch_size is None:
            self.accumulation = trainer.accumulate_grad_batches
            return
        chosen = trainer.accumulate_grad_batches if trainer.accumulate_grad_batches > 1 else None
        self.batch_size, self.accumulation = device_batches(self.global_batch_size, trainer.world_size,
                                                            self.max_device_batch, chosen)
        trainer.accumulate_grad_batches = self.accumulation  # as Lightning's GradientAccumulationScheduler sets it
        rank_zero_info(f"CLEVRDataModule: global batch {self.global_batch_size} = {trainer.world_size} rank(s) x "
                       f"{self.batch_size} images x {self.accumulation} accumulation round(s)")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training images arrive as uint8 (module docstring): scale them to [-1, 1] here, on the device."""
        images = batch.get("image") if isinstance(batch, dict) else None
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
            return {**batch, "image": model_range(images)}
        return batch

    def _shard_paths(self, count: int, split: str) -> list[str]:
        paths = [str(self.root / rel) for rel in self.manifest["shards"][f"n{count}"].get(split, [])]
        absent = [p for p in paths if not Path(p).exists()]
        if absent:
            raise ShardError(f"{len(absent)} {split} shard(s) listed in {self.root / MANIFEST} are missing on disk, "
                             f"e.g. {absent[0]}: copy the whole dataset directory, or {self.fix}")
        return paths

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _next_epoch(self) -> int:
        """The epoch a training iterator is about to run: the Trainer's, or a count of iterations."""
        if self.trainer is not None:
            return self.trainer.current_epoch
        self._loader_iterations += 1
        return self._loader_iterations - 1

    def train_dataloader(self) -> TrainLoader:
        self.setup()
        rank, _ = self._rank_and_world()
        groups = {**{c: self._shard_paths(c, "train") for c in self.counts}, **self.extra_shards}
        stream = TrainStream(groups, self.decoder,
                             self.batch_size, self.shuffle_buffer, self.seed, rank, self.fix)
        return TrainLoader(stream, self.steps_per_epoch * self.accumulation, self._next_epoch,
                           num_workers=self.num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        shard_samples = self.manifest.get("shard_samples", {})
        shards = []
        for count in self.counts:
            for rel in self.manifest["shards"][f"n{count}"].get("val", []):
                shards.append((str(self.root / rel), shard_samples.get(rel)))
        if not shards:
            raise ValueError(f"{self.root} has no held-out (val) shards for counts {list(self.counts)}: render with "
                             f"--val-per-count > 0, or run without validation (limit_val_batches=0)")
        dataset = ValIndex(shards, self.decoder, self.seed, self.fix)
        rank, world = self._rank_and_world()
        return DataLoader(dataset, batch_size=self.val_batch_size or self.batch_size,
                          sampler=StridedSampler(dataset, world, rank), num_workers=self.num_workers,
                          collate_fn=collate_model_range,
                          pin_memory=torch.cuda.is_available(), drop_last=False)
