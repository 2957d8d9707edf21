"""The one reader and writer of lcsbench checkpoint records (torch only; docs/architecture.md "The checkpoint record").

Every file lcsbench writes with weights in it (a Lightning `.ckpt` from `fit`, a power-function EMA snapshot, a
`reconstruct-ema` result) carries an *architecture record*: the class paths and constructor arguments of the
network and of the module that trains it, so the file rebuilds its own model with no config beside it.

    {"net_class": "lcsbench.nn.edm2.Precond", "net_config": {...},
     "module_class": "lcsbench.models.edm2.EDM2Diffusion", "module_hparams": {...}}

Diffusion models keep it under `ARCH_KEY`, the object judge under `JUDGE_ARCH_KEY` (so neither loads as the
other), and a Lightning checkpoint keeps the power-function EMA's averages in its callback state under
`EMA_STATE_KEY`. The functions here check a file before anything is built from it and say what to do when a
check fails.

Loading never runs code from the file: payloads are read with `torch.load(weights_only=True)` (tensors and plain
containers only; a pickled object is refused), and networks and modules are rebuilt only from the classes in
`REBUILDABLE` (lcsbench's own; `register_class` adds a user's), never from whatever class path a file names.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

ARCH_KEY = "lcsbench_architecture"  # diffusion models (models/edm2.py, models/patch.py)
JUDGE_ARCH_KEY = "lcsbench_judge"  # the object judge (models/judge.py)
EMA_STATE_KEY = "PowerFunctionEMA"  # callbacks/ema.py's averages inside a Lightning checkpoint's "callbacks"
SNAPSHOT_KIND = "lcsbench-phema-snapshot"  # one EMA at one step, written during training
RECONSTRUCTION_KIND = "lcsbench-phema-reconstruction"  # a post-hoc EMA from `reconstruct-ema`
EXPORT_KIND = "lcsbench-ema-export"  # a run's EMA weights plus its training data settings (`reproduce` export)
DATA_HPARAMS_KEY = "datamodule_hyper_parameters"  # Lightning's key for the DataModule's settings
SNAPSHOT_NAME = re.compile(r"phema-(\d+)-(\d+\.\d+)\.pt$")  # PowerFunctionEMA's phema-<step>-<sigma_rel>.pt


# --- the architecture record ---------------------------------------------------------------------------------


# The classes a record may name: lcsbench's networks and modules. A file that names anything else is refused.
REBUILDABLE: set[str] = {
    "lcsbench.nn.edm2.Precond",
    "lcsbench.nn.judge.CentreHeatmapNet",
    "lcsbench.models.edm2.EDM2Diffusion",
    "lcsbench.models.patch.PatchLocalDiffusion",
    "lcsbench.models.judge.JudgeModule",
}


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_class(cls: type) -> type:
    """Allow checkpoints to rebuild `cls` (a user's own network or module); usable as a class decorator."""
    REBUILDABLE.add(class_path(cls))
    return cls


def check_class_path(path: object, source: str | Path = "a checkpoint") -> str:
    """`path` if it names a class checkpoints may rebuild (REBUILDABLE), else a ValueError; imports nothing, so a
    file's class path is checked before any module it names runs."""
    if not isinstance(path, str) or path not in REBUILDABLE:
        raise ValueError(f"{source} asks to build {path!r}, which is not one of lcsbench's networks or modules "
                         f"({sorted(REBUILDABLE)}): refused, since building it could run any code. If it is your "
                         f"own class, call lcsbench.checkpoints.register_class on it before loading")
    return path


def import_class(path: str, source: str | Path = "a checkpoint") -> type:
    """The class at `path`, if it is one checkpoints may rebuild (REBUILDABLE); else a ValueError."""
    module, _, name = check_class_path(path, source).rpartition(".")
    return getattr(importlib.import_module(module), name)


RECORD_FIELDS = {"net_class": str, "net_config": dict, "module_class": str, "module_hparams": dict}


def check_record(record: object, source: str | Path) -> dict[str, Any]:
    """`record` if it has the architecture record's four fields with their types, else a ValueError naming them."""
    if not isinstance(record, dict):
        wrong = [f"the record is a {type(record).__name__}"]
    else:
        wrong = [f"{key} is {type(record[key]).__name__}" if key in record else f"{key} is missing"
                 for key, kind in RECORD_FIELDS.items() if not isinstance(record.get(key), kind)]
    if wrong:
        expected = ", ".join(f"{key}: {kind.__name__}" for key, kind in RECORD_FIELDS.items())
        raise ValueError(f"{source} holds a malformed architecture record ({'; '.join(wrong)}; expected {expected}): "
                         f"the file is damaged or was not written by lcsbench; use a checkpoint lcsbench wrote")
    return record


def architecture_record(net: torch.nn.Module, module: Any) -> dict[str, Any]:
    """Classes and constructor arguments of `module` (with `hparams`) and its network (with `config`)."""
    config = getattr(net, "config", None)
    if config is None:
        raise TypeError(f"{type(net).__name__} has no `config` dict of its constructor arguments: give the "
                        f"network one (as nn/edm2.py Precond does) so checkpoints can rebuild it")
    return {"net_class": class_path(type(net)), "net_config": dict(config),
            "module_class": class_path(type(module)), "module_hparams": dict(module.hparams)}


def rebuild(record: dict[str, Any], source: str | Path = "a checkpoint", **overrides: Any) -> Any:
    """A fresh module and network from an architecture record (weights not loaded); `source` names the file.

    Only REBUILDABLE classes are built. Hyperparameters the module's constructor does not take are dropped
    (LightningCLI records e.g. `_class_path`); `overrides` replace recorded ones (e.g. `compile=False`).
    """
    check_record(record, source)
    net_cls = import_class(record["net_class"], source)
    module_cls = import_class(record["module_class"], source)
    accepted = inspect.signature(module_cls.__init__).parameters
    hparams = {k: v for k, v in record["module_hparams"].items() if k in accepted and k != "net"}
    try:
        net = net_cls(**record["net_config"])
        return module_cls(net=net, **{**hparams, **overrides})
    except (TypeError, ValueError) as error:  # a record whose arguments the classes do not take
        raise ValueError(f"{source}: its architecture record does not build {record['module_class']} with "
                         f"{record['net_class']} ({type(error).__name__}: {str(error).splitlines()[0]}): the file "
                         f"is damaged or was written by another lcsbench version") from None


def network_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]] | None:
    """None when two records describe the same network, else the differing arguments (theirs, ours)."""
    if theirs["net_class"] == ours["net_class"] and theirs["net_config"] == ours["net_config"]:
        return None
    keys = set(theirs["net_config"]) | set(ours["net_config"])
    return {k: (theirs["net_config"].get(k), ours["net_config"].get(k)) for k in keys
            if theirs["net_config"].get(k) != ours["net_config"].get(k)}


