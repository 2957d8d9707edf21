"""PatchLocalDiffusion (Exp. 3) trained on real tiny CLEVR shards: patch sampling, border policy, fit, reload."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lcsbench.callbacks.ema import PowerFunctionEMA
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.models.loaders import load_denoiser
from lcsbench.models.patch import PatchLocalDiffusion
from lcsbench.nn.edm2 import Precond
from lcsbench.nn.patch import patch_label_dim

RADIUS = 2  # 32x32 images, G = 16: cells of 2 px, patches of 5 x 2 = 10 px


def patch_module(**kwargs) -> PatchLocalDiffusion:
    torch.manual_seed(0)
    net = Precond(img_resolution=10, img_channels=3, label_dim=patch_label_dim(RADIUS), model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[5], channels_per_head=16)
    defaults = dict(grid_size=16, radius=RADIUS, lr=0.01, lr_decay_steps=1000, lr_rampup_images=16,
                    val_sigmas=[0.5, 5.0])
    return PatchLocalDiffusion(net=net, **{**defaults, **kwargs})


def data(root, label_mode: str = "single") -> CLEVRDataModule:
    return CLEVRDataModule(str(root), counts="1-3", label_mode=label_mode, batch_size=4, num_workers=0,
                           steps_per_epoch=4, shuffle_buffer=8)


def first_batch(root) -> dict:
    """A training batch as the module receives it (images scaled to [-1, 1] after the transfer)."""
    datamodule = data(root)
    datamodule.setup("fit")
    return datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)


def test_training_patches_are_one_positive_and_one_negative_per_image(clevr_shards):
    module = patch_module()
    batch = first_batch(clevr_shards)
    patches, inside, labels = module.training_patches(batch, torch.Generator().manual_seed(0))
    b = batch["image"].shape[0]
    assert patches.shape == (2 * b, 3, 10, 10) and inside.shape == (2 * b, 1, 10, 10)
    subgrid_cells = patch_label_dim(RADIUS) - 2
    active = labels[:, :subgrid_cells].abs().sum(dim=1) > 0
    assert active[:b].all() and not active[b:].any()  # positives, then negatives (App. E.3)
    # the border policy: outside the image the target is 0, and the mask says where the image is
    assert torch.all(patches * (1 - inside) == 0)
    full = torch.nn.functional.pad(batch["image"], (4, 4, 4, 4))
    grid = torch.nn.functional.pad(batch["cond"].float(), (2, 2, 2, 2))
    for i in range(b):  # each positive patch is the crop around a cell whose subgrid holds a conditioner
        matches = [(r, c) for r in range(16) for c in range(16)
                   if torch.equal(full[i, :, 2 * r:2 * r + 10, 2 * c:2 * c + 10], patches[i])
                   and grid[i, r:r + 5, c:c + 5].sum() > 0]
        assert matches, f"positive patch {i} is not the crop of an active cell"


def test_noise_stays_inside_the_image(clevr_shards):
    """The network sees exactly 0 where a training patch leaves the image, as at inference."""
    module = patch_module()
    seen = []
    hook = module.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    batch = first_batch(clevr_shards)
    batch["cond"] = torch.zeros_like(batch["cond"])
    batch["cond"][:, 0, 0] = 1  # the positive patches lie in the top-left corner, most reach outside
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    module.per_image_loss(batch, generator)
    hook.remove()
    _, inside, _ = module.training_patches(batch, generator.set_state(state))
    noisy = seen[0]
    outside = inside.expand_as(noisy) == 0
    assert outside.any() and torch.all(noisy[outside] == 0)
    assert (noisy[~outside] != 0).float().mean() > 0.99  # noise everywhere else


def test_short_cpu_fit_validates_on_full_images_and_reloads(clevr_shards, tmp_path):
    module = patch_module()
    ema = PowerFunctionEMA(sigma_rels=[0.05], snapshot_every_n_steps=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
                        val_check_interval=6, check_val_every_n_epoch=None, callbacks=[ema], default_root_dir=str(tmp_path))
    before = [p.detach().clone() for p in module.net.parameters()]
    trainer.fit(module, data(clevr_shards))
    assert trainer.global_step == 6
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters()))
    assert trainer.callback_metrics["train/negative_patch_rate"] == 1.0
    ckpt = tmp_path / "patch.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = load_denoiser(ckpt)
    assert isinstance(reloaded, PatchLocalDiffusion) and reloaded.local.radius == RADIUS
    x = torch.randn(2, 3, 32, 32)
    cond = torch.zeros(2, 16, 16)
    cond[:, 4, 9] = 1
    with torch.no_grad():
        d = reloaded.denoiser(x, torch.tensor(1.0), cond)
        far = cond.clone()
        far[:, 15, 0] = 1  # outside the 5x5-cell patch of cell (4, 9)
        d_far = reloaded.denoiser(x, torch.tensor(1.0), far)
    assert d.shape == x.shape and torch.isfinite(d).all()
    assert torch.equal(d[:, :, 8:10, 18:20], d_far[:, :, 8:10, 18:20])  # conditional locality survives training



def test_data_that_can_label_no_object_is_refused_before_training(clevr_shards, tmp_path):
    # drop_one names nothing in a 1-object scene: no positive patch (App. E.3); on a GPU the per-batch check is a
    # device-side assertion, so the model refuses such data up front
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"counts \[1, 2, 3\] with label_mode 'drop_one' can label none"):
        trainer.fit(patch_module(), data(clevr_shards, label_mode="drop_one"))
