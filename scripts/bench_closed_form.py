#!/usr/bin/env python
"""Closed-form speed (issue 23, item 4): one call of the local conditional score machine on a batch of images,
batched over every cell at once, against the naive loop over cells; the empirical denoiser beside them.

    python scripts/bench_closed_form.py                                   # 32 px, G = 16, r = 2, 3,000 images
    python scripts/bench_closed_form.py --train-images 30000 --batch 32   # the goal's size (<= 1 s per image)

The training set is synthetic (random pixels, 1-3 random labelled cells per image, label mode `all`): the cost
does not depend on the pixel values, and grows linearly with the number of training examples, so a run at a
smaller size extrapolates (the script prints the extrapolation to --goal-images). Both ways are timed in the same
run, on the same inputs, after checking that they agree:

  per-cell loop   for each of the G*G cells: cut the zero-padded (2r+1)-cell patches of the queries and of every
                  training image, compare the label sub-grids, softmax over the training set, average the centres
  batched         lcsbench.analysis.closed_form.local.local_denoise: per-cell block products in one batched
                  matmul, window sums over the grid, chunks of examples under a memory budget
  ..., grids seen the LocalScoreMachine called again with the same label grids (what a sampler does 63 times):
                  it keeps the sub-grid match, so only the pixel part is computed
  empirical       lcsbench.analysis.closed_form.empirical.empirical_denoise (whole-image distances)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from lcsbench.analysis.closed_form import LocalScoreMachine, TrainingSet, empirical_denoise
from lcsbench.analysis.closed_form.local import cell_bank, local_denoise


def synthetic_training_set(images: int, resolution: int, grid: int, seed: int = 0) -> TrainingSet:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(images, 3, resolution, resolution, generator=generator) * 2 - 1
    labels = torch.zeros(images, grid, grid, dtype=torch.long)
    for i in range(images):
        for _ in range(1 + i % 3):
            row, col = torch.randint(0, grid, (2,), generator=generator).tolist()
            labels[i, row, col] += 1
    return TrainingSet(pixels, labels, torch.arange(images), torch.full((images,), -math.log(images)))


def per_cell_loop(train: TrainingSet, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, radius: int
                  ) -> torch.Tensor:
    """The definition of the local machine, one cell at a time (queries and training images batched)."""
    g = train.grid_size
    m = x.shape[-1] // g
    size = (2 * radius + 1) * m
    pad_x, pad_train = F.pad(x, (radius * m,) * 4), F.pad(train.images, (radius * m,) * 4)
    pad_cond, pad_labels = F.pad(cond, (radius,) * 4), F.pad(train.labels, (radius,) * 4)
    out = torch.empty_like(x)
    for row in range(g):
        for col in range(g):
            query = pad_x[:, :, row * m:row * m + size, col * m:col * m + size].flatten(1)
            bank = pad_train[:, :, row * m:row * m + size, col * m:col * m + size].flatten(1)
            window = (slice(None), slice(row, row + 2 * radius + 1), slice(col, col + 2 * radius + 1))
            differing = (pad_cond[window].flatten(1)[:, None] != pad_labels[window].flatten(1)[None]).sum(-1)
            allowed = differing == differing.amin(dim=1, keepdim=True)
            logits = train.log_weight - torch.cdist(query, bank).pow(2) / (2 * sigma[:, None] ** 2)
            weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
            centre = train.images[:, :, row * m:(row + 1) * m, col * m:(col + 1) * m].flatten(1)
            out[:, :, row * m:(row + 1) * m, col * m:(col + 1) * m] = (weights @ centre).view(-1, 3, m, m)
    return out


def timed(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) per call, after one warm-up call."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=3000, help="training images (the goal: 30000)")
    parser.add_argument("--goal-images", type=int, default=30000, help="training set size to extrapolate to")
    parser.add_argument("--batch", type=int, default=8, help="query images per call (the goal: 32)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-budget-gib", type=float, default=0.5)
    parser.add_argument("--skip-loop", action="store_true", help="time the batched machine only")
    args = parser.parse_args()
    train = synthetic_training_set(args.train_images, args.resolution, args.grid)
    generator = torch.Generator().manual_seed(1)
    x = train.images[:args.batch] + args.sigma * torch.randn(train.images[:args.batch].shape, generator=generator)
    cond = train.labels[:args.batch].clone()
    cond[:, 5:10, 5:10] = 1  # requests beyond the training counts: some sub-grids are new (fallbacks)
    sigma = torch.full((args.batch,), args.sigma)
    budget = int(args.memory_budget_gib * 2**30)
    machine = LocalScoreMachine(train, args.radius, memory_budget=budget)
    bank = cell_bank(train, args.radius)
    rows = {}
    with torch.no_grad():
        rows["batched"] = timed(lambda: local_denoise(bank, x, sigma, cond, budget), args.repeats)
        rows["batched, grids seen"] = timed(lambda: machine(x, sigma, cond), args.repeats)  # a sampler's case
        rows["empirical"] = timed(lambda: empirical_denoise(train, x, sigma, cond, budget), args.repeats)
        if not args.skip_loop:
            torch.testing.assert_close(machine(x, sigma, cond), per_cell_loop(train, x, sigma, cond, args.radius),
                                       rtol=1e-3, atol=1e-3)
            rows["per-cell loop"] = timed(lambda: per_cell_loop(train, x, sigma, cond, args.radius), args.repeats)
    scale = args.goal_images / args.train_images
    threads = torch.get_num_threads()
    print(f"CPU, {threads} threads; {args.resolution}x{args.resolution}, G={args.grid}, r={args.radius}; "
          f"{args.train_images} training images (extrapolated linearly to {args.goal_images}), batch {args.batch}")
    print(f"{'way':>20} {'wall s/call':>12} {'cpu s/call':>11} {'wall s/image':>13} {'at goal size':>13}"
          f" {'cpu/threads':>12}")
    for label, (wall, cpu) in rows.items():
        print(f"{label:>20} {wall:>12.3f} {cpu:>11.3f} {wall / args.batch:>13.4f} {wall / args.batch * scale:>13.3f}"
              f" {cpu / threads / args.batch * scale:>12.3f}")
    if "per-cell loop" in rows:
        loop, batched = rows["per-cell loop"], rows["batched"]
        print(f"batched vs per-cell loop: {loop[0] / batched[0]:.1f}x faster (wall), {loop[1] / batched[1]:.1f}x (cpu)")
    print("goal: <= 1 s per image at 30,000 training images on 2 cores (`at goal size`; on a machine busy with other "
          "work, `cpu/threads` is the estimate for an idle one)")


if __name__ == "__main__":
    main()
