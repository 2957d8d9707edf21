#!/usr/bin/env python
"""Is the data pipeline fast enough? Loader images/s beside a training step's consumption rate.

For each dataset (e.g. a 64x64 and a 128x128 render) it times:
  - decode:  PNG decode + scene JSON + conditioner + label in one process, no DataLoader (images/s/core)
  - loader:  CLEVRDataModule.train_dataloader() with 1 and 2 workers (shuffle, decode, batch, IPC)
  - model:   one EDM2 training step (edm2_loss, backward, Adam) of an `lcsbench.nn.edm2` preset at the same
             resolution and batch size, on --device (the step that consumes the loader's batches)
and prints them side by side: the loader keeps up when its images/s exceed the model's.

    python scripts/bench_data.py --root 64=data/clevr64 --root 128=data/clevr128
    python scripts/bench_data.py --root 64=data/clevr64 --models tiny img64-xs --device cuda --json out.json

Render small datasets to bench with, e.g.
    python -m lcsbench render --out data/bench64 --per-count 48 --shard-size 24 --resolution 64 --samples-per-pixel 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from lcsbench.data.conditioning import label_dim
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.data.datasets import read_tar_samples


def bench_decode(dm: CLEVRDataModule, images: int) -> float:
    """Single-process images/s of decoding raw samples (PNG + JSON + conditioner + label)."""
    raws = []
    for count in dm.counts:
        for path in dm._shard_paths(count, "train"):
            raws += list(read_tar_samples(path, fix=""))
    generator = torch.Generator().manual_seed(0)
    start, done = time.perf_counter(), 0
    while done < images:
        for raw in raws[: images - done]:
            dm.decoder(raw, generator)
            done += 1
    return done / (time.perf_counter() - start)


def bench_loader(root: str, resolution: int, workers: int, batch_size: int, batches: int, warmup: int) -> float:
    """images/s of the training DataLoader (after `warmup` batches, which include worker start-up)."""
    dm = CLEVRDataModule(root, resolution=resolution, batch_size=batch_size, num_workers=workers,
                         steps_per_epoch=warmup + batches, shuffle_buffer=256)
    start = None
    for index, batch in enumerate(dm.train_dataloader()):  # run the epoch out, so its workers shut down here
        if index == warmup - 1:
            start = time.perf_counter()
    elapsed = time.perf_counter() - start
    assert batch["image"].shape == (batch_size, 3, resolution, resolution)
    return batches * batch_size / elapsed


def bench_model(preset_name: str, resolution: int, batch_size: int, steps: int, device: str) -> float:
    """images/s consumed by EDM2 training steps (forward, loss, backward, Adam) of a preset."""
    from lcsbench.diffusion.loss import edm2_loss
    from lcsbench.nn.edm2 import preset

    net = preset(preset_name, label_dim=label_dim("location"), img_resolution=resolution).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    images = torch.rand(batch_size, 3, resolution, resolution, device=device) * 2 - 1
    labels = torch.nn.functional.normalize(torch.rand(batch_size, label_dim("location"), device=device), dim=1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = edm2_loss(net, images, labels).mean()
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocations, cuDNN autotuning)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def parse_root(text: str) -> tuple[int, str]:
    resolution, sep, path = text.partition("=")
    if not sep or not resolution.isdigit():
        raise argparse.ArgumentTypeError(f"--root takes RESOLUTION=PATH, e.g. 64=data/clevr64; got {text!r}")
    return int(resolution), path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=parse_root, action="append", required=True,
                        help="RESOLUTION=PATH of a rendered dataset (repeatable)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed loader batches (worker start-up)")
    parser.add_argument("--models", nargs="*", default=["tiny"], help="lcsbench.nn.edm2 presets to time; none: skip")
    parser.add_argument("--model-steps", type=int, default=3, help="timed training steps per model")
    parser.add_argument("--model-batch-size", type=int, default=None,
                        help="images per training step (default: --batch-size on a GPU, 8 on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="model device")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first batch includes worker start-up)")
    model_batch = args.model_batch_size or (args.batch_size if args.device.startswith("cuda") else 8)

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, model device {args.device}, "
          f"loader batch {args.batch_size}, model batch {model_batch}", flush=True)
    rows = []
    for resolution, root in args.root:
        dm = CLEVRDataModule(root, resolution=resolution, num_workers=0)
        dm.setup()
        row = {"resolution": resolution, "root": root,
               "decode_1proc": bench_decode(dm, images=4 * args.batch_size)}
        for workers in args.workers:
            row[f"loader_{workers}w"] = bench_loader(root, resolution, workers, args.batch_size, args.batches,
                                                     args.warmup)
        for name in args.models:
            row[f"model_{name}"] = bench_model(name, resolution, model_batch, args.model_steps, args.device)
        rows.append(row)
        print("  ".join(f"{k}={v:.0f} img/s" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)

    print("\nimages/s (higher is faster); the loader keeps up when its rate exceeds the model's")
    columns = [k for k in rows[0] if k not in ("resolution", "root")]
    print(f"{'res':>5} " + " ".join(f"{c:>16}" for c in columns))
    for row in rows:
        print(f"{row['resolution']:>5} " + " ".join(f"{row[c]:>16.0f}" for c in columns))
    for row in rows:
        loader = max(v for k, v in row.items() if k.startswith("loader_"))
        for name in args.models:
            model = row[f"model_{name}"]
            verdict = "keeps up" if loader >= model else "is the BOTTLENECK"
            print(f"{row['resolution']}px, {name} on {args.device}: loader {loader:.0f} img/s vs model {model:.0f} "
                  f"img/s -> the loader {verdict} ({loader / model:.1f}x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": args.device, "batch_size": args.batch_size, "torch": torch.__version__,
                       "cpus": os.cpu_count(), "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
