#!/usr/bin/env python
"""Training throughput of the EDM2 models in fp32, bf16 autocast and bf16 + channels_last, measured in one run.

One timed step is exactly what `EDM2Diffusion` does per optimizer step under the Trainer: the EDM2 loss with the
learned uncertainty (`per_image_loss`), backward, non-finite gradients zeroed (`on_before_optimizer_step`), the
module's own optimizer (`configure_optimizers`), forced weight renormalization, and the update of two
power-function EMAs. Data are synthetic tensors already on the device (the loader is scripts/bench_data.py's).
The modes' steps are interleaved (one step of each mode in turn), so a machine whose load changes during the run
shifts every mode alike and the ratios stay meaningful; the median step of each mode is reported, in wall time
and in the process's CPU time (on a shared machine with `--threads 1`, CPU time is the figure that other jobs do
not inflate).

    python scripts/bench_train.py                                   # CPU: tiny preset, batch 32, three modes
    python scripts/bench_train.py --presets tiny --channel-mult-emb 8 --threads 1    # the cpu study's network
    python scripts/bench_train.py --device cuda --presets img64-xs --batch 256 --json bench.json
    python scripts/bench_train.py --device cuda --presets img64-xs --batch auto --compile --modes bf16

Modes: fp32; bf16 (autocast: what `trainer.precision: bf16-mixed` does; on a CPU with AMX or AVX512-BF16);
bf16+channels_last and fp32+channels_last (`model.init_args.channels_last: true`: conv weights stored NHWC).
An older lcsbench without the channels_last option (PYTHONPATH=<its checkout>) is measured with the network
converted by this script, so before/after ratios come from the same script.

MFU (GPU) = achieved model FLOP/s / the GPU's dense bf16 peak; model FLOPs per image = 3 x forward (forward + a
backward of twice its cost), the forward counted by torch's FlopCounter (img64-xs: 89.9 GFLOP = 44.9 GMAC).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lcsbench.diffusion.phema import power_ema_beta, sigma_rel_to_gamma
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.nn.edm2 import PRESETS, preset
from lcsbench.nn.mp import force_weight_norm_

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring; the first match counts.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                    "4090": 165.2}
LABEL_DIM = 256  # 16 x 16 location grid
MODES = {"fp32": (False, False), "bf16": (True, False), "bf16+channels_last": (True, True),
         "fp32+channels_last": (False, True)}  # name -> (bf16 autocast, channels_last)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name`, or None when it is not in BF16_PEAK_TFLOPS."""
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device_name), None)


def forward_flops(name: str, **overrides) -> float:
    """FLOPs of one forward pass of preset `name` on one image (counted on the meta device: no compute)."""
    with torch.device("meta"):
        net = preset(name, LABEL_DIM, **overrides)
        res = net.img_resolution
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, res, res), torch.ones(1), torch.zeros(1, LABEL_DIM))
    return float(counter.get_total_flops())


def make_module(name: str, device: str, channels_last: bool, compile: bool, **overrides) -> EDM2Diffusion:
    """The global model on preset `name`, built with the channels_last option (or converted, in an older lcsbench)."""
    torch.manual_seed(0)
    net = preset(name, LABEL_DIM, **overrides)
    try:
        module = EDM2Diffusion(net=net, conditioning="location", grid_size=16, channels_last=channels_last)
    except TypeError:  # an lcsbench from before the option: convert the network the way the option does
        module = EDM2Diffusion(net=net.to(memory_format=torch.channels_last) if channels_last else net,
                               conditioning="location", grid_size=16)
    module = module.to(device)
    if compile:
        module.net.unet.compile()
    return module.train()


def synthetic_batch(batch_size: int, resolution: int, device: str) -> dict:
    cond = torch.zeros(batch_size, 16, 16)
    cells = torch.randint(0, 256, (batch_size, 3))
    cond.view(batch_size, -1).scatter_(1, cells, 1.0)
    return {"image": torch.rand(batch_size, 3, resolution, resolution, device=device) * 2 - 1, "cond": cond.to(device)}


