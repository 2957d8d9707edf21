#!/usr/bin/env python
"""The first-GPU check (issue 24): what lcsbench does on one GPU, measured in <= 8 minutes, every stage time-boxed.

    python scripts/gpu_check.py --out reports/gpu_check                   # a GPU node: <= 8 minutes
    python scripts/gpu_check.py --device cpu --quick --out /tmp/gpu_check  # the same stages, tiny, <= 2 minutes
    python scripts/gpu_check.py --only train,patch --out /tmp/gc           # some stages

Each stage runs in its own process group with a time limit (killed when it passes it). DIR/gpu_check.json (a key
per stage: its figures, or the reason it was skipped, failed or cut off) and the table DIR/gpu_check.md are
rewritten every few seconds, as the stages write their figures, so a run cut off at any point still reports.
Logs: DIR/logs/<stage>.log. Data: synthetic CLEVR-format shards (coloured discs at the labelled locations) in
DIR/data, written here, so the check needs neither Blender nor a render.

Stages:
  env       versions (python, torch, CUDA, cuDNN, lightning), the device, its memory, /dev/shm (DataLoader workers
            pass batches through it), a C compiler for torch.compile, the bf16 peak used for MFU
  train     edm2-img64-xs training steps at the configs' per-GPU batch (configs/exp1.yaml batch_size; CPU quick:
            tiny, batch 4), bf16 autocast: images/s, MFU, peak memory for eager / channels_last / torch.compile
            (the compiled variant gets what is left of the stage's time, compilation included)
  fit       a Lightning fit of configs/exp1.yaml and configs/exp3.yaml (global batch 2048 from the configs) on
            synthetic 64 px shards: optimizer steps/s, the loader wait per batch (Lightning's profiler), and the
            overhead over the bare training loop (same module, same batch, same accumulation rounds)
  ddp       2 ranks (NCCL on 2 GPUs; gloo on the CPU when there is one GPU): parameters and both EMAs
            bit-identical across ranks after the steps, different sample keys on each rank
  patch     patch-local full-image denoising: batched cells vs the per-cell loop (scripts/bench_patch.py)
  jacobian  the pixel Jacobian (Eq. 9) through `module.denoiser` (bf16 autocast on CUDA): batched VJPs vs the
            per-pixel loop (scripts/bench_analysis.py's reference)
  run32     configs/reproduce/cpu/base.yaml + exp1.yaml (32 px, the cpu study's network) trained on synthetic
            32 px shards
            for what is left of the budget, up to 5 minutes, and its conditioning gap (EMA weights, true vs
            rolled conditioners) on held-out synthetic scenes

MFU = 3 x forward FLOPs (torch's FlopCounter) x images/s / the device's dense bf16 peak (H100 SXM / H200: 989.4
TFLOP/s; the peak used is recorded in `env`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path[:0] = [str(REPO), str(SCRIPTS)]

STAGES = ("env", "train", "fit", "ddp", "patch", "jacobian", "run32")
# Seconds a stage may take: (GPU, CPU --quick). run32 takes what is left of the budget, up to its limit.
LIMITS = {"env": (45, 30), "train": (120, 60), "fit": (110, 90), "ddp": (75, 90), "patch": (30, 40),
          "jacobian": (40, 40), "run32": (330, 60)}
BUDGET = (480, 120)  # the whole check: 8 minutes on a GPU, 2 for --quick (--budget for a busy machine)
RUN32_MAX_TRAIN_S = 300  # "a 5-minute 32 px Exp 1 training run"
RESERVED_AFTER_RUN32 = 30  # run32's own start-up and its conditioning gap after training


# --- results: a file per stage, merged into gpu_check.json and gpu_check.md -----------------------------------


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    partial.replace(path)


class Recorder:
    """A stage's figures in DIR/stages/<stage>.json, rewritten on every update (a killed stage keeps them)."""

    def __init__(self, out: Path, stage: str):
        self.path = out / "stages" / f"{stage}.json"
        self.figures: dict = {}

    def update(self, **figures) -> None:
        self.figures.update(figures)
        write_json(self.path, self.figures)


