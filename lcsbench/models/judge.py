"""`JudgeModule`: trains the object judge (nn/judge.py) on renders and detects objects in any image.

The renderer's exact centres and colours (`batch["centres"]`, `batch["colors"]`, CLEVRDataModule) are the
targets. `detect(images)` returns, per image, the detected centres (x, y) in pixels, their colours
(scenes.COLOR_NAMES) and the count; it refuses images at another resolution than the judge was trained on,
since object sizes in pixels (and so the heatmap peaks) change with resolution.

Validation reports, over the held-out renders (torchmetrics, so DDP gives the one-GPU figure):
`val/exact_count` (detected count == true count), `val/localization` (every true object matched within
`tolerance_cells` grid cells by the protocol's Hungarian matching, no extra detection) and `val/color`
(fraction of matched objects whose colour is right).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from lcsbench.analysis.judge import score_detection
from lcsbench.checkpoints import (JUDGE_ARCH_KEY, architecture_record, class_path, read_checkpoint, read_record, rebuild,
                                  write_shipped_judge)
from lcsbench.data.scenes import COLOR_NAMES, DEFAULT_GRID_SIZE
from lcsbench.nn.judge import CentreHeatmapNet, centre_color_loss, centre_heatmap_loss, centre_targets, extract_peaks

class JudgeModule(L.LightningModule):
    """Centre-heatmap object judge (module docstring)."""

    def __init__(
        self,
        net: CentreHeatmapNet,  # the heatmap U-Net (nn/judge.py)
        resolution: int | None = None,  # image size it judges; None: take the data's at fit time
        grid_size: int = DEFAULT_GRID_SIZE,  # conditioning grid G: the localization tolerance is counted in its cells
        tolerance_cells: float = 1.0,  # localization tolerance (the protocol's default)
        heatmap_sigma: float = 1.0,  # Gaussian radius of the target bumps in pixels
        color_weight: float = 0.5,  # weight of the colour cross-entropy
        threshold: float = 0.5,  # peak probability that counts as an object
        lr: float = 2e-3,  # Adam learning rate
        flip: bool = True,  # augment training batches with random horizontal flips (centres flipped too)
        lr_final_fraction: float = 0.05,  # cosine decay of the learning rate to this fraction at max_steps
        degrade_fraction: float = 0.0,  # fraction of training images degraded like a diffusion sample (issue 14)
        blur_max: float = 1.0,  # largest Gaussian blur sigma in pixels of a degraded image
        noise_max: float = 0.1,  # largest additive Gaussian noise std (images in [-1, 1])
        color_shift_max: float = 0.05,  # largest per-channel gain change and offset
    ) -> None:
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.val_exact = MeanMetric()
        self.val_localized = MeanMetric()
        self.val_color = MeanMetric()

    @property
    def resolution(self) -> int | None:
        return self.hparams.resolution

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if data is None:
            return
        theirs = data.resolution
        if self.hparams.resolution is None:
            self.hparams.resolution = theirs
        elif theirs != self.hparams.resolution:
            raise ValueError(f"the judge is set up for {self.hparams.resolution}x{self.hparams.resolution} images but "
                             f"the data is {theirs}x{theirs}: set model.init_args.resolution: {theirs}, or render the "
                             f"judge's data at {self.hparams.resolution}")

    def check_images(self, images: torch.Tensor) -> None:
        size = self.hparams.resolution
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"the judge takes RGB images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"this judge was trained on {size}x{size} images but got {images.shape[-1]}x"
                             f"{images.shape[-2]}: train a judge at this resolution (configs/judge.yaml with "
                             f"data rendered at --resolution {images.shape[-1]})")

    def losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"]
        out = self.net(images)
        target = centre_targets(batch["centres"].to(images.device), images.shape[-2], images.shape[-1],
                                self.hparams.heatmap_sigma)
        heat = centre_heatmap_loss(out[:, :1], target)
        color = centre_color_loss(out[:, 1:], batch["centres"].to(images.device), batch["colors"].to(images.device))
        return heat, color

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.flip:
            batch = flip_batch(batch, torch.rand(batch["image"].shape[0]) < 0.5)
        if self.hparams.degrade_fraction > 0:
            batch = {**batch, "image": self.degraded(batch["image"])}
        heat, color = self.losses(batch)
        loss = heat + self.hparams.color_weight * color
        self.log_dict({"train/loss": loss, "train/heatmap": heat, "train/color": color}, prog_bar=True)
        return loss

    def degraded(self, images: torch.Tensor) -> torch.Tensor:
        """The batch with `degrade_fraction` of its images blurred, noised and colour-shifted by random amounts."""
        h = self.hparams
        levels = random_degradation(images.shape[0], h.blur_max, h.noise_max, h.color_shift_max)
        chosen = (torch.rand(images.shape[0]) < h.degrade_fraction).to(images.device)
        return torch.where(chosen[:, None, None, None], degrade(images, *levels), images)

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per image: `{"centres": [m, 2] float pixels (x, y), "colors": [m names], "count": m}`."""
        self.check_images(images)
        out = self.net(images.to(self.device, torch.float32))
        heat = torch.sigmoid(out[:, 0]).float()
        detections = []
        for b in range(images.shape[0]):
            centres, cells = extract_peaks(heat[b], self.hparams.threshold)
            color_idx = out[b, 1:, cells[:, 0], cells[:, 1]].argmax(0).tolist() if len(cells) else []
            detections.append({"centres": centres, "colors": [COLOR_NAMES[i] for i in color_idx],
                               "count": len(centres)})
        return detections

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        cell = images.shape[-1] / self.hparams.grid_size
        for detection, centres, colors in zip(self.detect(images), batch["centres"], batch["colors"]):
            score = score_detection(detection, centres, colors, cell, self.hparams.tolerance_cells)
            self.val_exact.update(float(score["exact"]))
            self.val_localized.update(float(score["localized"]))
            if score["matched"]:
                self.val_color.update(score["right_colors"] / score["matched"], weight=score["matched"])
        metrics = {"val/exact_count": self.val_exact, "val/localization": self.val_localized}
        if self.val_color.update_called:  # colour accuracy exists once an object was matched this epoch
            metrics["val/color"] = self.val_color
        self.log_dict(metrics, batch_size=images.shape[0])

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        final = self.hparams.lr_final_fraction

        def factor(step: int) -> float:  # cosine from 1 to `final` over the run
            progress = min(step / total, 1.0)
            return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[JUDGE_ARCH_KEY] = architecture_record(self.net, self)


