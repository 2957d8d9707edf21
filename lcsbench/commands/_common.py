"""Helpers shared by the commands: the checkpoint options of the analysis commands, the device default and its
check, the checks of output paths (before any work), comma-separated number lists and the names of EMA snapshot
files. Nothing here computes; the commands call the layers below for that."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lcsbench.diffusion.denoiser import Denoiser

DEFAULT_SIGMAS = "0.05,0.2,0.5,1,2,5,10,40"  # the locality noise grid (Figure 2's rows and more)


def snapshot_step(path: Path) -> int | None:
    """checkpoints.snapshot_step (the owner of the snapshot file name), kept here for commands/trainer.py; imported
    when called, so that importing a command does not import torch."""
    from lcsbench.checkpoints import snapshot_step as step_in_name

    return step_in_name(path)


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu` (every command's --device default)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str, flag: str = "--device") -> str:
    """`device` if torch can use it here (cpu, cuda, cuda:N, ...), else a SystemExit saying what to pass."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise SystemExit(f"{flag} takes a torch device such as cpu, cuda or cuda:1; found {device!r} ({error})") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SystemExit(f"{flag} {device}: torch sees no CUDA GPU here (torch {torch.__version__}, CUDA "
                             f"{torch.version.cuda or 'not built in'}): pass {flag} cpu, or run on a GPU machine")
        if parsed.index is not None and parsed.index >= count:
            raise SystemExit(f"{flag} {device}: this machine has {count} CUDA GPU(s), numbered 0..{count - 1}")
    return device


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (what a mkdir of `path` would start from)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_under(path: Path, folder: Path, flag: str) -> None:
    """SystemExit unless `path` can be created in `folder` (its own folder, or itself for an output folder): the
    closest existing ancestor of `folder` must be a folder we can write in (tried with a temporary file, which
    also catches read-only file systems). Nothing is left behind."""
    base = nearest_existing(folder)
    if not base.is_dir():
        raise SystemExit(f"{flag} {path}: {base} is a file, so nothing can be written under it: choose another "
                         f"{flag}")
    try:
        tempfile.TemporaryFile(dir=base).close()
    except OSError as error:
        raise SystemExit(f"{flag} {path} cannot be written: {base} refuses new files ({error.strerror}): choose a "
                         f"writable {flag}") from None


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """The output folder `path`, checked before any work (nothing is created): a folder or a new path, writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"{flag} {path} is a file; {flag} is the folder the outputs go into: pass a folder path")
    check_writable_under(path, path, flag)
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """The output file `path`, checked before any work (nothing is created): not a folder, and writable."""
    path = Path(path)
    if path.is_dir():
        raise SystemExit(f"{flag} {path} is a folder; {flag} is the file to write: pass a file path")
    check_writable_under(path, path.parent, flag)
    return path


def load_trained_denoiser(ckpt: str, ema: bool, device: str) -> "Denoiser":
    """The denoiser of a trained diffusion checkpoint (EMA weights unless ema=False), in eval mode on `device`:
    `denoiser(x, sigma, cond)` with its image shape, conditioning kind, grid size and network
    (diffusion/denoiser.py), the same for the global and the patch-local model."""
    path = Path(ckpt)
    if not path.is_file():
        raise SystemExit(f"checkpoint {ckpt} does not exist: pass the .ckpt written by `python -m lcsbench fit` "
                         f"(runs/<experiment>/.../checkpoints/last.ckpt)")
    from lcsbench.models.edm2 import load_denoiser

    try:
        module = load_denoiser(str(path), ema=ema, map_location=device)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"lcsbench: {error}") from None
    return module.to(device).eval().denoiser


def add_model_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The checkpoint, output and weight options every analysis command shares."""
    parser.add_argument("--ckpt", required=True, help="trained checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="use the raw training weights, not the EMA")
    parser.add_argument("--device", default=default_device())


def parse_floats(text: str, what: str) -> list[float]:
    """A comma list of positive numbers for option --`what`, or a SystemExit that says what was expected."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{what} takes comma-separated numbers such as {DEFAULT_SIGMAS}; found {text!r}")
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise SystemExit(f"--{what} needs positive, finite numbers (e.g. {DEFAULT_SIGMAS}); found {text!r}")
    return values