def read_stage(out: Path, stage: str) -> dict:
    path = out / "stages" / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_summary(out: Path, results: dict) -> None:
    """gpu_check.json and a short markdown table of the stages' summaries."""
    write_json(out / "gpu_check.json", results)
    lines = [f"# gpu_check ({results['meta']['device']}, {results['meta']['started']})", "",
             "| stage | status | seconds | summary |", "|---|---|---|---|"]
    for stage in STAGES:
        row = results.get(stage)
        if row is None:
            continue
        summary = row.get("summary") or row.get("reason") or ""
        lines.append(f"| {stage} | {row.get('status', '?')} | {row.get('seconds', 0):.0f} | {summary} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def run_stage(stage: str, args: argparse.Namespace, limit: float, results: dict) -> None:
    """Run one stage in its own process group, merging its figures into `results` as they come; kill it at
    `limit` seconds."""
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--out", str(out), "--device",
               args.device, "--seconds", f"{limit:.0f}"] + (["--quick"] if args.quick else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT"):
        env.pop(name, None)  # a stage that starts DDP picks its own
    start = time.time()
    with open(out / "logs" / f"{stage}.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        status = None
        while process.poll() is None:
            if time.time() - start > limit:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                status = f"cut off at its limit of {limit:.0f} s"
                break
            time.sleep(1)
            results[stage] = {**read_stage(out, stage), "status": "running", "seconds": time.time() - start,
                              "limit_s": limit}
            write_summary(out, results)
    figures = read_stage(out, stage)
    if status is None:
        status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    if process.returncode != 0 and "reason" not in figures:
        tail = (out / "logs" / f"{stage}.log").read_text(errors="replace").strip().splitlines()[-3:]
        figures["reason"] = f"{status}; its log ends: " + " | ".join(tail)[-400:]
    if figures.get("skipped"):
        status = "skipped"
    results[stage] = {**figures, "status": status, "seconds": time.time() - start, "limit_s": limit}
    write_summary(out, results)


def run_all(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "stages", ignore_errors=True)
    column = 1 if args.quick else 0
    budget = (args.budget or BUDGET[column]) * args.time_scale
    stages = [s for s in STAGES if s in args.only.split(",")] if args.only else list(STAGES)
    unknown = set(args.only.split(",")) - set(STAGES) if args.only else set()
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}: choose among {', '.join(STAGES)}")
    started = time.time()
    results = {"meta": {"device": args.device, "quick": args.quick, "budget_s": budget, "time_scale": args.time_scale,
                        "stages": stages,
                        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)}}
    write_summary(out, results)
    for stage in stages:
        left = budget - (time.time() - started)
        limit = min(LIMITS[stage][column] * args.time_scale, left)
        if limit < 5:
            results[stage] = {"status": "skipped", "seconds": 0.0,
                              "reason": f"the check's budget of {budget} s was spent before this stage"}
            write_summary(out, results)
            continue
        print(f"gpu_check: {stage} (limit {limit:.0f} s)", flush=True)
        run_stage(stage, args, limit, results)
        print(f"gpu_check: {stage}: {results[stage]['status']}: "
              f"{results[stage].get('summary') or results[stage].get('reason', '')}", flush=True)
    results["meta"]["seconds"] = time.time() - started
    write_summary(out, results)
    print((out / "gpu_check.md").read_text())
    return 0


# --- synthetic CLEVR-format shards: coloured discs at the labelled locations ------------------------------------


