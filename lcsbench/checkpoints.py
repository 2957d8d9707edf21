"""The one reader and writer of lcsbench checkpoint records (torch only; DESIGN.md "checkpoints.py").

Every file lcsbench writes with weights in it (a Lightning `.ckpt` from `fit`, a power-function EMA snapshot, a
`reconstruct-ema` result) carries an *architecture record*: the class paths and constructor arguments of the
network and of the module that trains it, so the file rebuilds its own model with no config beside it.

    {"net_class": "lcsbench.nn.edm2.Precond", "net_config": {...},
     "module_class": "lcsbench.models.edm2.EDM2Diffusion", "module_hparams": {...}}

Diffusion models keep it under `ARCH_KEY`, the object judge under `JUDGE_ARCH_KEY` (so neither loads as the
other), and a Lightning checkpoint keeps the power-function EMA's averages in its callback state under
`EMA_STATE_KEY`. The functions here check a file before anything is built from it and say what to do when a
check fails.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

ARCH_KEY = "lcsbench_architecture"  # diffusion models (models/edm2.py, models/patch.py)
JUDGE_ARCH_KEY = "lcsbench_judge"  # the object judge (models/judge.py)
EMA_STATE_KEY = "PowerFunctionEMA"  # callbacks/ema.py's averages inside a Lightning checkpoint's "callbacks"
SNAPSHOT_KIND = "lcsbench-phema-snapshot"  # one EMA at one step, written during training
RECONSTRUCTION_KIND = "lcsbench-phema-reconstruction"  # a post-hoc EMA from `reconstruct-ema`


# --- the architecture record ---------------------------------------------------------------------------------


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def architecture_record(net: torch.nn.Module, module: Any) -> dict[str, Any]:
    """Classes and constructor arguments of `module` (with `hparams`) and its network (with `config`)."""
    config = getattr(net, "config", None)
    if config is None:
        raise TypeError(f"{type(net).__name__} has no `config` dict of its constructor arguments: give the "
                        f"network one (as nn/edm2.py Precond does) so checkpoints can rebuild it")
    return {"net_class": class_path(type(net)), "net_config": dict(config),
            "module_class": class_path(type(module)), "module_hparams": dict(module.hparams)}


def rebuild(record: dict[str, Any], **overrides: Any) -> Any:
    """A fresh module and network from an architecture record (weights not loaded).

    Hyperparameters the module's constructor does not take are dropped (LightningCLI records e.g. `_class_path`);
    `overrides` replace recorded ones (e.g. `compile=False` for analysis).
    """
    net = import_class(record["net_class"])(**record["net_config"])
    module_cls = import_class(record["module_class"])
    accepted = inspect.signature(module_cls.__init__).parameters
    hparams = {k: v for k, v in record["module_hparams"].items() if k in accepted and k != "net"}
    return module_cls(net=net, **{**hparams, **overrides})


def network_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]] | None:
    """None when two records describe the same network, else the differing arguments (theirs, ours)."""
    if theirs["net_class"] == ours["net_class"] and theirs["net_config"] == ours["net_config"]:
        return None
    keys = set(theirs["net_config"]) | set(ours["net_config"])
    return {k: (theirs["net_config"].get(k), ours["net_config"].get(k)) for k in keys
            if theirs["net_config"].get(k) != ours["net_config"].get(k)}


# --- reading files ---------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, missing_hint: str, map_location: str | torch.device = "cpu") -> dict:
    """The payload of an lcsbench checkpoint file, after the file-exists and payload-type checks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {missing_hint}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not an lcsbench checkpoint (found a {type(payload).__name__})")
    return payload


def read_record(payload: dict, key: str, path: str | Path, what: str, hint: str) -> dict[str, Any]:
    """The architecture record under `key`, or a ValueError saying that `path` is not `what`, with `hint`."""
    record = payload.get(key)
    if record is None:
        raise ValueError(f"{path} is not {what}: it has no '{key}' entry (keys: {sorted(payload)[:8]}). {hint}")
    return record


def load_net_state(net: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load network weights (any float dtype, e.g. fp16 snapshots) after checking that every tensor is there."""
    reference = net.state_dict()
    missing = sorted(set(reference) - set(state))
    if missing:
        raise ValueError(f"{path} lacks weights for {len(missing)} tensors of the network, e.g. {missing[:3]}: it was "
                         f"written for another architecture")
    net.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items() if k in reference})
