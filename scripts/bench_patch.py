#!/usr/bin/env python
"""Patch-local inference speed.

    # seconds per 32 px image at 16 Heun steps on the committed Exp 3 weights, old path against new, one core:
    taskset -c 1 env OMP_NUM_THREADS=1 python scripts/bench_patch.py \\
        --ckpt reports/reproduction/cpu/weights/exp3.pt --steps 16 --images 8 --rounds 2
    python scripts/bench_patch.py                       # random small networks: batched vs a loop over cells
    python scripts/bench_patch.py --width 128 --batch 32 --dtype bf16   # GPU: xs-width networks

With --ckpt, whole samples are drawn (edm_sampler, as `lengthgen` draws them, all images in one batch) in each way,
the ways interleaved over --rounds rounds (median kept), so a loaded machine slows every way alike:
  old            nn.patch.reference_forward in fp32: the full-image denoiser before issue 32
  new fp32       PatchLocal.forward (channels-last patches for a channels-last network, labels kept per
                 conditioner) in fp32
  new bf16       the same under bf16 autocast, on the CPU in chunks of nn.patch.CPU_CHUNK_PATCHES patches: what
                 `lengthgen` runs by default (--precision bf16)
  new bf16 NCHW  the same with the network's weights contiguous: whether channels-last wins here
and the samples of each way are compared with the old ones (largest pixel difference, images in [-1, 1]).

Without --ckpt, one full-image evaluation of random networks is timed in three ways: a Python loop over cells
(the definition), batched (PatchLocal) and the global EDM2 Precond on the whole image (the Exp. 1/2 model).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lcsbench.nn.edm2 import Precond
from lcsbench.nn.patch import PatchLocal, patch_label_dim, patch_labels, reference_forward


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
            out[:, :, row * m:(row + 1) * m, col * m:(col + 1) * m] = \
                denoised[:, :, r * m:(r + 1) * m, r * m:(r + 1) * m]
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


def sample_ways(path: str, steps: int, images: int, rounds: int, chosen: list[str]) -> None:
    """Seconds per image of whole samples in each way (module docstring), interleaved, and their differences."""
    from lcsbench.data.conditioning import PAPER_LOCATIONS, grid_from_locations
    from lcsbench.diffusion.sampler import edm_sampler
    from lcsbench.models.loaders import load_denoiser

    module = load_denoiser(path)
    local = module.local
    noise = torch.randn((images, *module.image_shape), generator=torch.Generator().manual_seed(0))
    cond = grid_from_locations(PAPER_LOCATIONS[:3], module.grid_size).expand(images, -1, -1).contiguous()

    def old(x, sigma, c):
        return reference_forward(local, x, sigma, c)

    def new(precision: str):
        module.set_inference_precision(precision)
        return module.denoiser

    contiguous = PatchLocal(module.net, local.grid_size, local.radius, local.max_patches, local.label_scale)
    contiguous.net = type(module.net)(**module.net.config)
    contiguous.net.load_state_dict(module.net.state_dict())
    contiguous.net.eval()

    def nchw_bf16(x, sigma, c):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return contiguous(x, sigma, c).float()

    ways = {"old": lambda: old, "new fp32": lambda: new("fp32"), "new bf16": lambda: new("bf16"),
            "new bf16 NCHW": lambda: nchw_bf16}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    samples: dict[str, torch.Tensor] = {}
    ways = {name: way for name, way in ways.items() if name in chosen or name == "old"}
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            samples[name] = edm_sampler(way(), noise, cond, num_steps=steps)
            seconds[name].append((time.perf_counter() - start) / images)
    print(f"{path}: {images} images of {tuple(module.image_shape)} per sample batch, {steps} Heun steps "
          f"({2 * steps - 1} denoiser calls), {torch.get_num_threads()} thread(s), {rounds} interleaved rounds; "
          f"channels-last weights: {local.channels_last}")
    print(f"{'way':>14} {'s/image':>9} {'vs old':>7} {'max |sample - old|':>19}")
    base = statistics.median(seconds["old"])
    for name in ways:
        median = statistics.median(seconds[name])
        diff = (samples[name] - samples["old"]).abs().max().item()
        print(f"{name:>14} {median:>9.3f} {base / median:>6.2f}x {diff:>19.4f}   rounds: "
              + " ".join(f"{s:.3f}" for s in seconds[name]))


def random_networks(args: argparse.Namespace) -> None:
    """One full-image evaluation of random networks: per-cell loop, batched, global model (module docstring)."""
    device = torch.device(args.device)
    cell = args.resolution // args.grid
    patch = (2 * args.radius + 1) * cell
    patch_net = Precond(img_resolution=patch, img_channels=3, label_dim=patch_label_dim(args.radius),
                        model_channels=args.width, channel_mult=[1, 2, 3], attn_resolutions=[patch // 2, patch // 4])
    global_net = Precond(img_resolution=args.resolution, img_channels=3, label_dim=args.grid ** 2,
                         model_channels=args.width, channel_mult=[1, 2, 3, 4])
    model = PatchLocal(patch_net, grid_size=args.grid, radius=args.radius,
                       max_patches=args.max_patches).to(device).eval()
    global_net = global_net.to(device).eval()
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    cond = torch.zeros(args.batch, args.grid, args.grid, device=device)
    cond[:, 3, 5] = cond[:, 10, 9] = 1
    sigma = torch.full((args.batch,), 2.0, device=device)
    labels = cond.flatten(1) / cond.flatten(1).norm(dim=1, keepdim=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    tolerance = 1e-2 if args.dtype == "bf16" else 1e-4
    with torch.no_grad(), autocast:
        torch.testing.assert_close(model(x, sigma, cond), per_cell_loop(model, x, sigma, cond), rtol=tolerance,
                                   atol=tolerance)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="a patch-local model (e.g. the committed exp3.pt): time whole "
                                                     "samples, old path against new")
    parser.add_argument("--steps", type=int, default=16, help="--ckpt: Heun steps per sample")
    parser.add_argument("--images", type=int, default=8, help="--ckpt: images per sample batch")
    parser.add_argument("--rounds", type=int, default=2, help="--ckpt: interleaved rounds (the median is kept)")
    parser.add_argument("--ways", default="old,new fp32,new bf16,new bf16 NCHW", help="--ckpt: the ways to time "
                        "(comma list; old is always timed, the others are compared with it)")
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
    if args.ckpt is not None:
        with torch.no_grad():
            sample_ways(args.ckpt, args.steps, args.images, args.rounds, args.ways.split(","))
    else:
        random_networks(args)


if __name__ == "__main__":
    main()
