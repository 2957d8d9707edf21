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

Checkpoints are data, never code (issue 25): every checkpoint Lightning loads for `fit`/`validate --ckpt_path`
goes through `checkpoints.read_checkpoint` (weights only); a URL is refused unless `--allow_remote_ckpt true` is
given, and is then downloaded and read weights-only too. The model is the configured one: a checkpoint's
`hyper_parameters._class_path` is never imported (one that differs from the config is refused, naming both), its
network must match the configured network, and configured hyperparameters win over the checkpoint's (each
difference is printed, and a changed `lr` also rescales the restored optimizer and scheduler states).

Threads and progress (issue 27): torch's intra-op threads are set from the cores the process may use (CPU affinity,
cgroup quota, less the cores other processes keep busy when the fit starts; split between DDP ranks on the node),
or from `--threads` / OMP_NUM_THREADS, and the choice is printed once. DataLoader workers run one torch thread each
(torch's DataLoader sets it). When stdout is not a terminal (a log file, SLURM), Lightning's bar gives way to a
progress line every 30 s with step, total, rate and ETA (callbacks/progress.py); on a terminal the Rich bar names
the steps of each epoch out of the fit's total. A progress bar given in the config's callbacks is left alone.
A TensorBoardLogger is made with `default_hp_metric=False`: lcsbench has no single hyperparameter metric, and
the -1 placeholder Lightning would log under HPARAMS says nothing.

One writer per run folder (issue 36): rank 0 holds `<run>/fit.lock` (flock, with its pid and host) while it trains;
a second fit into the same folder is refused with a line naming the first one's pid. `--ckpt_path` given an
evaluation file (exported weights, a snapshot) says what the file is and what to pass instead; a resume whose data
settings differ from the run's config.yaml (e.g. another global batch) says so, since config.yaml is rewritten while
hparams.yaml keeps the first start's values.

On a cluster (issue 34; docs/cluster.md): under SLURM, Lightning's preemption checkpoint goes to the run's own
`slurm-job-<id>/` and only a requeue of the same job resumes from it (a new job submitted from the same folder starts
from step 0); before the process group forms every rank checks that rank 0's address resolves and answers within
LCSBENCH_RENDEZVOUS_TIMEOUT_S (lcsbench/slurm.py). With gradient accumulation an integer `val_check_interval` counts
optimizer steps (Lightning counts batches; log_every_n_steps and the callbacks' every_n_steps count steps already),
and a CPU run whose global batch takes many rounds per step is told the cost and how to change it.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from jsonargparse import Namespace
from jsonargparse.typing import import_object
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lcsbench import slurm
from lcsbench.callbacks.ema import PowerFunctionEMA
from lcsbench.callbacks.noise import quiet_lightning_noise
from lcsbench.callbacks.progress import ProgressLines, StepsRichProgressBar
from lcsbench.checkpoints import ARCH_KEY, JUDGE_ARCH_KEY, check_class_path, read_checkpoint
from lcsbench.commands._common import snapshot_step, thread_count
from lcsbench.data.locks import hold_or_name_holder

CHECKPOINT_STEP = re.compile(r"step=(\d+)")  # in ModelCheckpoint's default file names, epoch=E-step=N.ckpt
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself
REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # http://, https://, s3://, file://, ...
REMOTE_FLAG = "--allow_remote_ckpt"
THREADS_FLAG = "--threads"
PROGRESS_EVERY_SECONDS = 30.0  # a progress line this often when stdout is not a terminal


# --- checkpoints are read as data (issue 25 items 1, 2, 4) ---------------------------------------------------------


def is_remote(ckpt_path: object) -> bool:
    return isinstance(ckpt_path, str) and REMOTE.match(ckpt_path) is not None


def resume_hint(ckpt_path: str | Path) -> str:
    """What to resume from instead of `ckpt_path`: the other checkpoints beside it, latest step first."""
    path = Path(ckpt_path)
    others = [p for p in path.parent.glob("*.ckpt") if p.name != path.name] if path.parent.is_dir() else []
    others.sort(key=lambda p: int((CHECKPOINT_STEP.search(p.name) or [0, -1])[1]), reverse=True)
    if not others:
        return "pass a checkpoint written by `python -m lcsbench fit` (<run>/checkpoints/last.ckpt or step=N.ckpt)"
    return (f"resume from another checkpoint of the run instead, e.g. --ckpt_path {others[0]} (beside it: "
            f"{', '.join(p.name for p in others[:6])})")


def fetch_remote_checkpoint(url: str, folder: Path) -> Path:
    """Download `url` (http(s) with urllib, other schemes with fsspec) into `folder`; the caller reads the copy
    weights-only like any local file."""
    target = folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", url.rsplit("/", 1)[-1])[:100] or "remote.ckpt")
    if url.lower().startswith(("http://", "https://")):
        source = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the user opted in to this URL
    else:
        import fsspec

        source = fsspec.open(url, "rb").open()
    with source, open(target, "wb") as copy:
        shutil.copyfileobj(source, copy, 1 << 20)
    return target


class WeightsOnlyCheckpointIO(CheckpointIO):
    """The strategy's checkpoint IO with one change: loading goes through lcsbench's reader (weights only, tensors
    and plain containers), and a URL loads only from the copy downloaded after the user opted in."""

    def __init__(self, inner: CheckpointIO, remote_copies: dict[str, Path]):
        self.inner = inner  # saves and removes checkpoints as before
        self.remote_copies = remote_copies  # URL -> downloaded file, filled by LcsbenchCLI._parse_ckpt_path

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        local = self.remote_copies.get(str(path), path)
        if is_remote(str(local)):
            raise ValueError(f"checkpoint {path} is a URL: lcsbench loads remote checkpoints only when asked with "
                             f"{REMOTE_FLAG} true (and then weights only); or download it and pass the file")
        return read_checkpoint(local, resume_hint(local), map_location=map_location or "cpu")

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def plain(value: Any) -> Any:
    """A config value as plain data (jsonargparse Namespaces as dicts, tuples as lists), for comparing."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def differing(theirs: dict, ours: dict) -> dict[str, tuple[Any, Any]]:
    """The keys both dicts hold with different values: {key: (theirs, ours)}."""
    return {k: (theirs[k], ours[k]) for k in sorted(set(theirs) & set(ours)) if plain(theirs[k]) != plain(ours[k])}


def check_model_class(hparams: dict, model: dict, source: str) -> None:
    """The checkpoint's `_class_path` (LightningCLI records it) must be the configured model class; a foreign
    one is refused before anything imports it (issue 25 item 2)."""
    theirs, ours = hparams.get("_class_path"), model.get("class_path")
    if theirs is None or theirs == ours:
        return
    check_class_path(theirs, f"{source} (hyper_parameters._class_path)")
    raise ValueError(f"{source} was trained as {theirs} but the config builds {ours}: a checkpoint resumes only into "
                     f"its own model class; pass the run's own config (config.yaml beside its checkpoints/ folder)")


def check_network(payload: dict, model: dict, source: str) -> None:
    """The checkpoint's network (its architecture record) must be the configured one: a colour network under a
    location config, or another width, is refused here, before any data is read."""
    record = payload.get(ARCH_KEY) or payload.get(JUDGE_ARCH_KEY)
    net = (model.get("init_args") or {}).get("net")
    if not isinstance(record, dict) or not isinstance(net, dict) or not isinstance(record.get("net_config"), dict):
        return
    differences = differing(record["net_config"], net.get("init_args") or {})
    if record.get("net_class") not in (None, net.get("class_path")):
        differences["class_path"] = (record.get("net_class"), net.get("class_path"))
    if differences:
        listed = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} configured" for k, a, b in
                           ((k, *v) for k, v in differences.items()))
        raise ValueError(f"{source} holds another network than the config builds ({listed}): a checkpoint resumes "
                         f"only into the network it was trained as; pass the run's own config (config.yaml beside "
                         f"its checkpoints/ folder)")


class ConfiguredLearningRate(L.Callback):
    """On resume the configured `lr` wins (issue 25 item 4): the optimizer's param groups and the scheduler's
    `base_lrs` restored from a checkpoint carry the lr it was trained with, so they are rescaled by
    configured / trained before Lightning loads them (lcsbench's schedules are proportional to `lr`)."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        trained = (checkpoint.get("hyper_parameters") or {}).get("lr")
        configured = pl_module.hparams.get("lr")
        if not all(isinstance(v, (int, float)) and v > 0 for v in (trained, configured)) or trained == configured:
            return
        ratio = configured / trained
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                for key in ("lr", "initial_lr"):
                    if isinstance(group.get(key), (int, float)):
                        group[key] *= ratio
        for state in checkpoint.get("lr_schedulers", []):
            for key in ("base_lrs", "_last_lr"):
                if isinstance(state.get(key), list):
                    state[key] = [v * ratio for v in state[key]]


def refuse_weights_file(payload: dict, source: str) -> None:
    """`--ckpt_path` takes a Lightning checkpoint (weights, optimizer, step); an evaluation file (exported EMA
    weights, a snapshot, a reconstruction) has only weights, and is refused with what it is (issue 36)."""
    if "state_dict" in payload:  # what every Lightning checkpoint holds; the files below hold `net_state`
        return
    kind, step = payload.get("kind"), payload.get("step")
    at = f" at step {step}" if isinstance(step, int) else ""
    what = (f"a {kind} file (weights{at}, no optimizer state or training step)" if isinstance(kind, str)
            else "not a Lightning training checkpoint (it has no state_dict)")
    raise ValueError(f"--ckpt_path {source} is {what}: fit and validate take only a checkpoint that fit wrote "
                     f"(<run>/checkpoints/last.ckpt or step=N.ckpt); to evaluate these weights pass the file as "
                     f"--ckpt to sample, lengthgen or locality")


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


# --- one writer per run folder; SLURM's preemption checkpoints in the run's own folder (issues 34, 36) -------------

LOCK_NAME = "fit.lock"  # <run folder>/fit.lock: flock'ed by the fit writing the folder, with its pid and host
_held_locks: dict[Path, Any] = {}  # run folder -> its open lock file (a flock lasts as long as its file is open)


def rank_zero_by_env(env=os.environ) -> bool:
    """Whether this process is global rank 0 before the process group exists: torchrun sets RANK, srun
    SLURM_PROCID, Lightning's own launcher LOCAL_RANK in the ranks it starts (none of them: a single process)."""
    return all(env.get(name, "0") in ("", "0") for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def lock_run_folder(run: Path) -> None:
    """Take `run`/fit.lock for this process (rank 0) for as long as it lives, or refuse naming the holder: two fits
    writing one run folder interleave their checkpoints, snapshots and event files (issue 36 item 1)."""
    run = run.resolve()
    if run in _held_locks:  # this process resuming its own run (a notebook, a test): the same writer
        return
    handle = hold_or_name_holder(run / LOCK_NAME, f"pid {os.getpid()} on {socket.gethostname()}, since "
                                                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    if isinstance(handle, str):
        holder = handle or "a process that wrote no pid"
        raise ValueError(f"lcsbench fit: {run} is being written by another fit ({holder}): two writers would "
                         f"interleave its checkpoints and event files; wait for that fit to end or stop it, or "
                         f"train into another run folder (another --trainer.logger.init_args.version)")
    _held_locks[run] = handle


def release_run_folders() -> None:
    """Close this process's run-folder locks (the fit has ended; the lock files stay, naming the last writer)."""
    while _held_locks:
        _held_locks.popitem()[1].close()


def logger_runs(config) -> Path | None:
    """The configured logger's folder of runs (save_dir/name), where its version_N folders go; None without one."""
    logger = config.get("trainer", {}).get("logger")
    init_args = getattr(logger, "init_args", None) if logger is not None else None
    if init_args is None or init_args.get("save_dir") is None:
        return None
    name = init_args.get("name", "lightning_logs")
    return (Path(init_args["save_dir"]) / name if name else Path(init_args["save_dir"])).resolve()


def under_slurm() -> bool:
    """A rank started by srun inside a SLURM job (Lightning then uses its SLURM environment and requeue)."""
    return slurm.in_slurm_job() and SLURMEnvironment.detect()


class ClusterRun(L.Callback):
    """Under SLURM, Lightning writes its preemption checkpoint (`hpc_ckpt_N.ckpt`, on the requeue signal) into
    `trainer.default_root_dir` and restores the newest one found there in any later job: by default the folder the
    job was submitted from, so a new job started from another job's weights (issue 34). Here that folder is the
    run's own `slurm-job-<id>/`, which only a requeue of the same job finds again (lcsbench/slurm.py)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run = trainer.log_dir  # rank 0's, broadcast: the folder every rank's checkpoints go to
        if run is None:
            return
        folder = Path(run) / slurm.job_folder_name()
        trainer._default_root_dir = str(folder)  # noqa: SLF001 - where Lightning's SLURM handler saves hpc_ckpt_N
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)  # marks the run as this job's, for its requeue


class StepIntervals(L.Callback):
    """With gradient accumulation, intervals mean optimizer steps (issue 34 item 4): Lightning counts an integer
    `val_check_interval` in batches (log_every_n_steps and lcsbench's every_n_steps already count optimizer steps),
    so it is scaled by the rounds here, once the data module has derived them; and a CPU run whose global batch
    takes many rounds per step is said before training starts, with how to change it."""

    CPU_ROUNDS_SAID = 8  # rounds per optimizer step from which a CPU run is told what it costs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rounds = trainer.accumulate_grad_batches
        interval = trainer.val_check_interval
        if rounds > 1 and isinstance(interval, int):
            trainer.val_check_interval = interval * rounds
            rank_zero_info(f"lcsbench fit: val_check_interval {interval} counts optimizer steps: validation every "
                           f"{interval} step(s) = {interval * rounds} batches ({rounds} accumulation rounds a step)")
        data = trainer.datamodule
        global_batch, batch = getattr(data, "global_batch_size", None), getattr(data, "batch_size", None)
        if rounds >= self.CPU_ROUNDS_SAID and global_batch and batch and trainer.strategy.root_device.type == "cpu":
            rank_zero_info(f"lcsbench fit: on CPU the global batch {global_batch} takes {rounds} rounds of {batch} "
                           f"image(s) on each of {trainer.world_size} rank(s) per optimizer step, so a step costs "
                           f"{rounds}x a round; for a short CPU run pass --data.init_args.global_batch_size "
                           f"{batch * trainer.world_size} (one round a step), or null (batch_size per rank)")


def resumed_data_differences(run: Path, data: Any) -> list[str]:
    """The data settings in which this fit differs from the run's saved config.yaml, as lines to say: resuming
    rewrites config.yaml while hparams.yaml keeps the first start's values (issue 36)."""
    saved = run / "config.yaml"
    if not saved.is_file() or data is None:
        return []
    import yaml

    try:
        before = ((yaml.safe_load(saved.read_text()) or {}).get("data") or {}).get("init_args") or {}
    except (yaml.YAMLError, AttributeError):
        return []
    now = plain(data).get("init_args") or {}
    return [f"lcsbench fit: resuming with data {key} = {ours!r}; {run} was trained with {theirs!r} (config.yaml "
            f"now records {ours!r}, hparams.yaml keeps {theirs!r}, the run's first start)"
            for key, (theirs, ours) in differing(before, now).items()]


# --- the grid stated once (issue 26 item 3) -------------------------------------------------------------------------
# The data module owns the conditioning kind and the grid G; LightningCLI links copy them into the model and compute
# the net's label width from them, so a config states G once (under data). A link whose source is missing from the
# chosen class is skipped by jsonargparse: `model.init_args.label_scale`, which only the label-conditioned diffusion
# models have, keeps the conditioning links off the judge (which takes the grid only).
DATA_GRID, DATA_CONDITIONING = "data.init_args.grid_size", "data.init_args.conditioning"
LABELLED_MODEL = "model.init_args.label_scale"


def refuse_contradiction(key: str, given: Any, linked: Any, default: Any, sources: str) -> None:
    """A value the config gives for a linked key must be the linked one (or the class default, which the link
    replaces): a contradiction is refused at parse time, never silently overwritten."""
    if given is not None and given != linked and given != default:
        raise ValueError(f"{key}: {given!r} contradicts {sources} ({linked!r}): the data states it once; remove "
                         f"{key} from the config (the link sets it to {linked!r})")


def parameter_default(class_path: str, name: str) -> Any:
    parameter = inspect.signature(import_object(class_path)).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def linked_grid_size(grid_size: int, model_class: str, model: Namespace) -> int:
    refuse_contradiction("model.init_args.grid_size", model.get("grid_size"), grid_size,
                         parameter_default(model_class, "grid_size"), DATA_GRID)
    return grid_size


def linked_conditioning(conditioning: str, model_class: str, model: Namespace, _labelled: Any) -> str:
    refuse_contradiction("model.init_args.conditioning", model.get("conditioning"), conditioning,
                         parameter_default(model_class, "conditioning"), DATA_CONDITIONING)
    return conditioning


def linked_label_dim(conditioning: str, grid_size: int, model_class: str, model: Namespace, _labelled: Any) -> int:
    """The net's label width from the data and the model class's rule (EDM2Diffusion.network_label_dim: G^2 or 8
    colours; PatchLocalDiffusion: (2r+1)^2 + 2)."""
    rule = getattr(import_object(model_class), "network_label_dim", None)
    given = model.get("net.init_args.label_dim") if isinstance(model.get("net"), Namespace) else None
    if rule is None:  # a user's model without the rule: its config states label_dim itself
        if given is None:
            raise ValueError(f"{model_class} has no network_label_dim(conditioning, grid_size, init_args) rule: "
                             f"set model.init_args.net.init_args.label_dim in the config")
        return given
    expected = rule(conditioning, grid_size, model)
    refuse_contradiction("model.init_args.net.init_args.label_dim", given, expected, None,
                         f"{DATA_CONDITIONING} {conditioning!r} and {DATA_GRID} {grid_size} for "
                         f"{model_class.rsplit('.', 1)[-1]}")
    return expected


def link_grid_and_conditioning(parser) -> None:
    parser.link_arguments((DATA_GRID, "model.class_path", "model.init_args"), "model.init_args.grid_size",
                          compute_fn=linked_grid_size, apply_on="parse")
    parser.link_arguments((DATA_CONDITIONING, "model.class_path", "model.init_args", LABELLED_MODEL),
                          "model.init_args.conditioning", compute_fn=linked_conditioning, apply_on="parse")
    parser.link_arguments((DATA_CONDITIONING, DATA_GRID, "model.class_path", "model.init_args", LABELLED_MODEL),
                          "model.init_args.net.init_args.label_dim", compute_fn=linked_label_dim, apply_on="parse")


class LcsbenchCLI(LightningCLI):
    """LightningCLI whose `fit` keeps a run in one folder and reads checkpoints as data (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.remote_copies: dict[str, Path] = {}  # URL -> its download, for WeightsOnlyCheckpointIO
        super().__init__(*args, **kwargs)

    def _add_subcommands(self, parser, **kwargs: Any) -> None:
        """`usage: python -m lcsbench fit ...` (jsonargparse names a subcommand `<prog> [options] fit`)."""
        super()._add_subcommands(parser, **kwargs)
        for name, subparser in getattr(parser._subcommands_action, "_name_parser_map", {}).items():
            subparser.prog = f"{parser.prog} {name}"

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(REMOTE_FLAG, type=bool, default=False,
                            help="allow --ckpt_path to be a URL (it is downloaded and read weights only)")
        parser.add_argument(THREADS_FLAG, type=Optional[int], default=None,
                            help="torch intra-op threads per process (default: OMP_NUM_THREADS if set, else the "
                                 "usable cores less those busy with other processes, split between DDP ranks)")
        link_grid_and_conditioning(parser)

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's, which loads URLs with pickle and lets the checkpoint's hyperparameters (and its
        `_class_path`, imported as given) override the config. Here the checkpoint is read weights-only, checked
        against the configured model, and the config wins."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
            return
        local = ckpt_path
        if is_remote(ckpt_path):
            if not config.get(REMOTE_FLAG.lstrip("-")):
                raise ValueError(f"--ckpt_path {ckpt_path} is a URL: lcsbench does not load remote checkpoints "
                                 f"unless asked ({REMOTE_FLAG} true; they are then read weights only), since a "
                                 f"checkpoint from elsewhere may be crafted; or download it and pass the file")
            folder = Path(tempfile.mkdtemp(prefix="lcsbench-remote-ckpt-"))
            atexit.register(shutil.rmtree, folder, True)
            local = self.remote_copies[ckpt_path] = fetch_remote_checkpoint(ckpt_path, folder)
        payload = read_checkpoint(local, resume_hint(local), mmap=True)
        refuse_weights_file(payload, ckpt_path)
        model = plain(config.get("model"))
        hparams = payload.get("hyper_parameters")
        hparams = hparams if isinstance(hparams, dict) else {}
        check_model_class(hparams, model, ckpt_path)
        check_network(payload, model, ckpt_path)
        if subcommand == "fit":
            configured = model.get("init_args") or {}
            hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
            for key, (theirs, ours) in differing(hparams, configured).items():
                print(f"lcsbench fit: resuming with model {key} = {ours!r} as configured; {ckpt_path} was trained "
                      f"with {theirs!r}", file=sys.stderr)

    def protect_checkpoint_loading(self) -> None:
        strategy = self.trainer.strategy
        if not isinstance(strategy.checkpoint_io, WeightsOnlyCheckpointIO):
            strategy.checkpoint_io = WeightsOnlyCheckpointIO(strategy.checkpoint_io, self.remote_copies)

    def before_validate(self) -> None:
        self.protect_checkpoint_loading()
        self.set_threads()

    def set_threads(self) -> None:
        """Torch's intra-op threads for this process (module docstring), printed once by rank 0."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads, why = thread_count(max(1, int(self.trainer.num_devices or 1)), config.get(THREADS_FLAG.lstrip("-")))
        torch.set_num_threads(threads)
        workers = getattr(self.datamodule, "num_workers", None)
        loader = ("" if workers is None else ", data loaded in the main process" if workers == 0 else
                  f", {workers} loader worker{'s' * (workers != 1)} x 1 thread")
        say_once(f"lcsbench: {why} -> torch threads {threads}{loader}; override with OMP_NUM_THREADS or "
                 f"{THREADS_FLAG}")

    def set_progress_display(self) -> None:
        """Lightning's default bar becomes progress lines off a terminal, the steps-labelled Rich bar on one."""
        bar = self.trainer.progress_bar_callback
        if bar is None or self.configured_progress_bar or type(bar) not in (RichProgressBar, TQDMProgressBar):
            return  # no bar wanted, or the user's own
        self.trainer.callbacks.remove(bar)
        if not sys.stdout.isatty():
            self.trainer.callbacks.append(ProgressLines(every_seconds=PROGRESS_EVERY_SECONDS))
        else:
            self.trainer.callbacks.append(StepsRichProgressBar() if type(bar) is RichProgressBar else bar)

    def before_instantiate_classes(self) -> None:
        self.resumed_run = None
        config = self.config[self.subcommand] if self.subcommand else self.config
        callbacks = config.get("trainer", {}).get("callbacks") or []
        self.configured_progress_bar = any("ProgressBar" in str(getattr(c, "class_path", "") or "")
                                           for c in (callbacks if isinstance(callbacks, list) else [callbacks]))
        logger = config.get("trainer", {}).get("logger")
        init_args = getattr(logger, "init_args", None) if logger is not None else None
        if str(getattr(logger, "class_path", "")).endswith("TensorBoardLogger") and init_args is not None:
            init_args["default_hp_metric"] = False  # lcsbench logs no hp_metric: no empty -1 placeholder in HPARAMS
        if self.subcommand == "fit":
            config = self.config["fit"]
            run = checkpoint_run_folder(config.get("ckpt_path"))
            if run is not None and pin_logger_version(config, run):
                self.resumed_run = run
                print(f"lcsbench fit: resuming {config.get('ckpt_path')} in its own run folder {run}",
                      file=sys.stderr)
            elif not config.get("ckpt_path") and under_slurm() and slurm.restart_count() > 0:
                self.find_requeued_run(config)

    def find_requeued_run(self, config) -> None:
        """A job requeued by SLURM continues in the run folder its first start made (lcsbench/slurm.py)."""
        runs = logger_runs(config)
        run = slurm.requeued_run(runs) if runs is not None else None
        where = f"SLURM job {slurm.job_id()} requeued (restart {slurm.restart_count()})"
        if run is not None and pin_logger_version(config, run):
            self.resumed_run = run
            print(f"lcsbench fit: {where}: resuming in its run folder {run}", file=sys.stderr)
        else:
            print(f"lcsbench fit: {where}, but no run folder under {runs} holds {slurm.job_folder_name()}/: "
                  f"starting a new run", file=sys.stderr)

    def before_fit(self) -> None:
        self.protect_checkpoint_loading()
        # Lightning's warnings on resuming that say nothing about lcsbench's runs:
        if self.resumed_run is not None:  # the run's checkpoints/ holds its earlier ones (RunFolder sets later aside)
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        if type(self.datamodule).__module__.startswith("lcsbench."):  # a resampled stream: no position to resume
            warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the "
                                                      r"epoch ended and your dataloader is not resumable")
        root = getattr(self.trainer.logger, "root_dir", None)
        self.trainer.callbacks.append(RunFolder(Path(root).resolve() if root else None,
                                                resumed=self.resumed_run is not None))
        self.trainer.callbacks.append(ConfiguredLearningRate())
        self.trainer.callbacks.append(StepIntervals())
        if under_slurm():
            self.prepare_slurm_job()
        log_dir = getattr(self.trainer.logger, "log_dir", None) if rank_zero_by_env() else None
        run = (self.resumed_run or (Path(log_dir) if log_dir else None)) if rank_zero_by_env() else None
        if run is not None:  # rank 0's folder (another rank's logger would name the next free version)
            lock_run_folder(run)
            if self.resumed_run is not None:
                for line in resumed_data_differences(run, self.config["fit"].get("data")):
                    print(line, file=sys.stderr)
        self.set_threads()
        self.set_progress_display()

    def after_fit(self) -> None:
        release_run_folders()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # end the process group before the interpreter does: a 2-node gloo job once ended with rank 0 aborting
            # at exit ("terminate called without an active exception") after a finished fit, failing the job
            torch.distributed.destroy_process_group()

    def prepare_slurm_job(self) -> None:
        """Rank 0 reachable (or one line why not), and the job's preemption checkpoints in its run folder:
        Lightning restores one only from `default_root_dir`, here `<run>/slurm-job-<id>/` (ClusterRun)."""
        environment = getattr(self.trainer.strategy, "cluster_environment", None)  # one device: none
        if isinstance(environment, SLURMEnvironment) and environment.world_size() > 1:
            slurm.check_rank_zero(environment.main_address, environment.main_port, environment.global_rank())
        if getattr(self.trainer.logger, "log_dir", None) is None:
            return  # no run folder: Lightning's own behaviour (default_root_dir)
        run = self.resumed_run or Path(self.trainer.logger.log_dir)
        self.trainer._default_root_dir = str(run / slurm.job_folder_name())  # noqa: SLF001 - read by the restore
        self.trainer.callbacks.append(ClusterRun())
        last = run / "checkpoints" / "last.ckpt"
        if self.resumed_run is None or not last.is_file():
            return
        hpc = self.trainer._checkpoint_connector._hpc_resume_path  # noqa: SLF001 - what Lightning would restore
        if hpc is None or last.stat().st_mtime > Path(hpc).stat().st_mtime:  # requeued without the signal since
            self.config_init["fit"]["ckpt_path"] = str(last)  # (scontrol requeue): the run's newest checkpoint
            print(f"lcsbench fit: no preemption checkpoint of the job in {run} newer than {last}: resuming from it",
                  file=sys.stderr)


@rank_zero_only
def say_once(text: str) -> None:
    print(text, flush=True)


def program_name() -> str:
    """How the user called lcsbench: `python -m lcsbench`, or the `lcsbench` script's own name."""
    called = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m lcsbench" if called in ("", "-m", "__main__.py", "-c") or called.endswith(".py") else called


def build_cli(argv: list[str] | None, run: bool = True) -> LightningCLI:
    """The LightningCLI for `argv` (subcommand first when `run`; without a subcommand when not `run`)."""
    quiet_lightning_noise()  # Lightning's litlogger tip and torch's LeafSpec deprecation (callbacks/noise.py)
    return LcsbenchCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # models own their optimizer and schedule (EDM2: Adam + 1/sqrt(t))
        save_config_kwargs={"overwrite": True},  # resuming into the same log dir rewrites config.yaml
        parser_kwargs={"prog": program_name()},  # not `__main__.py` (see LcsbenchCLI._add_subcommands)
        args=argv,
        run=run,
    )


def main(argv: list[str]) -> int:
    argv = list(argv)
    # LightningCLI warns when given args while sys.argv also holds arguments: let it read sys.argv itself when
    # they are the same (python -m lcsbench fit ...).
    build_cli(None if argv == sys.argv[1:] else argv)
    return 0