class TrainingStep:
    """One mode's module, optimizer, EMAs and batch; calling it takes one optimizer step and returns its seconds."""

    def __init__(self, name: str, batch_size: int, device: str, mode: str, compile: bool, **overrides):
        autocast, channels_last = MODES[mode]
        self.device = device
        self.module = make_module(name, device, channels_last, compile, **overrides)
        self.module._global_batch_size = batch_size  # the lr schedule's images per step (no Trainer here)
        self.optimizer = self.module.configure_optimizers()["optimizer"]  # the module's own (fused Adam)
        self.params = list(self.module.net.parameters())
        self.averages = [[p.detach().float().clone() for p in self.params] for _ in range(2)]
        self.gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
        self.batch = synthetic_batch(batch_size, self.module.net.img_resolution, device)
        self.autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.step = 0

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def __call__(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one optimizer step."""
        self.step += 1
        self.sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.module.per_image_loss(self.batch, self.generator).mean()
        loss.backward()
        self.module.on_before_optimizer_step(self.optimizer)
        self.optimizer.step()
        force_weight_norm_(self.module.net)
        with torch.no_grad():
            for average, gamma in zip(self.averages, self.gammas):
                torch._foreach_lerp_(average, [p.detach().float() for p in self.params],
                                     1 - power_ema_beta(self.step, gamma))
        self.sync()
        return time.perf_counter() - start, time.process_time() - start_cpu


def time_modes(name: str, batch_size: int, device: str, modes: list[str], steps: int, warmup: int, compile: bool,
               **overrides) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per optimizer step of each mode, the modes' steps interleaved."""
    runners = {mode: TrainingStep(name, batch_size, device, mode, compile, **overrides) for mode in modes}
    times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for step in range(warmup + steps):
        for mode, run in runners.items():
            seconds = run()
            if step >= warmup:
                times[mode].append(seconds)
    return {mode: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
            for mode, values in times.items()}


def largest_batch(name: str, device: str, mode: str, compile: bool,
                  candidates=(1024, 512, 384, 256, 192, 128, 64, 32), **overrides) -> int:
    for batch_size in candidates:
        try:
            time_modes(name, batch_size, device, [mode], steps=1, warmup=1, compile=compile, **overrides)
            return batch_size
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    raise SystemExit(f"{name}: even batch {candidates[-1]} does not fit on {device}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny"], choices=sorted(PRESETS),
                        help="lcsbench.nn.edm2 presets (tiny = the quickstart and cpu-study network)")
    parser.add_argument("--channel-mult-emb", type=int, default=None,
                        help="embedding width multiplier (the cpu study's configs: 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16+channels_last"], choices=list(MODES),
                        help="precision / memory-format modes, measured in one run (ratios against the first)")
    parser.add_argument("--batch", default="32", help="batch size, or 'auto' for the largest that fits (GPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, allocator, oneDNN/cuDNN)")
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
    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or (bf16_peak_tflops(device_name) if cuda else None)
    overrides = {} if args.channel_mult_emb is None else {"channel_mult_emb": args.channel_mult_emb}

    results = []
    for name in args.presets:
        flops = forward_flops(name, **overrides)
        batch_size = (largest_batch(name, args.device, args.modes[0], args.compile, **overrides)
                      if args.batch == "auto" else int(args.batch))
        seconds = time_modes(name, batch_size, args.device, args.modes, args.steps, args.warmup, args.compile,
                             **overrides)
        (base, base_cpu), first = seconds[args.modes[0]], args.modes[0]
        for mode in args.modes:
            wall, cpu = seconds[mode]
            images_per_s = batch_size / wall
            row = {"preset": name, "resolution": PRESETS[name]["img_resolution"], "batch": batch_size, "mode": mode,
                   "compile": args.compile, "seconds_per_step": wall, "cpu_seconds_per_step": cpu,
                   "images_per_s": images_per_s, f"speedup_vs_{first}": base / wall,
                   f"cpu_time_speedup_vs_{first}": base_cpu / cpu, "forward_gflop_per_image": flops / 1e9,
                   "train_tflop_per_s": 3 * flops * images_per_s / 1e12}
            if peak:
                row["mfu"] = row["train_tflop_per_s"] / peak
            results.append(row)
            mfu = f", MFU {row['mfu']:.1%} of {peak:g} TFLOP/s" if "mfu" in row else ""
            print(f"{name:9s} {row['resolution']:>3d}px batch {batch_size:4d} {mode:>19s}: {wall:7.3f} s/step "
                  f"({base / wall:4.2f}x {first}), CPU time {cpu:7.3f} s/step ({base_cpu / cpu:4.2f}x), "
                  f"{images_per_s:8.1f} images/s{mfu}", flush=True)
    summary = {"device": device_name, "torch": torch.__version__, "peak_bf16_tflops": peak, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
