"""Lightning's noise filtered by lcsbench.callbacks.noise (issue 35 item 4), on a real Lightning fit.

The same small fit (a linear model, a few steps, a TensorBoard logger) runs in a fresh interpreter twice: without
the filters its output carries Lightning's litlogger tip and torch's LeafSpec deprecation (so the test notices the
day upstream stops printing them and the filters can go), with them it carries neither, while a real warning
from the same fit still shows. tests/test_tensorboard.py checks the same on `python -m lcsbench fit`'s output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FIT = """
import sys, warnings
import lightning as L
import torch
if sys.argv[1] == "quiet":
    from lcsbench.callbacks.noise import quiet_lightning_noise
    quiet_lightning_noise()

class Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        warnings.warn("a real warning of the run", UserWarning)
        return self.layer(batch[0]).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=2)
logger = L.pytorch.loggers.TensorBoardLogger(sys.argv[2])
L.Trainer(max_steps=3, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False).fit(Linear(), data)
"""


def fit_output(mode: str, folder: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", FIT, mode, str(folder)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_the_filters_remove_lightnings_noise_and_keep_real_warnings(tmp_path):
    noisy = fit_output("noisy", tmp_path / "noisy")
    assert "litlogger" in noisy and "LeafSpec" in noisy, noisy[-3000:]  # upstream still prints both
    quiet = fit_output("quiet", tmp_path / "quiet")
    assert "litlogger" not in quiet and "LeafSpec" not in quiet, quiet[-3000:]
    assert "a real warning of the run" in quiet


def test_filtering_twice_adds_one_filter():
    import logging

    from lcsbench.callbacks.noise import RANK_ZERO_LOGGERS, quiet_lightning_noise

    quiet_lightning_noise()
    before = [len(logging.getLogger(name).filters) for name in RANK_ZERO_LOGGERS]
    quiet_lightning_noise()
    assert [len(logging.getLogger(name).filters) for name in RANK_ZERO_LOGGERS] == before