def synthetic_dataset(root: Path, resolution: int, per_count: int, val_per_count: int, counts=(1, 2, 3),
                      shard_size: int = 256, seed: int = 0) -> Path:
    """A dataset in the renderer's layout (manifest.json, n{k}/{train,val}-NNNNNN.tar, scene JSON with
    pixel_coords, colours and visible pixels, instance masks): k discs of CLEVR colours on a grey floor, so that a
    location-conditioned model has something to learn in seconds. Written once; reused when present."""
    import numpy as np
    from PIL import Image

    from lcsbench.data.scenes import COLORS, sample_key
    from lcsbench.data.shards import MANIFEST, png_bytes, write_json_atomic, write_shard

    if (root / MANIFEST).exists():
        return root
    rng = np.random.default_rng(seed)
    radius = max(1.5, resolution / 14)
    rows, cols = np.mgrid[0:resolution, 0:resolution] + 0.5
    shards: dict[str, dict[str, list[str]]] = {}
    shard_samples: dict[str, int] = {}
    for count in counts:
        for split, total in (("train", per_count), ("val", val_per_count)):
            samples = []
            for index in range(total):
                image = np.full((resolution, resolution, 3), 128, dtype=np.uint8)
                mask = np.zeros((resolution, resolution), dtype=np.uint8)
                objects = []
                for mask_id in range(1, count + 1):
                    x, y = rng.uniform(radius, resolution - radius, size=2)
                    color = list(COLORS)[rng.integers(len(COLORS))]
                    disc = (cols - x) ** 2 + (rows - y) ** 2 <= radius ** 2
                    image[disc], mask[disc] = COLORS[color], mask_id
                    objects.append({"shape": "sphere", "size": "large", "material": "rubber", "color": color,
                                    "3d_coords": [0.0, 0.0, 0.7], "rotation": 0.0,
                                    "pixel_coords": [float(x), float(y), 10.0], "mask_id": mask_id})
                for obj in objects:
                    obj["visible_pixels"] = int((mask == obj["mask_id"]).sum())
                key = sample_key(count, split, index)
                scene = {"image_index": index, "split": split, "num_objects": count, "width": resolution,
                         "height": resolution, "objects": objects, "scene_seed": f"synthetic/{seed}/{key}"}
                samples.append({"__key__": key, "png": png_bytes(Image.fromarray(image)),
                                "json": json.dumps(scene).encode(), "mask.png": png_bytes(Image.fromarray(mask))})
            for start in range(0, total, shard_size):
                rel = f"n{count}/{split}-{start // shard_size:06d}.tar"
                write_shard(root / rel, samples[start:start + shard_size])
                shards.setdefault(f"n{count}", {}).setdefault(split, []).append(rel)
                shard_samples[rel] = len(samples[start:start + shard_size])
    settings = {"counts": list(counts), "per_count": per_count, "val_per_count": val_per_count,
                "resolution": resolution, "seed": seed, "shard_size": shard_size}
    write_json_atomic(root / MANIFEST, {"format": "lcsbench-clevr-shards/1", "mode": "synthetic (gpu_check discs)",
                                        "settings": settings, "shards": shards, "shard_samples": shard_samples})
    return root


# --- stage helpers ------------------------------------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


def reset_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def config_value(config: str, *keys: str):
    """A value of a shipped YAML config, e.g. config_value("exp1", "data", "init_args", "batch_size")."""
    import yaml

    node = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())
    for key in keys:
        node = node[key]
    return node


def parameter_digest(tensors) -> str:
    """sha256 of the float32 bytes of `tensors` in order: equal digests mean bit-identical weights."""
    import torch

    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


# --- stage: env ---------------------------------------------------------------------------------------------------


def stage_env(args, record: Recorder, deadline: float) -> None:
    import lightning
    import torch

    import bench_train

    cuda = args.device.startswith("cuda")
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "lightning": lightning.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
            "c_compiler": shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")}
    with contextlib.suppress(Exception):
        import triton

        info["triton"] = triton.__version__
    info["missing_packages"] = [name for name in ("webdataset", "jsonargparse", "docstring_parser", "typeshed_client",
                                                  "tensorboard", "scipy") if importlib.util.find_spec(name) is None]
    with contextlib.suppress(OSError):
        shm = os.statvfs("/dev/shm")
        info["dev_shm_gib"] = shm.f_frsize * shm.f_blocks / 2**30
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, devices=torch.cuda.device_count(), memory_gib=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported(),
                    peak_bf16_tflops=bench_train.bf16_peak_tflops(props.name))
    else:
        info.update(device=f"cpu ({torch.get_num_threads()} threads)", devices=0, peak_bf16_tflops=None)
    warnings = []
    if info.get("dev_shm_gib", 1e9) < 1:
        warnings.append(f"/dev/shm is {info['dev_shm_gib']:.2f} GiB: DataLoader workers need more (docker run "
                        f"--ipc=host or --shm-size 16g)")
    if info["missing_packages"]:
        warnings.append(f"missing {', '.join(info['missing_packages'])}: `pip install -e .` (the fit stages need "
                        f"LightningCLI's jsonargparse[signatures] and webdataset)")
    if info["c_compiler"] is None:
        warnings.append("no C compiler: torch.compile (Triton) cannot build its kernels")
    info["warnings"] = warnings
    memory = f", {info['memory_gib']:.0f} GiB" if "memory_gib" in info else ""
    info["summary"] = (f"{info['device']}{memory}, torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
                       f"/dev/shm {info.get('dev_shm_gib', float('nan')):.1f} GiB"
                       + (f"; WARNING: {'; '.join(warnings)}" if warnings else ""))
    record.update(**info)


