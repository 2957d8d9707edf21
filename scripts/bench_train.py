#!/usr/bin/env python
"""Training throughput of the EDM2 models: images/s and, on a GPU, model FLOP utilization (MFU).

One timed step is exactly what `EDM2Diffusion` does per optimizer step under the Trainer: the EDM2 loss with the
learned uncertainty (`per_image_loss`), backward, non-finite gradients zeroed, Adam, forced weight
renormalization, and the update of two power-function EMAs. Data are synthetic tensors already on the device
(the loader's speed is scripts/bench_data.py's business).

    python scripts/bench_train.py                                  # CPU fp32, batch 8: quickstart (tiny) + img64-xs
    python scripts/bench_train.py --device cuda --batch auto       # bf16 autocast, largest batch that fits
    python scripts/bench_train.py --device cuda --batch 256 --compile --json bench.json

MFU = achieved model FLOP/s / the GPU's dense bf16 peak; model FLOPs per image = 3 x forward (forward + a
backward of twice its cost), with the forward counted by torch's FlopCounter (img64-xs: 89.9 GFLOP = 44.9 GMAC).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lcsbench.diffusion.phema import power_ema_beta, sigma_rel_to_gamma
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.nn.edm2 import PRESETS, preset
from lcsbench.nn.mp import force_weight_norm_

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "4090": 165.2}
LABEL_DIM = 256  # 16 x 16 location grid


def forward_flops(name: str) -> float:
    """FLOPs of one forward pass of preset `name` on one image (counted on the meta device: no compute)."""
    with torch.device("meta"):
        net = preset(name, LABEL_DIM)
        res = net.img_resolution
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, res, res), torch.ones(1), torch.zeros(1, LABEL_DIM))
    return float(counter.get_total_flops())


def make_module(name: str, device: str, compile: bool) -> EDM2Diffusion:
    torch.manual_seed(0)
    module = EDM2Diffusion(net=preset(name, LABEL_DIM), conditioning="location", grid_size=16).to(device)
    if compile:
        module.net.unet.compile()
    return module.train()


def synthetic_batch(batch_size: int, resolution: int, device: str) -> dict:
    cond = torch.zeros(batch_size, 16, 16)
    cells = torch.randint(0, 256, (batch_size, 3))
    cond.view(batch_size, -1).scatter_(1, cells, 1.0)
    return {"image": torch.rand(batch_size, 3, resolution, resolution, device=device) * 2 - 1,
            "cond": cond.to(device), "label": torch.nn.functional.normalize(cond.flatten(1), dim=1).to(device)}


def time_training(name: str, batch_size: int, device: str, steps: int, warmup: int, compile: bool) -> float:
    """Seconds per optimizer step (median of `steps` after `warmup`)."""
    module = make_module(name, device, compile)
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    params = [p for p in module.net.parameters()]
    averages = [[p.detach().float().clone() for p in params] for _ in range(2)]
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    batch = synthetic_batch(batch_size, module.net.img_resolution, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    generator = torch.Generator(device=device).manual_seed(0)
    times = []
    for step in range(1, warmup + steps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = module.per_image_loss(batch, generator).mean()
        loss.backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        force_weight_norm_(module.net)
        with torch.no_grad():
            for average, gamma in zip(averages, gammas):
                torch._foreach_lerp_(average, [p.detach() for p in params], 1 - power_ema_beta(step, gamma))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step > warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def largest_batch(name: str, device: str, compile: bool, candidates=(1024, 512, 384, 256, 192, 128, 64, 32)) -> int:
    for batch_size in candidates:
        try:
            time_training(name, batch_size, device, steps=1, warmup=1, compile=compile)
            return batch_size
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    raise SystemExit(f"{name}: even batch {candidates[-1]} does not fit on {device}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "img64-xs"], choices=sorted(PRESETS),
                        help="lcsbench.nn.edm2 presets (tiny = the quickstart model)")
    parser.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (bf16 autocast, as precision=bf16-mixed)")
    parser.add_argument("--batch", default="8", help="batch size, or 'auto' for the largest that fits (GPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile, allocator, cudnn)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by name)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # EDM2 disables TF32; bf16 autocast does the heavy math
    peak = args.peak_tflops
    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    if cuda and peak is None:
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device_name), None)

    results = []
    for name in args.presets:
        flops = forward_flops(name)
        batch_size = largest_batch(name, args.device, args.compile) if args.batch == "auto" else int(args.batch)
        seconds = time_training(name, batch_size, args.device, args.steps, args.warmup, args.compile)
        images_per_s = batch_size / seconds
        row = {"preset": name, "resolution": PRESETS[name]["img_resolution"], "batch": batch_size,
               "precision": "bf16-mixed" if cuda else "fp32", "compile": args.compile,
               "seconds_per_step": seconds, "images_per_s": images_per_s, "forward_gflop_per_image": flops / 1e9,
               "forward_gmac_per_image": flops / 2e9, "train_tflop_per_s": 3 * flops * images_per_s / 1e12}
        if cuda and peak:
            row["mfu"] = row["train_tflop_per_s"] / peak
        results.append(row)
        mfu = f", MFU {row['mfu']:.1%} of {peak:g} TFLOP/s" if "mfu" in row else ""
        print(f"{name:9s} {row['resolution']:>3d}px batch {batch_size:4d} {row['precision']:>10s}: "
              f"{seconds:8.3f} s/step, {images_per_s:9.1f} images/s, {row['forward_gmac_per_image']:.1f} GMAC fwd/image, "
              f"{row['train_tflop_per_s']:.3f} TFLOP/s{mfu}", flush=True)
    summary = {"device": device_name, "torch": torch.__version__, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
