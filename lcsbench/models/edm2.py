"""`EDM2Diffusion`: EDM2 training of a conditional denoiser on CLEVR batches (Karras et al. 2024; paper App. E.1).

The procedure is EDM2's: the loss with learned uncertainty (diffusion/loss.py), Adam(0.9, 0.99, eps 1e-8) without
weight decay, the inverse-square-root learning-rate schedule evaluated every step, non-finite gradients zeroed,
plus the paper's one change: forced weight renormalization after every optimizer step. Mixed precision is the
Trainer's (`precision: bf16-mixed` on GPU). Validation reports the EDM-weighted denoising error at fixed noise
levels (1.0 = no better than returning c_skip x), as a torchmetrics Metric so multi-GPU runs report the same number.

Speed (issue 24): a training step never waits for the device. The loss is checked for NaN/Inf on the host every
`trainer.log_every_n_steps` batches (every batch on the CPU, where that costs nothing), the progress bar shows the
loss from those checks, the learning rate is logged from a host tensor; non-finite gradients are zeroed and the
weights renormalized in a few kernels for the whole network (nn/multi_tensor.py), Adam is fused, cuDNN picks its
fastest kernels (`cudnn.benchmark`), and `channels_last` stores the convolution weights channels-last.

Everything downstream uses `module.denoiser(x, sigma, cond) -> D(x)` (diffusion/denoiser.py: it also says its
image shape, conditioning kind and grid size), where `cond` is the structured conditioner (location grid
`[B, G, G]` or colour counts `[B, 8]`). Loading a trained module (EMA weights, exports) is models/loaders.py's.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torchmetrics import Metric

from lcsbench.checkpoints import ARCH_KEY, architecture_record, network_differences
from lcsbench.data.conditioning import DEFAULT_GRID_SIZE, encode_label, label_dim
from lcsbench.diffusion.denoiser import BoundDenoiser
from lcsbench.diffusion.loss import denoising_error, edm2_loss
from lcsbench.diffusion.schedule import learning_rate
from lcsbench.nn.edm2 import check_label_scale
from lcsbench.nn.mp import force_weight_norm_
from lcsbench.nn.multi_tensor import zero_nonfinite_


INFERENCE_PRECISIONS = ("bf16", "fp32")  # what `set_inference_precision` and the commands' --precision take


# --- validation metric -------------------------------------------------------------------------------------


class NoiseLevelLoss(Metric):
    """Mean EDM-weighted denoising error per fixed noise level, summed across ranks."""

    full_state_update = False

    def __init__(self, num_levels: int):
        super().__init__()
        self.add_state("total", default=torch.zeros(num_levels, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_levels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, level: int, per_image_error: torch.Tensor) -> None:
        self.total[level] += per_image_error.detach().to(torch.float64).sum()
        self.count[level] += per_image_error.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


# --- the LightningModule -------------------------------------------------------------------------------------


class EDM2Diffusion(L.LightningModule):
    """Trains `net` (an `lcsbench.nn.edm2.Precond`, or anything with its call signature) the EDM2 way."""

    def __init__(
        self,
        net: torch.nn.Module,  # denoiser network: net(x, sigma, labels, return_logvar) (nn/edm2.py Precond)
        conditioning: str = "location",  # conditioner kind the labels encode: location | color
        grid_size: int = DEFAULT_GRID_SIZE,  # location grid G (label_dim = G*G); ignored for color
        label_scale: str = "counts",  # counts as they are (the paper's integer array) | unit L2 norm (App. E.1)
        lr: float = 0.012,  # reference learning rate alpha_ref (img64-xs: 0.0120)
        lr_decay_steps: float = 35000,  # t_ref: optimizer steps before the 1/sqrt(t) decay (img64: 35000)
        lr_rampup_images: float = 10e6,  # linear warm-up length in images (EDM2: 10 M)
        P_mean: float = -0.8,  # mean of ln(sigma) during training (img64 presets)
        P_std: float = 1.6,  # std of ln(sigma)
        val_sigmas: Sequence[float] = (0.02, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0),  # validation noise levels
        val_seed: int = 0,  # seed of the validation noise (one fixed draw per held-out image)
        noise_seed: int = 0,  # training noise is drawn from (noise_seed, step, accumulation round, rank)
        compile: bool = False,  # torch.compile the U-Net for training
        channels_last: bool = False,  # store conv weights channels-last (NHWC); scripts/bench_train.py measures it
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.conditioning = conditioning
        self.grid_size = grid_size
        self.label_scale = label_scale
        check_label_scale(label_scale)  # refuse an unknown scale at construction (parse time in the CLI)
        expected = self.expected_label_dim()
        found = getattr(net, "label_dim", None)
        if found != expected:
            raise ValueError(f"the network's label_dim is {found} but {conditioning!r} conditioning"
                             f"{f' on a {grid_size}x{grid_size} grid' if conditioning == 'location' else ''} gives "
                             f"{expected}-dim labels: build the net with label_dim={expected} (a config leaves "
                             f"label_dim out: the data's conditioning and grid_size set it)")
        self.val_sigmas = [float(s) for s in val_sigmas]
        self.val_loss = NoiseLevelLoss(len(self.val_sigmas))
        self._global_batch_size: int | None = None
        self._unchecked_losses: list[tuple[int, int, list, torch.Tensor]] = []  # (step, batch, keys, loss) on device

    def expected_label_dim(self) -> int:
        """Label width the network must take: the class's `network_label_dim` rule on this module's settings."""
        return self.network_label_dim(self.conditioning, self.grid_size, self.hparams)

    @classmethod
    def network_label_dim(cls, conditioning: str, grid_size: int, init_args: Mapping[str, Any]) -> int:
        """The label width a model built with `init_args` on data of this conditioning and grid needs (subclasses
        with other labels, e.g. patch-local, override it): what LightningCLI's link writes into the net's label_dim
        (commands/trainer.py), so a config states G once, and what the constructor checks the net against."""
        return label_dim(conditioning, grid_size)

    # -- the denoiser interface (docs/architecture.md) --

    def encode_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """The network label vector of a structured conditioner (data/conditioning.py) under `label_scale`."""
        return encode_label(cond, self.conditioning, self.label_scale)

    # Devices on which `denoiser` (samplers, analyses, callbacks, commands) runs the network under bf16 autocast:
    # in fp32 a GPU samples and takes Jacobians at a fraction of its speed. The EDM arithmetic around the network
    # stays fp32 (Precond), as in training. The training and validation steps call `denoise` directly and follow
    # the Trainer's precision. Set to () on an instance for fp32 analyses on a GPU.
    inference_autocast_devices: tuple[str, ...] = ("cuda",)

    def set_inference_precision(self, precision: str) -> None:
        """`bf16`: the network under bf16 autocast on the CPU and the GPU (on the CPU it agrees with fp32 on the
        committed weights: lengthgen rates within the Wilson interval, locality radii within the spread across
        scenes, scripts/bench_patch.py); `fp32`: everything in float32 on every device."""
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"the inference precision is one of {INFERENCE_PRECISIONS}, got {precision!r}")
        self.inference_autocast_devices = ("cpu", "cuda") if precision == "bf16" else ()

    @property
    def denoiser(self) -> BoundDenoiser:
        """`denoiser(x, sigma, cond) -> D(x)` with its image shape, conditioning kind and grid size
        (diffusion/denoiser.py): what every sampler, analysis, command and callback calls."""
        return BoundDenoiser(self.inference_denoise, self.image_shape, self.conditioning,
                             self.grid_size if self.conditioning == "location" else None, network=self.net)

    def inference_denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        """`denoise` under bf16 autocast on `inference_autocast_devices`; float32 out either way."""
        autocast = x.device.type in self.inference_autocast_devices
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return self.denoise(x, sigma, cond).to(torch.float32)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this model denoises."""
        return (self.net.img_channels, self.net.img_resolution, self.net.img_resolution)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        """D(x; sigma, cond): the denoised image."""
        labels = self.encode_cond(cond).to(x.device)
        return self.net(x, sigma, labels)

    # -- training --

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for name in ("conditioning", "grid_size"):
            theirs = getattr(datamodule, name, None)
            if theirs is not None and not (name == "grid_size" and self.conditioning != "location"):
                if theirs != getattr(self, name):
                    raise ValueError(f"the data's {name} is {theirs!r} but the model's is {getattr(self, name)!r}: "
                                     f"set model.init_args.{name}: {theirs!r} (and the net's label_dim to match)")
        resolution = getattr(datamodule, "resolution", None) if datamodule is not None else None
        if resolution is not None and self.image_shape[1:] != (resolution, resolution):
            raise ValueError(f"the data is {resolution}x{resolution} but the model denoises {self.image_shape[1]}x"
                             f"{self.image_shape[2]} images: build the network for the data's resolution "
                             f"({self.resolution_hint(resolution)}), or train on data rendered at "
                             f"--resolution {self.image_shape[1]}")
        if self.hparams.compile and stage == "fit":
            self.net.unet.compile() if hasattr(self.net, "unet") else self.net.compile()

    def on_fit_start(self) -> None:
        # cuDNN times its convolution algorithms once per shape and keeps the fastest (the shapes never change).
        if self.device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True
        self._unchecked_losses = []

    def resolution_hint(self, resolution: int) -> str:
        """The config key that sets the full-image resolution (subclasses with patches override it)."""
        return f"model.init_args.net.init_args.img_resolution: {resolution}"

    def global_batch_size(self) -> int:
        """Images per optimizer step over all ranks and accumulation rounds (the schedule counts images)."""
        if self._global_batch_size is not None:
            return self._global_batch_size
        per_rank = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None) or 1
        return per_rank * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._global_batch_size = (batch["image"].shape[0] * self.trainer.world_size
                                   * self.trainer.accumulate_grad_batches)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        # EDM2 re-seeds the noise every step, so a resumed run draws what the uninterrupted run would have.
        round_in_step = batch_idx % self.trainer.accumulate_grad_batches
        seed = ((self.hparams.noise_seed * 1_000_003 + self.global_step) * 1009 + round_in_step) * 997 + self.global_rank
        generator = torch.Generator(device=images.device).manual_seed(seed % 2**63)
        loss = self.per_image_loss(batch, generator).mean()  # EDM2: sum over C x H x W, mean over the batch
        per_element = loss.detach() / images[0].numel()  # comparable across resolutions
        self.log("train/loss", per_element)  # a device tensor: the logger reads it every log_every_n_steps
        self._unchecked_losses.append((self.global_step, batch_idx, list(batch.get("key", [])[:4]), per_element))
        if len(self._unchecked_losses) >= self.loss_check_interval():
            self.log("loss", self.check_losses(), prog_bar=True, logger=False)  # a host tensor: the bar never syncs
        return loss

    def loss_check_interval(self) -> int:
        """Batches between host reads of the loss: every batch on the CPU (free), else every logging interval."""
        return 1 if self.device.type == "cpu" else max(1, self.trainer.log_every_n_steps)

    def check_losses(self) -> torch.Tensor:
        """Read the losses of the batches since the last check (one host sync) and raise at the first non-finite
        one; returns their mean (a host tensor)."""
        if not self._unchecked_losses:
            return torch.tensor(float("nan"))
        pending, self._unchecked_losses = self._unchecked_losses, []
        values = torch.stack([loss for *_, loss in pending]).float().cpu()
        finite = torch.isfinite(values)
        if not finite.all():
            step, batch_idx, keys, _ = pending[int((~finite).nonzero()[0])]
            value = float(values[~finite][0])
            raise FloatingPointError(
                f"the training loss is {value} at global step {step} (batch {batch_idx}, first keys {keys}; found "
                f"at step {self.global_step}): the run diverged. Resume from the last checkpoint with a lower "
                f"model.init_args.lr, check the data for NaN/Inf, or try trainer.precision=32 to rule out mixed "
                f"precision")
        return values.mean()

    def on_train_end(self) -> None:
        self.check_losses()  # the last batches of the run

    def per_image_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """EDM2 loss per image `[B]` (sum over C x H x W), noise drawn from `generator`."""
        return edm2_loss(self.net, batch["image"], self.batch_labels(batch), self.hparams.P_mean, self.hparams.P_std,
                         sigma_data=getattr(self.net, "sigma_data", 0.5), generator=generator)

    def batch_labels(self, batch: dict) -> torch.Tensor:
        """The batch's network labels (encoded here from `cond`, under this model's label_scale), checked against
        the network's label_dim."""
        labels = self.encode_cond(batch["cond"])
        expected = getattr(self.net, "label_dim", labels.shape[-1])
        if labels.shape[-1] != expected:
            raise ValueError(f"the data gives {labels.shape[-1]}-dim labels but the network expects label_dim "
                             f"{expected}: match the net's label_dim to data.init_args.conditioning/grid_size")
        return labels

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # EDM2 force_finite: NaN/Inf gradient entries become 0 (an occasional bad step is skipped, not fatal).
        zero_nonfinite_([p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        force_weight_norm_(self.net)  # the paper's one change to EDM2: renormalize after every update

    def configure_optimizers(self) -> dict:
        params = list(self.net.parameters())
        fused = all(p.device.type in ("cuda", "cpu") for p in params)  # one kernel for all parameters
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr, betas=(0.9, 0.99), eps=1e-8, fused=fused or None)

        def factor(step: int) -> float:
            return learning_rate(step, self.global_batch_size(), 1.0, self.hparams.lr_decay_steps,
                                 self.hparams.lr_rampup_images)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        schedule = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}  # the LearningRateMonitor's tag
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # -- validation at fixed noise levels --

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, cond = batch["image"], batch["cond"]
        noise = self.validation_noise(batch)
        for level, sigma in enumerate(self.val_sigmas):
            denoised = self.denoise(images + sigma * noise, sigma, cond)  # the full-image denoiser
            self.val_loss.update(level, denoising_error(denoised, images, sigma, getattr(self.net, "sigma_data", 0.5)))

    def validation_noise(self, batch: dict) -> torch.Tensor:
        """One fixed standard-normal draw per held-out image, seeded by its key (independent of ranks/batching)."""
        images = batch["image"]
        keys = batch.get("key") or [str(i) for i in range(images.shape[0])]
        draws = [torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(
            self.hparams.val_seed * 1_000_003 + zlib.crc32(str(k).encode()))) for k in keys]
        return torch.stack(draws).to(images.device, images.dtype)

    def on_validation_epoch_end(self) -> None:
        per_level = self.val_loss.compute()
        metrics = {f"val/loss@{sigma:g}": value.float() for sigma, value in zip(self.val_sigmas, per_level)}
        metrics["val/loss"] = per_level.mean().float()
        self.log_dict(metrics, sync_dist=True)  # already reduced by the Metric; identical on every rank
        self.val_loss.reset()

    # -- checkpoints: record the architecture so a checkpoint rebuilds itself, and refuse a foreign one --

    def describe(self) -> dict[str, Any]:
        """Classes and arguments of this module and its network (checkpoints.architecture_record)."""
        return architecture_record(self.net, self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[ARCH_KEY] = self.describe()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        theirs = checkpoint.get(ARCH_KEY)
        ours = self.describe()
        if theirs is None:
            raise ValueError("this checkpoint was not written by an lcsbench diffusion model (it has no "
                             f"'{ARCH_KEY}' entry): resume only from checkpoints of the same experiment")
        diff = network_differences(theirs, ours)
        if diff is not None:
            raise ValueError(f"the checkpoint holds a different network ({theirs['net_class']}) than this run "
                             f"({ours['net_class']}); differing arguments (checkpoint, this run): {diff}. Resume "
                             f"with the checkpoint's own config (config.yaml next to its checkpoints/ folder)")