# --- reading files ---------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, missing_hint: str, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict:
    """The payload of an lcsbench checkpoint file, after the file-exists and payload-type checks (`mmap`: map
    the tensors from the file instead of reading them, for a glance at a large checkpoint's small fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {missing_hint}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} holds Python objects beyond tensors and plain containers, which lcsbench never "
                         f"writes and which could run code when unpickled: refused ({str(error).splitlines()[0]}). "
                         f"Load only checkpoints written by lcsbench, or re-save the weights as plain tensors"
                         ) from None
    except (EOFError, RuntimeError, KeyError, ValueError, zipfile.BadZipFile) as error:  # torch's unreadable file
        size = path.stat().st_size
        found = "is empty (0 bytes)" if size == 0 else f"({size} bytes) is truncated or not a PyTorch checkpoint"
        raise ValueError(f"{path} {found}: torch cannot read it ({type(error).__name__}: "
                         f"{(str(error).splitlines() or [''])[0][:160]}). A save or copy was cut short: copy it "
                         f"again, or {missing_hint}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not an lcsbench checkpoint (found a {type(payload).__name__})")
    return payload


def read_record(payload: dict, key: str, path: str | Path, what: str, hint: str) -> dict[str, Any]:
    """The architecture record under `key`, or a ValueError saying that `path` is not `what`, with `hint`."""
    record = payload.get(key)
    if record is None:
        raise ValueError(f"{path} is not {what}: it has no '{key}' entry (keys: {sorted(map(str, payload))[:8]}). "
                         f"{hint}")
    if not isinstance(record, dict) or "net_class" in record or key == ARCH_KEY:  # judges keep an older shape too
        check_record(record, path)
    elif not all(isinstance(record.get(field), dict) for field in ("net_config", "hparams")):
        raise ValueError(f"{path} holds a malformed '{key}' record: expected dicts 'net_config' and 'hparams' (or "
                         f"the four fields {list(RECORD_FIELDS)}); found keys {sorted(map(str, record))[:8]}")
    return record


def load_net_state(net: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load network weights (any float dtype, e.g. fp16 snapshots) after checking that every tensor is there."""
    reference = net.state_dict()
    missing = sorted(set(reference) - set(state))
    if missing:
        raise ValueError(f"{path} lacks weights for {len(missing)} tensors of the network, e.g. {missing[:3]}: it was "
                         f"written for another architecture")
    net.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items() if k in reference})


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a Lightning checkpoint was saved at (its `global_step`), without reading its tensors."""
    payload = read_checkpoint(path, "pass the last.ckpt written by `python -m lcsbench fit`", mmap=True)
    step = payload.get("global_step")
    if not isinstance(step, int):
        raise ValueError(f"{path} records no integer global_step (found {step!r}): it is not a Lightning training "
                         f"checkpoint; pass the last.ckpt written by `python -m lcsbench fit`")
    return step


# --- EMA snapshots and reconstructions (callbacks/ema.py, `reconstruct-ema`; EDM2 Sec. 3.1 and Alg. 3) ---------


def snapshot_path(directory: str | Path, step: int, sigma_rel: float) -> Path:
    """Where the snapshot of the EMA of width `sigma_rel` at optimizer step `step` goes in `directory`."""
    return Path(directory) / f"phema-{step:08d}-{sigma_rel:.3f}.pt"


def snapshot_step(path: Path) -> int | None:
    """The training step in an EMA snapshot's file name, or None when the name is not a snapshot's."""
    match = SNAPSHOT_NAME.search(path.name)
    return int(match.group(1)) if match else None


def write_snapshot(
    directory: str | Path,  # the run's snapshot folder (<log_dir>/phema)
    step: int,  # optimizer steps the average has seen
    sigma_rel: float,  # its relative width
    gamma: float,  # its power-function exponent
    run_id: str | None,  # the training run's id (None: a run older than run ids)
    net_state: dict[str, torch.Tensor],  # the averaged network weights (written as fp16, on the CPU)
    record: dict[str, Any] | None,  # the module's architecture record, when it has one
) -> Path:
    """Write one PowerFunctionEMA snapshot (SNAPSHOT_KIND), self-describing, to `snapshot_path`."""
    path = snapshot_path(directory, step, sigma_rel)
    payload = {"kind": SNAPSHOT_KIND, "step": step, "sigma_rel": sigma_rel, "gamma": gamma, "run_id": run_id,
               "net_state": {k: v.to(torch.float16).cpu() for k, v in net_state.items()}}
    if record is not None:
        payload[ARCH_KEY] = record
    return save_atomic(payload, path)


def write_reconstruction(
    path: str | Path,  # output .pt
    step: int,  # the step the average is reconstructed at
    sigma_rel: float,  # its relative width
    gamma: float,  # its power-function exponent
    net_state: dict[str, torch.Tensor],  # the combined weights
    record: dict[str, Any] | None,  # the architecture record of the snapshots
    run_id: str | None,  # the run the snapshots come from
    sources: list[str],  # the snapshot files combined
    coefficients: list[float],  # their least-squares weights
) -> Path:
    """Write a post-hoc EMA (RECONSTRUCTION_KIND) that every command takes as --ckpt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_atomic({"kind": RECONSTRUCTION_KIND, "step": step, "sigma_rel": sigma_rel, "gamma": gamma,
                        "net_state": net_state, ARCH_KEY: record, "run_id": run_id, "sources": sources,
                        "coefficients": coefficients}, path)


