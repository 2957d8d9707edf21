"""`python -m lcsbench <command>`: Trainer commands go to LightningCLI, tools to plain functions.

Each command lives in its own module of `lcsbench/commands/` exposing `main(argv: list[str]) -> int`; modules are
imported only when their command runs, so `--help` stays fast and a tool never pays for Lightning's import.

From a terminal (`main()` without arguments, as `python -m lcsbench` and the `lcsbench` script call it) the
project's errors and the usual input mistakes end as one line on stderr and exit status 2 (`run`); `--debug`
anywhere on the command line, or LCSBENCH_DEBUG=1, shows the traceback instead. Called from Python with an argv
list, `main` lets every exception through (tests, notebooks).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

TRAINER_COMMANDS = {
    "fit": "train a model (LightningCLI; --config configs/<experiment>.yaml)",
    "validate": "run one validation pass of a checkpoint (LightningCLI)",
}  # no test / predict: the models have no test_step or predict_step (lengthgen, locality, sample evaluate)

# command -> (module with main(argv), one-line description); every module is in lcsbench/commands/
TOOLS: dict[str, tuple[str, str]] = {
    "render": ("lcsbench.commands.render", "render CLEVR scenes with Blender into WebDataset shards"),
    "import-clevr": ("lcsbench.commands.import_clevr", "convert official CLEVR renders into lcsbench shards"),
    "sdxl": ("lcsbench.commands.sdxl", "SDXL word-ablation locality and cross-attention cosines (Figures 6, 7, 13)"),
    "locality": ("lcsbench.commands.locality", "pixel and conditional locality heatmaps and radii over noise levels"),
    "features": ("lcsbench.commands.features", "feature-space cosine matrices of the EDM2 conditioning modulation"),
    "sample": ("lcsbench.commands.sample", "sample a PNG grid from a trained model for given locations or colours"),
    "lengthgen": ("lcsbench.commands.lengthgen", "length-generalization curve and Table-1 row, judged beside a Blender oracle"),
    "eval-judge": ("lcsbench.commands.eval_judge", "the object judge's accuracy per object count on held-out renders"),
    "oracle-check": ("lcsbench.commands.oracle_check", "the judge on Blender renders of the protocol's own layouts"),
    "reconstruct-ema": ("lcsbench.commands.reconstruct_ema", "post-hoc power-function EMA for any sigma_rel from snapshots"),
    "closed-form": ("lcsbench.commands.closed_form", "training-free closed-form denoisers: specs, r2 yardstick, coverage"),
    "reproduce": ("lcsbench.commands.reproduce", "the whole study as data: render, fit, export, evaluate, report (Tables 1-2, Figures 2, 4, 5)"),
}

TRAINER_MODULE = "lcsbench.commands.trainer"
DEBUG_FLAG, DEBUG_ENV = "--debug", "LCSBENCH_DEBUG"
USAGE_ERROR = 2  # the exit status of a refused input, as argparse's


def usage() -> str:
    width = max(len(name) for name in [*TRAINER_COMMANDS, *TOOLS])
    lines = ["usage: python -m lcsbench <command> [options]   (python -m lcsbench <command> --help)",
             f"       {DEBUG_FLAG} (or {DEBUG_ENV}=1): show the traceback of an error instead of its one-line message",
             ""]
    lines.append("training (LightningCLI):")
    lines += [f"  {name:<{width}}  {text}" for name, text in TRAINER_COMMANDS.items()]
    lines.append("")
    lines.append("tools:")
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in TOOLS.items()]
    return "\n".join(lines)


def dispatch(argv: list[str]) -> int:
    """Run one command; its exceptions propagate."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in TRAINER_COMMANDS:
        trainer = importlib.import_module(TRAINER_MODULE)
        return trainer.main([command, *rest])
    if command in TOOLS:
        module = importlib.import_module(TOOLS[command][0])
        return int(module.main(rest) or 0)
    print(f"lcsbench: unknown command {command!r}.\n\n{usage()}", file=sys.stderr)
    return USAGE_ERROR


def is_input_error(error: BaseException) -> bool:
    """The errors a user meets with bad input: the project's own exception classes, ValueError (bad values, bad
    files), OSError (missing or unwritable paths) and Lightning's configuration errors. Anything else is a bug
    and keeps its traceback."""
    kind = type(error)
    return (isinstance(error, (ValueError, OSError)) or kind.__module__.split(".")[0] == "lcsbench"
            or kind.__name__ == "MisconfigurationException")


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, SystemExit) else f"{text} ({type(error).__name__}; {DEBUG_FLAG} shows where)"


def run(argv: list[str]) -> int:
    """`dispatch` for a terminal: an input error becomes one line on stderr and exit status 2 (module docstring)."""
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if sys.argv[1:] != argv and DEBUG_FLAG in sys.argv:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself when argv is the command line
    command = argv[0] if argv else ""
    before = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # DDP ranks relaunched from sys.argv during the command inherit it
    try:
        return _run(argv, command, debug)
    finally:  # a caller in the same process (a notebook, a test) keeps its own setting
        if before is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = before


def _run(argv: list[str], command: str, debug: bool) -> int:
    try:
        return dispatch(argv)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            raise  # argparse and LightningCLI have printed their message
        if debug:
            traceback.print_exc()  # where the command refused (Python prints a SystemExit's message only)
            raise
        error: BaseException = stop
    except Exception as caught:  # noqa: BLE001 - sorted by is_input_error
        if debug or not is_input_error(caught):
            raise
        error = caught
    message = one_line(error)
    prefix = f"lcsbench {command}".rstrip()
    print(message if message.startswith(("lcsbench", f"{command}:")) else f"{prefix}: error: {message}",
          file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """From a terminal (no argv): `run` on the command line. From Python (an argv list): `dispatch`."""
    return run(sys.argv[1:]) if argv is None else dispatch(list(argv))