# --- stage: train -------------------------------------------------------------------------------------------------


def stage_train(args, record: Recorder, deadline: float) -> None:
    import torch

    import bench_train

    cuda = args.device.startswith("cuda")
    name = "tiny" if args.quick else "img64-xs"
    batch = 4 if args.quick else int(config_value("exp1", "data", "init_args", "batch_size"))
    flops = bench_train.forward_flops(name)
    peak = bench_train.bf16_peak_tflops(torch.cuda.get_device_name()) if cuda else None
    record.update(preset=name, batch=batch, precision="bf16 autocast", forward_gflop_per_image=flops / 1e9,
                  peak_bf16_tflops=peak, mfu_definition="3 x forward FLOPs x images/s / peak")
    variants = [("eager", "bf16", False), ("channels_last", "bf16+channels_last", False), ("compiled", "bf16", True)]
    rows, timed_steps = {}, 3 if args.quick else 10
    for label, mode, compile in variants:
        if compile and not cuda:
            rows[label] = {"skipped": "torch.compile is measured on a GPU (on a CPU its C++ build takes minutes)"}
            record.update(variants=rows)
            continue
        reset_memory(args.device)
        try:
            step = bench_train.TrainingStep(name, batch, args.device, mode, compile)
            start = time.perf_counter()
            step()  # the first step: cuDNN autotuning, allocator, and for `compiled` the compilation
            first = time.perf_counter() - start
            step()
            times = []
            while len(times) < timed_steps and time.time() < deadline - 5:
                times.append(step()[0])
        except torch.OutOfMemoryError:
            rows[label] = {"error": f"out of memory at batch {batch}"}
            record.update(variants=rows)
            continue
        seconds = sorted(times)[len(times) // 2] if times else float("nan")
        images_per_s = batch / seconds
        row = {"seconds_per_step": seconds, "images_per_s": images_per_s, "first_step_s": first,
               "timed_steps": len(times), "peak_memory_gib": peak_memory_gib(args.device)}
        if peak:
            row["mfu"] = 3 * flops * images_per_s / (peak * 1e12)
        rows[label] = row
        del step
        parts = [f"{k} {v['images_per_s']:.3g} img/s" + (f" (MFU {v['mfu']:.0%})" if "mfu" in v else "")
                 for k, v in rows.items() if "images_per_s" in v]
        memory = [v["peak_memory_gib"] for v in rows.values() if v.get("peak_memory_gib")]
        record.update(variants=rows, summary=f"{name} batch {batch}: " + ", ".join(parts)
                      + (f"; peak memory <= {max(memory):.1f} GiB" if memory else ""))


# --- stage: fit ---------------------------------------------------------------------------------------------------


class FitTimer:
    """A Lightning callback (built lazily: lightning imports inside the stage) timing optimizer steps after a warm-up
    and keeping the last training batch for the bare loop."""

    def __new__(cls, warmup_steps: int, device: str):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self):
                self.start = self.end = None
                self.start_step = self.end_step = 0
                self.batch = None

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.batch = batch
                if self.start is None and trainer.global_step >= warmup_steps:
                    sync(device)
                    self.start, self.start_step = time.perf_counter(), trainer.global_step

            def on_train_end(self, trainer, pl_module):
                sync(device)
                self.end, self.end_step = time.perf_counter(), trainer.global_step

            def steps_per_s(self) -> float | None:
                if self.start is None or self.end_step <= self.start_step:
                    return None
                return (self.end_step - self.start_step) / (self.end - self.start)

        return _Timer()


def fit_overrides(experiment: str, data_root: Path, out: Path, steps: int, quick: bool) -> list[str]:
    args = ["--config", str(REPO / "configs" / f"{experiment}.yaml"), "--data.init_args.root", str(data_root),
            "--trainer.max_steps", str(steps), "--trainer.devices", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out / "runs" / experiment), "--trainer.profiler", "simple"]
    if not quick:
        return args
    net = "--model.init_args.net.init_args."
    size = {"exp1": ["img_resolution", "32", "attn_resolutions", "[16]"],
            "exp3": ["img_resolution", "10", "attn_resolutions", "[5]"]}[experiment]
    for key, value in zip(size[::2], size[1::2]):
        args += [net + key, value]
    return args + [net + "model_channels", "16", net + "channel_mult", "[1, 2]", net + "num_blocks", "1",
                   net + "channels_per_head", "16", "--data.init_args.resolution", "32",
                   "--data.init_args.global_batch_size", "8", "--data.init_args.batch_size", "4",
                   "--data.init_args.num_workers", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]


