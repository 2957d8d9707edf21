#!/usr/bin/env python
"""Patch-local inference speed: batched full-image denoising vs a Python loop over cells, and the
cost of the patch-local model relative to the global EDM2 model at the same image resolution.

    python scripts/bench_patch.py                       # CPU: small networks, batch 2
    python scripts/bench_patch.py --width 128 --batch 32 --dtype bf16   # GPU: xs-width networks

One full-image evaluation is timed (no gradients) in each of three ways, back to back:
  per-cell loop   for each of the G*G cells: crop the patches of all images, denoise, copy the centre
  batched         lcsbench.nn.patch.PatchLocal: every cell of every image in chunked batched calls
  global          the global EDM2 Precond on the whole image (the Exp. 1/2 model)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lcsbench.nn.edm2 import Precond
from lcsbench.nn.patch import PatchLocal, patch_label_dim, patch_labels


def per_cell_loop(model: PatchLocal, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The definition of the patch-local denoiser, one cell at a time (images batched)."""
    g, m, r = model.grid_size, model.cell_size, model.radius
    padded = F.pad(x, (r * m,) * 4)
    grid = F.pad(cond, (r,) * 4)
    out = torch.empty_like(x)
    for row in range(g):
        for col in range(g):
            patch = padded[:, :, row * m:row * m + model.patch_size, col * m:col * m + model.patch_size]
            centre = torch.tensor([(col + 0.5) / g * 2 - 1, (row + 0.5) / g * 2 - 1], device=x.device)
            labels = patch_labels(grid[:, row:row + 2 * r + 1, col:col + 2 * r + 1], centre.expand(x.shape[0], 2))
            denoised = model.net(patch, sigma, labels)
            out[:, :, row * m:(row + 1) * m, col * m:(col + 1) * m] = denoised[:, :, r * m:(r + 1) * m, r * m:(r + 1) * m]
    return out


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--width", type=int, default=32, help="model_channels of both networks (xs: 128)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-patches", type=int, default=4096)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cell = args.resolution // args.grid
    patch = (2 * args.radius + 1) * cell
    patch_net = Precond(img_resolution=patch, img_channels=3, label_dim=patch_label_dim(args.radius),
                        model_channels=args.width, channel_mult=[1, 2, 3], attn_resolutions=[patch // 2, patch // 4])
    global_net = Precond(img_resolution=args.resolution, img_channels=3, label_dim=args.grid ** 2,
                         model_channels=args.width, channel_mult=[1, 2, 3, 4])
    model = PatchLocal(patch_net, grid_size=args.grid, radius=args.radius, max_patches=args.max_patches).to(device).eval()
    global_net = global_net.to(device).eval()
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    cond = torch.zeros(args.batch, args.grid, args.grid, device=device)
    cond[:, 3, 5] = cond[:, 10, 9] = 1
    sigma = torch.full((args.batch,), 2.0, device=device)
    labels = cond.flatten(1) / cond.flatten(1).norm(dim=1, keepdim=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    with torch.no_grad(), autocast:
        torch.testing.assert_close(model(x, sigma, cond), per_cell_loop(model, x, sigma, cond),
                                   rtol=1e-2 if args.dtype == "bf16" else 1e-4, atol=1e-2 if args.dtype == "bf16" else 1e-4)
        loop = timed(lambda: per_cell_loop(model, x, sigma, cond), args.repeats, device)
        batched = timed(lambda: model(x, sigma, cond), args.repeats, device)
        global_time = timed(lambda: global_net(x, sigma, labels), args.repeats, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.resolution}x{args.resolution}, G={args.grid}, r={args.radius} "
          f"({patch}px patches, {args.grid ** 2} per image), width {args.width}, batch {args.batch}, {args.dtype}")
    print(f"{'way':>14} {'s/eval':>9} {'img/s':>9}")
    for label, seconds in (("per-cell loop", loop), ("batched", batched), ("global model", global_time)):
        print(f"{label:>14} {seconds:>9.4f} {args.batch / seconds:>9.1f}")
    print(f"batched vs per-cell loop: {loop / batched:.1f}x faster (goal >= 20x on GPU)")
    print(f"patch-local vs global model: {batched / global_time:.1f}x the cost per image")


if __name__ == "__main__":
    main()
