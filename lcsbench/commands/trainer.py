"""`python -m lcsbench <fit|validate> --config configs/<experiment>.yaml`: LightningCLI.

Model and data are given by class path in the config (subclass mode), so any LightningModule / DataModule of
lcsbench (or of the user) can be trained from YAML; unknown keys are rejected at parse time with the list of
valid ones. Examples:

    python -m lcsbench fit --config configs/quickstart.yaml
    python -m lcsbench fit --config configs/exp1.yaml --trainer.max_steps 1000 --data.init_args.batch_size 32
    python -m lcsbench fit --config configs/exp1.yaml --ckpt_path runs/exp1/lightning_logs/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI


def build_cli(argv: list[str] | None, run: bool = True) -> LightningCLI:
    """The LightningCLI for `argv` (subcommand first when `run`; without a subcommand when not `run`)."""
    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # models own their optimizer and schedule (EDM2: Adam + 1/sqrt(t))
        save_config_kwargs={"overwrite": True},  # resuming into the same log dir rewrites config.yaml
        args=argv,
        run=run,
    )


def main(argv: list[str]) -> int:
    argv = list(argv)
    # LightningCLI warns when given args while sys.argv also holds arguments: let it read sys.argv itself when
    # they are the same (python -m lcsbench fit ...).
    build_cli(None if argv == sys.argv[1:] else argv)
    return 0