def bare_loop_seconds(module, batch, rounds: int, device: str, deadline: float, steps: int) -> float | None:
    """Seconds per optimizer step of the training computation alone: the fit's last batch, already on the device,
    `rounds` forward/backward passes, then zeroed non-finite gradients, the module's optimizer, the weight
    renormalization and two EMA updates, as under the Trainer."""
    import torch

    from lcsbench.diffusion.phema import power_ema_beta, sigma_rel_to_gamma
    from lcsbench.nn.mp import force_weight_norm_

    module = module.to(device).train()
    module.trainer = None  # a bare loop: nothing here may log through the Trainer
    optimizer = module.configure_optimizers()["optimizer"]
    params = list(module.net.parameters())
    averages = [[p.detach().float().clone() for p in params] for _ in range(2)]
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    generator = torch.Generator(device=device).manual_seed(0)
    times = []
    for step in range(1, steps + 3):
        if time.time() > deadline:
            break
        sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for _ in range(rounds):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                loss = module.per_image_loss(batch, generator).mean() / rounds
            loss.backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        force_weight_norm_(module.net)
        with torch.no_grad():
            for average, gamma in zip(averages, gammas):
                torch._foreach_lerp_(average, [p.detach().float() for p in params], 1 - power_ema_beta(step, gamma))
        sync(device)
        if step > 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] if times else None


def stage_fit(args, record: Recorder, deadline: float) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lcsbench.commands.trainer import build_cli

    out = Path(args.out)
    resolution = 32 if args.quick else 64
    root = synthetic_dataset(out / "data" / f"synthetic{resolution}", resolution, 32 if args.quick else 256,
                             8 if args.quick else 32)
    steps, warmup = (4, 1) if args.quick else (12, 2)
    rows = {}
    for experiment in ("exp1", "exp3"):
        cli = build_cli(fit_overrides(experiment, root, out, steps, args.quick), run=False)
        trainer, module, data = cli.trainer, cli.model, cli.datamodule
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]  # no 2 GB writes
        timer = FitTimer(warmup, args.device)
        trainer.callbacks.append(timer)
        trainer.fit(module, data)
        waits = trainer.profiler.recorded_durations.get("[_TrainingEpochLoop].train_dataloader_next", [])
        rounds = trainer.accumulate_grad_batches
        row = {"optimizer_steps": trainer.global_step, "global_batch": data.batch_size * trainer.world_size * rounds,
               "device_batch": data.batch_size, "accumulation": rounds, "steps_per_s": timer.steps_per_s(),
               "loader_wait_ms_per_batch": 1e3 * sum(waits[rounds:]) / max(1, len(waits[rounds:])),
               "batches_waited": len(waits)}
        if row["steps_per_s"]:
            row["images_per_s"] = row["steps_per_s"] * row["global_batch"]
        rows[experiment] = row
        record.update(experiments=rows)
        bare = bare_loop_seconds(module, timer.batch, rounds, args.device, deadline - 5, 2 if args.quick else 5)
        if bare and row["steps_per_s"]:
            row.update(bare_seconds_per_step=bare, overhead_vs_bare=(1 / row["steps_per_s"]) / bare - 1)
        parts = [f"{k} {v['steps_per_s'] or float('nan'):.2f} steps/s of {v['global_batch']} "
                 f"({v['accumulation']} rounds), loader wait {v['loader_wait_ms_per_batch']:.1f} ms/batch"
                 + (f", {v['overhead_vs_bare']:+.0%} vs bare loop" if "overhead_vs_bare" in v else "")
                 for k, v in rows.items()]
        record.update(experiments=rows, summary="; ".join(parts))
        del cli, trainer, module, data
        reset_memory(args.device)


# --- stage: ddp ---------------------------------------------------------------------------------------------------


