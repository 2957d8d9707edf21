"""The global batch is the config's (EDM2: 2048 images per optimizer step) on any number of ranks, and training
images travel to the device as uint8 (issue 24)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lcsbench.data.datamodule import CLEVRDataModule, device_batches
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.nn.edm2 import Precond


@pytest.mark.parametrize("world, per_device, rounds", [(1, 256, 8), (2, 256, 4), (8, 256, 1), (16, 128, 1),
                                                       (32, 64, 1)])
def test_device_batches_keep_edm2s_global_batch(world, per_device, rounds):
    assert device_batches(2048, world, 256) == (per_device, rounds)
    assert per_device * world * rounds == 2048


def test_device_batches_refuse_a_global_batch_that_does_not_split():
    with pytest.raises(ValueError, match="does not split evenly over 3 rank"):
        device_batches(2048, 3, 256)
    assert device_batches(2048, 2, 256, rounds=8) == (128, 8)  # rounds chosen with trainer.accumulate_grad_batches
    with pytest.raises(ValueError, match="drop trainer.accumulate_grad_batches"):
        device_batches(2048, 2, 256, rounds=3)
    assert device_batches(7, 1, 2) == (1, 7)  # a prime global batch still splits, one image per round
    with pytest.raises(ValueError, match="need global_batch_size, world size and batch_size >= 1"):
        CLEVRDataModule("unused", global_batch_size=0, batch_size=2)  # refused when the config is parsed


def simulated_trainer(world: int) -> L.Trainer:
    """A Trainer set up for `world` CPU ranks (DDP), not started: its world size is what a real launch has."""
    return L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.mark.parametrize("world", [1, 2, 8])
def test_every_world_size_trains_with_the_configs_global_batch(clevr_shards, world):
    data = CLEVRDataModule(str(clevr_shards), global_batch_size=2048, batch_size=256, num_workers=0,
                           steps_per_epoch=5, shuffle_buffer=8)
    trainer = simulated_trainer(world)
    assert trainer.world_size == world
    data.trainer = trainer
    data.setup("fit")
    assert data.batch_size * trainer.world_size * trainer.accumulate_grad_batches == 2048
    assert data.batch_size <= 256 and data.accumulation == trainer.accumulate_grad_batches
    assert len(data.train_dataloader()) == 5 * trainer.accumulate_grad_batches  # an epoch = 5 optimizer steps


def test_without_a_global_batch_every_rank_takes_batch_size(clevr_shards):
    data = CLEVRDataModule(str(clevr_shards), batch_size=6, num_workers=0)  # the cpu/smoke configs' key
    data.trainer = simulated_trainer(2)
    data.setup("fit")
    assert data.batch_size == 6 and data.trainer.accumulate_grad_batches == 1


class Recording(EDM2Diffusion):
    """The real module, noting what each training step receives."""

    def training_step(self, batch, batch_idx):
        self.seen.append((batch["image"].dtype, batch["image"].device.type, float(batch["image"].min()),
                          float(batch["image"].max())))
        return super().training_step(batch, batch_idx)


class TransferSpy(CLEVRDataModule):
    """The real DataModule, noting the dtype of the images handed to the host-to-device transfer."""

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.transferred.append(batch["image"].dtype)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def test_a_fit_steps_on_the_global_batch_with_uint8_images_scaled_on_the_device(clevr_shards, tmp_path):
    torch.manual_seed(0)
    net = Precond(img_resolution=32, img_channels=3, label_dim=256, model_channels=8, channel_mult=[1],
                  num_blocks=1, attn_resolutions=[], channels_per_head=8)
    module = Recording(net, lr=0.01, lr_decay_steps=100, lr_rampup_images=16)
    module.seen = []
    data = TransferSpy(str(clevr_shards), global_batch_size=8, batch_size=4, num_workers=0, steps_per_epoch=2,
                       shuffle_buffer=8)
    data.transferred = []
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, data)
    assert trainer.global_step == 3 and trainer.accumulate_grad_batches == 2
    assert len(module.seen) == 6  # 2 rounds of 4 images per optimizer step
    assert module.global_batch_size() == 8
    assert set(data.transferred) == {torch.uint8}
    assert all(dtype == torch.float32 and low >= -1 and high <= 1 for dtype, _, low, high in module.seen)
