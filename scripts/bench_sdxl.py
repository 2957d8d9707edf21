"""Memory and time per denoising step of the SDXL analyses (issue 8).

    python scripts/bench_sdxl.py                       # tiny SDXL pipeline on CPU (seconds)
    python scripts/bench_sdxl.py --full-unet --device cuda   # randomly initialised full-size SDXL base UNet

The full-size path builds SDXL base's UNet (2.6 B parameters) from its config with random weights (no
downloads) and random text conditioning of SDXL's shapes, so it times exactly the UNet work of the analyses:
a guided Euler step (the CFG batch of 2), the same step with cross-attention capture on all layers, the word
ablation of Figure 6's prompt (9 prompts, forward only), and the pixel Jacobian at one target latent pixel.
Prints one line per measurement: seconds per step, and peak memory (CUDA allocator peak on GPU, process peak
RSS on CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/sdxl_tiny.py, the fixture

from lcsbench.analysis.locality import pixel_jacobian  # noqa: E402
from lcsbench.analysis.sdxl.ablation import content_words, word_influence
from lcsbench.analysis.sdxl.attention import capture_cross_attention, cross_attention_layers
from lcsbench.analysis.sdxl.pipeline import SDXLCondition, encode_prompts, size_ids
from lcsbench.analysis.sdxl.prompts import LOCALITY_PROMPT
from lcsbench.models.sdxl import SDXLDenoiser, sample_euler


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def timed(device: torch.device, fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up (kernels, allocator)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats, peak_memory_mib(device)


def random_encoder(unet, height: int, width: int, device, dtype):
    """prompts -> SDXLCondition of SDXL's shapes with a fixed random embedding per prompt (timing only)."""
    context = unet.config.cross_attention_dim
    pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim

    def encode(prompts):
        conds = []
        for prompt in prompts:
            g = torch.Generator().manual_seed(abs(hash(prompt)) % 2**31)
            conds.append(SDXLCondition(torch.randn(1, 77, context, generator=g).to(device, dtype),
                                       torch.randn(1, pooled, generator=g).to(device, dtype),
                                       size_ids(height, width, 1, dtype, device)))
        return SDXLCondition.cat(conds)

    return encode


def bench(unet, scheduler, encode, latent_size, device, repeats: int, jacobian_chunk: int | None) -> list[dict]:
    cond = encode([LOCALITY_PROMPT])
    negative = SDXLCondition(torch.zeros_like(cond.prompt_embeds), torch.zeros_like(cond.pooled), cond.time_ids)
    denoiser = SDXLDenoiser(unet, scheduler, 5.0, negative).eval()
    noise = torch.randn((1, unet.config.in_channels, *latent_size), generator=torch.Generator().manual_seed(0))
    noise = noise.to(device)
    rows = []

    def record(name: str, seconds: float, peak: float, note: str = "") -> None:
        rows.append({"measurement": name, "seconds": round(seconds, 4), "peak_mib": round(peak, 1), "note": note})
        print(f"{name:<44} {seconds * 1000:10.1f} ms  peak {peak:9.1f} MiB  {note}", flush=True)

    steps = 4
    seconds, peak = timed(device, lambda: sample_euler(denoiser, scheduler, cond, noise, steps), repeats)
    record("guided Euler step (CFG batch 2)", seconds / steps, peak, f"{steps}-step run / {steps}")
    layers = list(cross_attention_layers(unet))

    def captured_run():
        with capture_cross_attention(unet, ["all"], steps=range(1, steps + 1), latent_size=latent_size) as capture:
            sample_euler(denoiser, scheduler, cond, noise, steps, on_step_end=capture.euler_callback)

    seconds, peak = timed(device, captured_run, repeats)
    record("same step, capture all layers, 77 tokens", seconds / steps, peak, f"{len(layers)} cross-attn layers")
    x, sigma = noise * 5.0, 5.0
    words = content_words(LOCALITY_PROMPT)
    seconds, peak = timed(device, lambda: word_influence(denoiser, encode, x, sigma, LOCALITY_PROMPT, chunk_size=3),
                          repeats)
    record("word ablation at one step", seconds, peak, f"{len(words) + 1} prompts x CFG, forward only")
    centre = (latent_size[0] // 2, latent_size[1] // 2)
    seconds, peak = timed(device, lambda: pixel_jacobian(denoiser, x, sigma, cond, [centre],
                                                         chunk_size=jacobian_chunk), 1)
    record("pixel Jacobian at one latent pixel", seconds, peak,
           f"{unet.config.out_channels} VJPs, chunk {jacobian_chunk or 'auto'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-unet", action="store_true", help="time a random full-size SDXL base UNet")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                        help="default: float16 on cuda, float32 on cpu")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (full: 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement")
    parser.add_argument("--jacobian-chunk", type=int, default=None, help="cotangents per batched backward")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids contention on shared CPUs)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    if args.full_unet:
        from diffusers import EulerDiscreteScheduler

        from tests.sdxl_tiny import SDXL_BASE_SCHEDULER_CONFIG, build_full_size_unet

        side = args.resolution or 1024
        start = time.perf_counter()
        unet = build_full_size_unet(dtype=dtype, device=device)
        scheduler = EulerDiscreteScheduler(**SDXL_BASE_SCHEDULER_CONFIG)
        encode = random_encoder(unet, side, side, device, dtype)
        params = sum(p.numel() for p in unet.parameters()) / 1e9
        print(f"full-size SDXL base UNet, random weights: {params:.2f} B parameters, {dtype}, {device}, "
              f"{side}x{side} px, built in {time.perf_counter() - start:.1f} s")
    else:
        from tests.sdxl_tiny import IMAGE_SIZE, build_tiny_sdxl_pipeline

        side = args.resolution or IMAGE_SIZE
        pipe = build_tiny_sdxl_pipeline(Path(tempfile.mkdtemp(prefix="sdxl_tiny_tokenizer_")))
        if device.type != "cpu" or dtype != torch.float32:
            pipe.to(device, dtype)
        unet, scheduler = pipe.unet, pipe.scheduler

        def encode(prompts):
            return encode_prompts(pipe, prompts, side, side)

        print(f"tiny SDXL pipeline: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M UNet parameters, "
              f"{dtype}, {device}, {side}x{side} px")
    latent = side // 8 if args.full_unet else side // 2
    rows = bench(unet.eval(), scheduler, encode, (latent, latent), device, args.repeats, args.jacobian_chunk)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "dtype": str(dtype), "side": side,
                                               "full_unet": args.full_unet, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