def stage_ddp(args, record: Recorder, deadline: float) -> None:
    import lightning as L
    import torch

    from lcsbench.callbacks.ema import PowerFunctionEMA
    from lcsbench.data.datamodule import CLEVRDataModule
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.nn.edm2 import preset

    out = Path(args.out)
    folder = out / "ddp"
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    accelerator = "gpu" if gpus >= 2 else "cpu"
    backend = ("NCCL on 2 GPUs" if gpus >= 2 else
               "gloo, 2 ranks on the CPU (this node has one GPU)" if gpus == 1 else "gloo, 2 ranks on the CPU")
    root = synthetic_dataset(out / "data" / "synthetic32", 32, 32 if args.quick else 256, 8 if args.quick else 32)
    steps = 3 if args.quick else 8
    torch.manual_seed(0)
    net = preset("tiny", 256, model_channels=16 if args.quick else 32)
    module = EDM2Diffusion(net, lr=0.01, lr_decay_steps=1000, lr_rampup_images=64)
    data = CLEVRDataModule(str(root), counts="1-3", global_batch_size=16, batch_size=8, num_workers=1,
                           steps_per_epoch=steps, shuffle_buffer=16)
    ema = PowerFunctionEMA(sigma_rels=[0.05, 0.10])

    class RankReport(L.Callback):
        def __init__(self):
            self.keys: list[str] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.keys += list(batch["key"])

        def on_train_end(self, trainer, pl_module):
            report = {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": trainer.global_step,
                      "device_batch": data.batch_size, "accumulation": trainer.accumulate_grad_batches,
                      "params": parameter_digest(p for _, p in sorted(pl_module.net.named_parameters())),
                      "ema": [parameter_digest(avg[k] for k in sorted(avg)) for avg in ema.averages],
                      "keys": self.keys}
            write_json(folder / f"rank{trainer.global_rank}.json", report)

    trainer = L.Trainer(accelerator=accelerator, devices=2, strategy="ddp", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(folder),
                        precision="bf16-mixed" if accelerator == "gpu" else "32", callbacks=[ema, RankReport()])
    trainer.fit(module, data)
    if trainer.global_rank != 0:
        return
    paths = [folder / f"rank{r}.json" for r in (0, 1)]
    while not all(p.exists() for p in paths) and time.time() < deadline - 2:
        time.sleep(0.5)
    ranks = [json.loads(p.read_text()) for p in paths if p.exists()]
    if len(ranks) < 2:
        record.update(backend=backend, reason="rank 1 wrote no report before the stage's limit")
        return
    params_equal = ranks[0]["params"] == ranks[1]["params"]
    ema_equal = ranks[0]["ema"] == ranks[1]["ema"]
    keys_differ = ranks[0]["keys"] != ranks[1]["keys"]
    global_batch = ranks[0]["device_batch"] * ranks[0]["world_size"] * ranks[0]["accumulation"]
    record.update(backend=backend, world_size=ranks[0]["world_size"], steps=[r["steps"] for r in ranks],
                  global_batch=global_batch, params_equal=params_equal, ema_equal=ema_equal, keys_differ=keys_differ,
                  shared_keys=len(set(ranks[0]["keys"]) & set(ranks[1]["keys"])),
                  summary=f"{backend}: {ranks[0]['steps']} steps of global batch {global_batch}; parameters "
                          f"{'equal' if params_equal else 'DIFFER'}, EMAs {'equal' if ema_equal else 'DIFFER'}, "
                          f"data keys {'differ' if keys_differ else 'THE SAME'} across ranks")


# --- stage: patch -------------------------------------------------------------------------------------------------


