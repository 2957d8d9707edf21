"""Helper of tests/test_datamodule_ddp.py (not a test): a 2-rank CPU DDP fit (gloo) over CLEVRDataModule.

Each rank records the sample keys of every training step and validation pass and writes them to
OUT/rank{r}.json at the end of fit. Lightning's DDP launcher re-runs this script for rank 1.
usage: python tests/ddp_datamodule_run.py ROOT OUT
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import lightning as L
import torch

from lcsbench.data import CLEVRDataModule

STEPS_PER_EPOCH, EPOCHS, NUM_WORKERS, BATCH_SIZE = 3, 2, 2, 4


class KeyRecorder(L.LightningModule):
    """A one-layer model (so DDP has gradients to synchronise) that records what each rank sees."""

    def __init__(self, label_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(label_dim, 1)
        self.train_keys: list[list[str]] = []
        self.val_keys: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.train_keys.append(list(batch["key"]))
        prediction = self.net(batch["label"]).squeeze(-1)
        return (prediction - batch["image"].mean(dim=(1, 2, 3))).pow(2).mean()

    def on_validation_epoch_start(self) -> None:
        self.val_keys.append([])

    def validation_step(self, batch, batch_idx):
        self.val_keys[-1] += list(batch["key"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_fit_end(self) -> None:
        out = Path(sys.argv[2]) / f"rank{self.global_rank}.json"
        out.write_text(json.dumps({"rank": self.global_rank, "world_size": self.trainer.world_size,
                                   "global_step": self.global_step, "train_keys": self.train_keys,
                                   "val_keys": self.val_keys}))


def main() -> None:
    root, out = sys.argv[1], Path(sys.argv[2])
    # A full-suite run once hung here (killed by the test at 240 s, not reproduced in 7 reruns): if it hangs
    # again, every rank prints where its threads wait before the test kills it.
    faulthandler.dump_traceback_later(200, exit=False)
    out.mkdir(parents=True, exist_ok=True)
    data = CLEVRDataModule(root, counts="1-3", batch_size=BATCH_SIZE, num_workers=NUM_WORKERS,
                           steps_per_epoch=STEPS_PER_EPOCH, shuffle_buffer=8, val_batch_size=2, seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=EPOCHS, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out))
    trainer.fit(KeyRecorder(data.label_dim), datamodule=data)


if __name__ == "__main__":
    main()
