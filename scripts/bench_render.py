#!/usr/bin/env python
"""Rendering throughput: images/s of `lcsbench render` at 64x64 and 128x128 (64 samples).

Three ways, measured back to back in one run (this machine may be shared, so compare the ratios;
CPU-seconds per image are printed too, as they are robust to other load):
  naive       one Blender process per image, one at a time (all threads)
  1 process   one Blender process renders every image (all threads)
  N procs     lcsbench's default: one single-threaded Blender process per core

    python scripts/bench_render.py [--images 48] [--resolutions 64 128] [--samples 64] [--counts 1-3]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from lcsbench.data.blender_binary import usable_cores
from lcsbench.data.render import render_dataset
from lcsbench.data.scenes import parse_counts


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_fraction(seconds: float = 0.5) -> float:
    """Share of all cores busy (with anything) over a short window, from /proc/stat."""
    def read():
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + values[4]
    total0, idle0 = read()
    time.sleep(seconds)
    total1, idle1 = read()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def measure(images: int, resolution: int, samples: int, workers: int, images_per_process: int,
            counts: tuple[int, ...]) -> tuple[float, float]:
    per_count = max(1, images // len(counts))
    with tempfile.TemporaryDirectory() as out:
        cpu0, wall0 = children_cpu_seconds(), time.perf_counter()
        render_dataset(out, counts=counts, per_count=per_count, val_per_count=0, resolution=resolution,
                       samples=samples, seed=0, shard_size=per_count, workers=workers, progress=False,
                       images_per_process=images_per_process)
        wall, cpu = time.perf_counter() - wall0, children_cpu_seconds() - cpu0
    n = len(counts) * per_count
    return n / wall, cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="images per measurement, split over --counts")
    parser.add_argument("--counts", default="1-3", help="objects per scene, e.g. 1-3 or 12 (many-object layouts "
                        "cost more to place than to render)")
    parser.add_argument("--naive-images", type=int, default=12, help="images for the naive one-process-per-image run")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    counts = tuple(parse_counts(args.counts))
    cores = usable_cores()
    print(f"cores: {cores}; objects per scene: {args.counts}; machine busy before start: "
          f"{machine_busy_fraction():.0%} of all cores")
    print(f"{'res':>5} {'way':>12} {'img/s':>8} {'CPU-s/img':>10} {'vs naive':>9} {'vs 1 proc':>10}")
    for resolution in args.resolutions:
        naive, naive_cpu = measure(args.naive_images, resolution, args.samples, workers=1, images_per_process=1,
                                   counts=counts)
        single, single_cpu = measure(args.images, resolution, args.samples, workers=1, images_per_process=10**9,
                                     counts=counts)
        parallel, parallel_cpu = measure(args.images, resolution, args.samples, workers=cores,
                                         images_per_process=10**9, counts=counts)
        for name, rate, cpu in (("naive", naive, naive_cpu), ("1 process", single, single_cpu),
                                (f"{cores} procs", parallel, parallel_cpu)):
            print(f"{resolution:>5} {name:>12} {rate:>8.2f} {cpu:>10.3f} {rate / naive:>8.1f}x {rate / single:>9.2f}x")
    print(f"machine busy after: {machine_busy_fraction():.0%} (other load makes wall-clock rates pessimistic)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