def stage_patch(args, record: Recorder, deadline: float) -> None:
    import torch

    import bench_patch
    from lcsbench.nn.edm2 import Precond
    from lcsbench.nn.patch import PatchLocal, patch_label_dim

    device = torch.device(args.device)
    resolution, grid, radius = (32, 16, 2) if args.quick else (64, 16, 2)
    width, batch, bf16 = (16, 1, False) if args.quick else (128, 32, device.type == "cuda")
    cell = resolution // grid
    patch = (2 * radius + 1) * cell
    torch.manual_seed(0)
    net = Precond(img_resolution=patch, img_channels=3, label_dim=patch_label_dim(radius), model_channels=width,
                  channel_mult=[1, 2, 3] if not args.quick else [1, 2],
                  attn_resolutions=[patch // 2, patch // 4] if not args.quick else [patch // 2],
                  num_blocks=3 if not args.quick else 1, channels_per_head=64 if not args.quick else 16)
    model = PatchLocal(net, grid_size=grid, radius=radius).to(device).eval()
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    cond = torch.zeros(batch, grid, grid, device=device)
    cond[:, 3, 5] = cond[:, 10, 9] = 1
    sigma = torch.full((batch,), 2.0, device=device)
    record.update(resolution=resolution, grid=grid, radius=radius, patch_px=patch, width=width, batch=batch,
                  precision="bf16 autocast" if bf16 else "fp32")
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        difference = (model(x, sigma, cond) - bench_patch.per_cell_loop(model, x, sigma, cond)).abs().max().item()
        loop = bench_patch.timed(lambda: bench_patch.per_cell_loop(model, x, sigma, cond), 1, device)
        batched = bench_patch.timed(lambda: model(x, sigma, cond), 2, device)
    record.update(loop_s=loop, batched_s=batched, speedup=loop / batched, max_abs_difference=difference,
                  summary=f"{resolution} px, {grid * grid} cells of {patch} px patches, batch {batch}: batched "
                          f"{batched:.3f} s vs per-cell loop {loop:.3f} s ({loop / batched:.1f}x), max |diff| "
                          f"{difference:.1e}")


# --- stage: jacobian ----------------------------------------------------------------------------------------------


def stage_jacobian(args, record: Recorder, deadline: float) -> None:
    import torch

    import bench_analysis
    from lcsbench.analysis.locality import pixel_jacobian
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.nn.edm2 import preset

    device = torch.device(args.device)
    name, resolution, pixels = ("tiny", 32, 4) if args.quick else ("img64-xs", 64, 16)
    torch.manual_seed(0)
    net = preset(name, 256, img_resolution=resolution)
    with torch.no_grad():  # random init has emb_gain = out_gain = 0: make every path carry gradient
        for param_name, param in net.named_parameters():
            if param_name.endswith("gain"):
                param.fill_(0.5)
    denoiser = EDM2Diffusion(net).to(device).eval().denoiser  # bf16 autocast on CUDA, as every analysis runs
    x = torch.randn(1, 3, resolution, resolution, device=device)
    cond = torch.zeros(1, 16, 16, dtype=torch.long, device=device)
    cond[:, 5, 9] = 1
    flat = torch.randperm(resolution * resolution, generator=torch.Generator().manual_seed(1))[:pixels].tolist()
    targets = [(i // resolution, i % resolution) for i in flat]
    record.update(model=name, resolution=resolution, pixels=pixels)

    def timed(function):
        sync(device)
        start = time.perf_counter()
        result = function()
        sync(device)
        return result, time.perf_counter() - start

    pixel_jacobian(denoiser, x, 1.0, cond, targets[:1])  # warm-up
    batched, batched_s = timed(lambda: pixel_jacobian(denoiser, x, 1.0, cond, targets))
    reference, loop_s = timed(lambda: bench_analysis.loop_jacobian(denoiser, x, 1.0, cond, targets))
    error = ((batched - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()
    record.update(loop_s=loop_s, batched_s=batched_s, speedup=loop_s / batched_s, max_relative_difference=error,
                  summary=f"{name} at {resolution} px, {pixels} pixels x 3 channels: batched {batched_s:.2f} s vs "
                          f"loop {loop_s:.2f} s ({loop_s / batched_s:.1f}x), max rel. diff {error:.1e}")
    every = [(r, c) for r in range(resolution) for c in range(resolution)]
    estimate = batched_s / pixels * len(every)  # at this chunk size; larger chunks on a GPU only shorten it
    if device.type == "cuda" and estimate < deadline - time.time() - 10:
        budget = torch.cuda.mem_get_info(device)[0] // 4  # bench_analysis.py's budget on a GPU
        _, all_s = timed(lambda: pixel_jacobian(denoiser, x, 1.0, cond, every, memory_budget=budget))
        record.update(all_pixels_s=all_s,
                      summary=record.figures["summary"] + f"; all {len(every)} pixels {all_s:.1f} s")
    else:
        record.update(all_pixels_s_extrapolated=estimate)


# --- stage: run32 -------------------------------------------------------------------------------------------------


def stage_run32(args, record: Recorder, deadline: float) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lcsbench.callbacks.conditioning_gap import ConditioningGap, conditioning_gap
    from lcsbench.callbacks.ema import PowerFunctionEMA
    from lcsbench.commands.trainer import build_cli

    out = Path(args.out)
    root = synthetic_dataset(out / "data" / "synthetic32-run", 32, 64 if args.quick else 3000,
                             16 if args.quick else 64, seed=1)
    train_s = max(5.0, min(RUN32_MAX_TRAIN_S, deadline - time.time() - RESERVED_AFTER_RUN32))
    cuda = args.device.startswith("cuda")
    cpu_scale = REPO / "configs" / "reproduce" / "cpu"  # exp1 is a delta over the scale's base
    overrides = ["--config", str(cpu_scale / "base.yaml"), "--config", str(cpu_scale / "exp1.yaml"),
                 "--data.init_args.root", str(root), "--trainer.accelerator", "gpu" if cuda else "cpu",
                 "--trainer.max_steps", "1000000",
                 "--trainer.max_time", f"00:00:{int(train_s) // 60:02d}:{int(train_s) % 60:02d}",  # DD:HH:MM:SS
                 "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
                 "--trainer.enable_progress_bar", "false",
                 "--trainer.logger.init_args.save_dir", str(out / "runs" / "run32"),
                 "--data.init_args.num_workers", "4" if cuda else "1"]
    if args.quick:
        overrides += ["--trainer.max_steps", "6"]
    cli = build_cli(overrides, run=False)
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    keep = (PowerFunctionEMA, ConditioningGap)  # no judge curve (synthetic discs), no sample grids, no checkpoints
    trainer.callbacks = [c for c in trainer.callbacks if isinstance(c, keep) or not (
        type(c).__module__.startswith("lcsbench") or isinstance(c, ModelCheckpoint))]
    gap_callback = next((c for c in trainer.callbacks if isinstance(c, ConditioningGap)), None)
    if gap_callback is not None and args.quick:
        gap_callback.every_n_steps = 3
    record.update(config="configs/reproduce/cpu/base.yaml + exp1.yaml", train_budget_s=train_s,
                  data="synthetic 32 px discs, counts 1-3")
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    steps = trainer.global_step
    record.update(steps=steps, train_s=seconds, steps_per_s=steps / seconds,
                  images_per_s=steps * data.batch_size * trainer.world_size * trainer.accumulate_grad_batches / seconds,
                  gap_curve={str(step): {str(s): v["gap"] for s, v in per_sigma.items()}
                             for step, per_sigma in (gap_callback.history if gap_callback else {}).items()})
    ema = next(c for c in trainer.callbacks if isinstance(c, PowerFunctionEMA))
    module = module.to(args.device).eval()
    batch = next(iter(data.val_dataloader()))
    images, cond = batch["image"].to(args.device), batch["cond"].to(args.device)
    with ema.average_weights(module):
        gaps = conditioning_gap(module.denoiser, images, cond, [0.5, 2.0, 5.0])
    record.update(final_gap={str(s): v for s, v in gaps.items()},
                  summary=f"{steps} steps in {seconds:.0f} s ({steps / seconds:.1f} steps/s); conditioning gap (EMA) "
                          + ", ".join(f"sigma {s:g}: {v['gap']:+.0%}" for s, v in gaps.items()))


STAGE_FUNCTIONS = {"env": stage_env, "train": stage_train, "fit": stage_fit, "ddp": stage_ddp, "patch": stage_patch,
                   "jacobian": stage_jacobian, "run32": stage_run32}


def run_stage_here(args: argparse.Namespace) -> int:
    """The body of one stage (in the process that `run_stage` started)."""
    started = time.time()
    deadline = started + args.seconds
    record = Recorder(Path(args.out), args.stage)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # a DDP stage's second rank reports through rank 0
        record.update()  # the stage file exists from the start
    STAGE_FUNCTIONS[args.stage](args, record, deadline)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, logs and data")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test of this script)")
    parser.add_argument("--only", default=None, help=f"comma-separated stages among {', '.join(STAGES)}")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole check (default {BUDGET[0]}, --quick {BUDGET[1]})")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every stage's limit and the budget (a machine shared with other jobs: 5)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage here
    parser.add_argument("--seconds", type=float, default=60, help=argparse.SUPPRESS)  # internal: the stage's limit
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but torch sees no CUDA device: run on a GPU node, or pass --device cpu "
                         "--quick for the CPU version of the check")
    elif not args.quick and args.stage is None:
        parser.error("on a CPU the check runs at tiny sizes only: pass --quick (the full sizes need a GPU)")
    return run_stage_here(args) if args.stage else run_all(args)


if __name__ == "__main__":
    sys.exit(main())
