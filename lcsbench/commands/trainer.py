"""`python -m lcsbench <fit|validate> --config configs/<experiment>.yaml`: LightningCLI.

Model and data are given by class path in the config (subclass mode), so any LightningModule / DataModule of
lcsbench (or of the user) can be trained from YAML; unknown keys are rejected at parse time with the list of
valid ones. Examples:

    python -m lcsbench fit --config configs/quickstart.yaml
    python -m lcsbench fit --config configs/exp1.yaml --trainer.max_steps 1000 --data.init_args.batch_size 32
    python -m lcsbench fit --config configs/exp1.yaml --ckpt_path runs/exp1/lightning_logs/version_0/checkpoints/last.ckpt

One run, one folder: a fit resumed from a checkpoint of one of the configured logger's runs
(`<save_dir>/<name>/version_N/checkpoints/*.ckpt`) continues in that `version_N` (its event files, its
`checkpoints/`, its `phema/` snapshots). Snapshots and `step=N` checkpoints there from beyond the resumed step
(written by an attempt after the checkpoint resumed from, on a trajectory the resumed run abandons) are moved to
`superseded-at-step-<step>/` beside them, out of `reconstruct-ema`'s way, and `last.ckpt` is overwritten by the
resumed run (Lightning would otherwise write `last-v1.ckpt` and leave a stale `last.ckpt`). A checkpoint from
elsewhere starts a new `version_N` (fine-tuning). A fit that fails before its first optimizer step removes the
`version_N` it created.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lcsbench.callbacks.ema import PowerFunctionEMA
from lcsbench.commands._common import snapshot_step

CHECKPOINT_STEP = re.compile(r"step=(\d+)")  # in ModelCheckpoint's default file names, epoch=E-step=N.ckpt


def checkpoint_run_folder(ckpt_path: str | None) -> Path | None:
    """The run folder (`.../version_N`) a Lightning checkpoint file was written into, or None."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):  # Lightning's names, not files
        return None
    path = Path(ckpt_path)
    if not path.is_file() or path.parent.name != "checkpoints":
        return None
    return path.resolve().parent.parent


def pin_logger_version(config, run: Path) -> bool:
    """Point the configured logger (TensorBoardLogger, CSVLogger: `save_dir`, `name`, `version`) at `run` when
    `run` is one of its version folders and no version is set. Returns whether it did."""
    logger = config.get("trainer", {}).get("logger")
    init_args = getattr(logger, "init_args", None) if logger is not None else None
    if init_args is None or "version" not in init_args or init_args.get("version") is not None:
        return False
    save_dir, name = init_args.get("save_dir"), init_args.get("name", "lightning_logs")
    if save_dir is None:
        return False
    root = Path(save_dir) / name if name else Path(save_dir)
    if root.resolve() != run.parent:
        return False
    init_args["version"] = run.name  # a string version is the folder name itself
    return True


class RunFolder(L.Callback):
    """Keeps one fit in one folder: on resume, moves aside snapshots past the resumed step; when a fresh fit
    fails before its first optimizer step, removes the run folder it created (nothing of value is in it)."""

    def __init__(self, root: Path | None, resumed: bool):
        self.root = root  # the logger's folder of runs (save_dir/name)
        self.existing = {p.name for p in root.iterdir()} if root is not None and root.is_dir() else set()
        self.resumed = resumed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.resumed:
            return
        step = trainer.global_step
        for callback in trainer.callbacks:
            if isinstance(callback, PowerFunctionEMA) and callback.snapshot_every_n_steps and trainer.is_global_zero:
                folder = Path(callback.snapshot_dir) if callback.snapshot_dir else Path(trainer.log_dir) / "phema"
                set_aside_after(step, [p for p in folder.glob("phema-*.pt") if (snapshot_step(p) or 0) > step])
            elif isinstance(callback, ModelCheckpoint) and callback.dirpath:
                folder = Path(callback.dirpath)
                last = folder / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                if last.exists():
                    callback.last_model_path = str(last)  # this run's last checkpoint: overwrite, no last-v1
                if trainer.is_global_zero:
                    set_aside_after(step, [p for p in folder.glob(f"*{callback.FILE_EXTENSION}") if p != last
                                           and int((CHECKPOINT_STEP.search(p.name) or [0, 0])[1]) > step])

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.resumed or self.root is None or trainer.global_step > 0 or not trainer.is_global_zero:
            return
        log_dir = getattr(trainer.logger, "log_dir", None)  # never raise here: it would hide the fit's error
        log_dir = Path(log_dir).resolve() if log_dir else None
        if log_dir is not None and log_dir.parent == self.root and log_dir.name not in self.existing \
                and log_dir.is_dir():
            shutil.rmtree(log_dir, ignore_errors=True)
            print(f"lcsbench fit: the run failed before its first step; removed its folder {log_dir}",
                  file=sys.stderr)


def set_aside_after(step: int, paths: list[Path]) -> None:
    """Move files of an abandoned trajectory (beyond the resumed `step`) into `superseded-at-step-<step>/`."""
    for path in paths:
        aside = path.parent / f"superseded-at-step-{step}"
        aside.mkdir(exist_ok=True)
        path.replace(aside / path.name)
    if paths:
        rank_zero_info(f"resumed at step {step}: moved {len(paths)} file(s) of later steps, written after the "
                       f"checkpoint resumed from, to {paths[0].parent / f'superseded-at-step-{step}'}")


class LcsbenchCLI(LightningCLI):
    """LightningCLI whose `fit` keeps a run in one folder (module docstring)."""

    def before_instantiate_classes(self) -> None:
        self.resumed_run = None
        if self.subcommand == "fit":
            config = self.config["fit"]
            run = checkpoint_run_folder(config.get("ckpt_path"))
            if run is not None and pin_logger_version(config, run):
                self.resumed_run = run
                print(f"lcsbench fit: resuming {config.get('ckpt_path')} in its own run folder {run}",
                      file=sys.stderr)

    def before_fit(self) -> None:
        root = getattr(self.trainer.logger, "root_dir", None)
        self.trainer.callbacks.append(RunFolder(Path(root).resolve() if root else None,
                                                resumed=self.resumed_run is not None))


def build_cli(argv: list[str] | None, run: bool = True) -> LightningCLI:
    """The LightningCLI for `argv` (subcommand first when `run`; without a subcommand when not `run`)."""
    return LcsbenchCLI(
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