# --- the shipped object judge (models/judge.py, scripts/ship_judge.py) ------------------------------------------


def write_shipped_judge(path: str | Path, record: dict[str, Any], state_dict: dict[str, torch.Tensor],
                        recipe: dict) -> Path:
    """Write a judge as a small shipped file: its architecture record (under JUDGE_ARCH_KEY), its weights and
    `recipe` (how it was made and how well it counts). Plain data only."""
    return save_atomic({JUDGE_ARCH_KEY: record, "state_dict": state_dict, "recipe": recipe}, path)


# --- writing an evaluation file ----------------------------------------------------------------------------------


def write_export(
    path: str | Path,  # output .pt
    record: dict[str, Any],  # the architecture record (architecture_record) of the module
    net_state: dict[str, torch.Tensor],  # the network weights to evaluate (the EMA)
    data_settings: dict[str, Any] | None,  # the DataModule's hyperparameters (trained counts, label mode, ...)
    metadata: dict[str, Any],  # plain data: step, wall time, config, source checkpoint, ...
) -> Path:
    """Write a small evaluation file (EXPORT_KIND) that every command takes as --ckpt: the architecture record, the
    weights and the training data settings that `lengthgen` reads, plus `metadata`. Written to a temporary name
    and renamed, so an interrupted write never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**metadata, "kind": EXPORT_KIND, ARCH_KEY: record,
               "net_state": {k: v.detach().cpu() for k, v in net_state.items()}}
    if data_settings is not None:
        payload[DATA_HPARAMS_KEY] = dict(data_settings)
    return save_atomic(payload, path)


def save_atomic(payload: dict, path: str | Path) -> Path:
    """`torch.save` to a temporary name beside `path`, then rename: an interrupted write never leaves a file that
    looks complete, and a reader never sees half of one (the temporary name is unique per process)."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        torch.save(payload, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
