"""Benchmark of the pixel-Jacobian analysis (paper Eq. 9): batched VJPs against a per-pixel loop.

    .venv/bin/python scripts/bench_analysis.py                     # quickstart + img64-xs, CPU or the GPU
    .venv/bin/python scripts/bench_analysis.py --models toy --loop-pixels 16

For each model it prints
- the per-pixel reference: one forward, then one `torch.autograd.grad` per (target pixel, output channel)
  (retain_graph), over `--loop-pixels` target pixels;
- `pixel_jacobian` on the same pixels, with method "vmap" (one forward, vmapped VJPs over one-hot cotangents)
  and "replicate" (the batch repeated per cotangent, one forward and backward per chunk), and the ratios
  against the loop (goal >= 10x);
- `pixel_jacobian` on every pixel of a 64x64 image (`--all-pixels`, default on a GPU; on CPU the time is
  extrapolated from the measured pixels unless --all-pixels is given).
Models: `toy` (a small conv net, no dependency), `quickstart` (EDM2 preset `tiny` of the quickstart config,
run at 64x64), `img64-xs` (the EDM2 XS U-Net, 124M parameters; label_dim 256), all at random initialisation
with emb_gain and out_gain set non-zero so the conditioning and output paths carry gradient.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lcsbench.analysis.locality import pixel_jacobian  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def toy_net(resolution: int) -> tuple[nn.Module, int]:
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
                        nn.Conv2d(64, 3, 3, padding=1))

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma, cond):
            return x + self.net(x)

    return Toy(), resolution


def edm2_denoiser(preset_name: str, resolution: int) -> tuple[nn.Module, int]:
    """A location-conditioned (label_dim 256) EDM2 net of a named preset, at the given resolution."""
    from lcsbench.data.conditioning import encode_label
    from lcsbench.nn.edm2 import preset

    net = preset(preset_name, label_dim=256, img_resolution=resolution)
    with torch.no_grad():  # random init has emb_gain = out_gain = 0: make every path carry gradient
        for name, param in net.named_parameters():
            if name.endswith("emb_gain") or name.endswith("out_gain"):
                param.fill_(0.5)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma, cond):
            return self.net(x, sigma, encode_label(cond, "location").to(x.device))

    return Wrapped(), resolution


def build(name: str) -> tuple[nn.Module, int]:
    if name == "toy":
        return toy_net(64)
    if name == "quickstart":  # the quickstart's `tiny` preset, run on 64x64 images as the benchmark asks
        return edm2_denoiser("tiny", 64)
    if name == "img64-xs":
        return edm2_denoiser("img64-xs", 64)
    raise SystemExit(f"unknown model {name!r}: choose toy, quickstart or img64-xs")


def loop_jacobian(denoiser, x, sigma, cond, pixels) -> torch.Tensor:
    """The per-pixel reference: one forward, one autograd.grad per (pixel, output channel)."""
    x = x.detach().requires_grad_(True)
    out = denoiser(x, sigma, cond)
    maps = []
    for row, col in pixels:
        per_channel = []
        for channel in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, channel, row, col].sum(), x, retain_graph=True)
            per_channel.append(grad.abs().sum(1).mean(0))
        maps.append(torch.stack(per_channel).mean(0))
    return torch.stack(maps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="quickstart,img64-xs", help="comma list of toy, quickstart, img64-xs")
    parser.add_argument("--loop-pixels", type=int, default=8, help="target pixels timed in both ways")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method (best is reported)")
    parser.add_argument("--batch", type=int, default=1, help="images per Jacobian (Eq. 9 averages over them)")
    parser.add_argument("--chunk-size", type=int, default=None, help="cotangents per batched backward")
    parser.add_argument("--memory-budget-gib", type=float, default=None, help="memory per chunk (default 2 GiB "
                        "on CPU, a quarter of free GPU memory on CUDA)")
    parser.add_argument("--all-pixels", action=argparse.BooleanOptionalAction, default=None,
                        help="time every pixel of the image (default: on a GPU only)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 is steadier on a busy machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    all_pixels = device.type == "cuda" if args.all_pixels is None else args.all_pixels
    if args.memory_budget_gib is not None:
        budget = int(args.memory_budget_gib * 2**30)
    elif device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 4
    else:
        budget = 2 * 2**30
    torch.set_grad_enabled(True)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, budget {budget / 2**30:.1f} GiB")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, resolution = build(name)
        model = model.to(device).eval()
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(args.batch, 3, resolution, resolution, device=device)
        cond = torch.zeros(args.batch, 16, 16, dtype=torch.long, device=device)
        cond[:, 5, 9] = 1
        sigma = 1.0
        generator = torch.Generator().manual_seed(1)
        flat = torch.randperm(resolution * resolution, generator=generator)[:args.loop_pixels].tolist()
        pixels = [(i // resolution, i % resolution) for i in flat]

        def timed(function):
            """Best wall-clock and process-CPU seconds over --repeats runs (the CPU here is shared)."""
            best_wall = best_cpu = float("inf")
            for _ in range(args.repeats):
                sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                result = function()
                sync(device)
                best_wall = min(best_wall, time.perf_counter() - wall)
                best_cpu = min(best_cpu, time.process_time() - cpu)
            return result, best_wall, best_cpu

        pixel_jacobian(model, x, sigma, cond, pixels[:1], chunk_size=args.chunk_size, memory_budget=budget)  # warm
        loop_jacobian(model, x, sigma, cond, pixels[:1])
        reference, loop_s, loop_cpu = timed(lambda: loop_jacobian(model, x, sigma, cond, pixels))
        print(f"[{name}] {params / 1e6:.2f}M params, {resolution}x{resolution}, batch {args.batch}, "
              f"{len(pixels)} pixels x 3 channels")
        print(f"  per-pixel loop     {loop_s:8.3f} s wall {loop_cpu:8.3f} s cpu  "
              f"({loop_s / len(pixels) * 1e3:8.1f} ms/pixel)")
        for method in ("vmap", "replicate"):
            batched, batched_s, batched_cpu = timed(lambda: pixel_jacobian(
                model, x, sigma, cond, pixels, chunk_size=args.chunk_size, memory_budget=budget, method=method))
            error = (batched - reference).abs().max().item() / reference.abs().max().clamp_min(1e-30).item()
            print(f"  batched {method:<10} {batched_s:8.3f} s wall {batched_cpu:8.3f} s cpu  "
                  f"({batched_s / len(pixels) * 1e3:8.1f} ms/pixel)  ratio {loop_s / batched_s:5.1f}x wall, "
                  f"{loop_cpu / batched_cpu:5.1f}x cpu  (max rel. diff {error:.1e})")
            if method == "vmap":
                vmap_s = batched_s
        every = [(r, c) for r in range(resolution) for c in range(resolution)]
        if all_pixels:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            heat = pixel_jacobian(model, x, sigma, cond, every, chunk_size=args.chunk_size, memory_budget=budget)
            sync(device)
            seconds = time.perf_counter() - start
            peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" \
                else ""
            print(f"  all {len(every)} pixels: {seconds:.1f} s measured{peak} (heat {tuple(heat.shape)})")
        else:
            print(f"  all {len(every)} pixels: ~{vmap_s / len(pixels) * len(every):.0f} s extrapolated (vmap) "
                  f"(--all-pixels to measure)")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