def flip_batch(batch: dict, chosen: torch.Tensor) -> dict:
    """The batch with the `chosen` images mirrored left-right and their centres' x moved with them."""
    images, centres = batch["image"].clone(), batch["centres"].clone()
    chosen = chosen.to(images.device)
    images[chosen] = images[chosen].flip(-1)
    centres[chosen.to(centres.device), :, 0] = images.shape[-1] - centres[chosen.to(centres.device), :, 0]
    return {**batch, "image": images, "centres": centres}


# --- degradations: what separates a diffusion model's sample from a render (issue 14) -----------------------


def degrade(
    images: torch.Tensor,  # [B, 3, H, W] in [-1, 1]
    blur: torch.Tensor,  # [B] Gaussian blur sigma in pixels (0: none)
    noise: torch.Tensor,  # [B] std of additive Gaussian noise
    gain: torch.Tensor,  # [B, 3] per-channel gain
    offset: torch.Tensor,  # [B, 3] per-channel offset
    generator: torch.Generator | None = None,  # seeds the noise
) -> torch.Tensor:
    """Each image blurred (separable Gaussian, reflected borders), colour-shifted, then noised; clamped to [-1, 1]."""
    b, c, h, w = images.shape
    radius = max(1, math.ceil(3 * float(blur.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    sigma = blur.to(images).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / sigma) ** 2)
    kernel = kernel / kernel.sum(-1, keepdim=True)  # [B, K]; sigma -> 0 gives the identity
    kernel = kernel.repeat_interleave(c, 0)  # one kernel per (image, channel): a grouped convolution
    x = torch.nn.functional.pad(images.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel[:, None, :, None], groups=b * c)
    x = torch.nn.functional.conv2d(x, kernel[:, None, None, :], groups=b * c).reshape(b, c, h, w)
    x = x * gain.to(x)[:, :, None, None] + offset.to(x)[:, :, None, None]
    x = x + noise.to(x)[:, None, None, None] * torch.randn(x.shape, generator=generator).to(x)
    return x.clamp(-1, 1)


def random_degradation(n: int, blur_max: float, noise_max: float, color_shift_max: float,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """(blur, noise, gain, offset) for `n` images, each drawn uniformly up to its maximum."""
    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    return (blur_max * uniform(n), noise_max * uniform(n), 1 + color_shift_max * (2 * uniform(n, 3) - 1),
            color_shift_max * (2 * uniform(n, 3) - 1))


def fixed_degradation(n: int, blur: float, noise: float, color_shift: float) -> tuple[torch.Tensor, ...]:
    """(blur, noise, gain, offset) for `n` images at one level: the colour shift alternates its sign by channel."""
    signs = torch.tensor([1.0, -1.0, 1.0]).expand(n, 3)
    return torch.full((n,), blur), torch.full((n,), noise), 1 + color_shift * signs, color_shift * signs


SHIPPED_JUDGE = "judge-{resolution}.pt"  # package data in lcsbench/weights/
JUDGE_RECIPE = ("render the judge's data at that resolution and fit configs/judge.yaml on it (its header gives the "
                "commands, e.g. `python -m lcsbench render --out data/judge{r} --counts 1-12 --per-count 3000 "
                "--val-per-count 50 --resolution {r} --samples-per-pixel 16 --seed 3` then `python -m lcsbench fit "
                "--config configs/judge.yaml --data.init_args.root data/judge{r} --data.init_args.resolution {r} "
                "--model.init_args.resolution {r}`), and pass --judge runs/judge/.../last.ckpt")


def shipped_judges() -> dict[int, Path]:
    """{resolution: path} of the judges inside the package (lcsbench/weights/judge-<resolution>.pt)."""
    folder = resources.files("lcsbench.weights")
    found = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith("judge-") and name.endswith(".pt") and name[6:-3].isdigit():
            found[int(name[6:-3])] = Path(str(entry))
    return dict(sorted(found.items()))


def shipped_judge_path(resolution: int) -> Path:
    """The shipped judge for `resolution`, or a ValueError naming the shipped ones and the training recipe."""
    judges = shipped_judges()
    if resolution not in judges:
        shipped = ", ".join(f"{r}x{r}" for r in judges) or "none"
        raise ValueError(f"no judge for {resolution}x{resolution} images ships with lcsbench (shipped: {shipped}): "
                         f"{JUDGE_RECIPE.format(r=resolution)}")
    return judges[resolution]


def load_judge(path: str | Path | None = None, map_location: str | torch.device = "cpu",
               resolution: int = 64) -> JudgeModule:
    """Rebuild a trained judge in eval mode: from `path` (a `fit --config configs/judge.yaml` checkpoint or a
    shipped file), or, with no path, the judge shipped for `resolution` (64 by default)."""
    if path is None:
        path = shipped_judge_path(resolution)
    payload = read_checkpoint(path, "pass a judge checkpoint from `python -m lcsbench fit --config configs/judge.yaml` "
                                    "(runs/judge/.../last.ckpt)", map_location)
    record = read_record(payload, JUDGE_ARCH_KEY, path, "a judge checkpoint",
                         "Pass the --judge checkpoint written by `python -m lcsbench fit --config configs/judge.yaml`")
    if "net_class" not in record:  # judges written before the shared record: {"net_config", "hparams"}
        record = {"net_class": class_path(CentreHeatmapNet), "net_config": record["net_config"],
                  "module_class": class_path(JudgeModule), "module_hparams": record["hparams"]}
    if record["module_hparams"].get("resolution") is None:
        raise ValueError(f"{path} does not record the resolution it was trained at: retrain the judge")
    module = rebuild(record, path)
    module.load_state_dict(payload["state_dict"])
    module.source = str(path)  # which judge this is, for messages on this machine
    module.identity = judge_name(path)  # ... and for output files: its package path and sha256
    module.recipe = payload.get("recipe")  # shipped judges: how they were made and how well they count
    return module.eval()


def judge_name(path: str | Path | None) -> dict:
    """The judge as an output file names it: inside the package, its package-relative path (lcsbench/weights/...),
    else the file's name; with its sha256 when the file is here. Never a machine's absolute path."""
    if not path:
        return {"path": None, "sha256": None}
    from lcsbench.data.shards import file_sha256

    file = Path(path)
    package = Path(__file__).resolve().parents[1]
    if file.parts[-3:-1] == ("lcsbench", "weights"):  # a shipped judge, wherever the file was made
        shown = f"lcsbench/weights/{file.name}"
        file = file if file.is_file() else package / "weights" / file.name
    else:
        shown = file.as_posix() if not file.is_absolute() else file.name
    return {"path": shown, "sha256": file_sha256(file) if file.is_file() else None}


def ship_judge(checkpoint: str | Path, out: str | Path, recipe: dict) -> Path:
    """Write a judge checkpoint as a small shipped file: the architecture record, the weights and `recipe`
    (render command, config, steps, seed, lcsbench version, measured accuracy). Plain data only."""
    payload = read_checkpoint(checkpoint, "pass the judge's last.ckpt")
    record = read_record(payload, JUDGE_ARCH_KEY, checkpoint, "a judge checkpoint", "")
    return write_shipped_judge(out, record, payload["state_dict"], recipe)
