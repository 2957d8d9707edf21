"""Helpers shared by the commands: the argparse parser every command builds (usage, defaults, examples, deprecated
aliases of old flag names), the checkpoint options of the analysis commands, the device default and its check, the
checks of output paths (before any work), comma-separated number lists and the names of EMA snapshot files, the
cores a process may use (its threads) and progress lines for long work. Nothing here computes; the commands call
the layers below for that."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lcsbench.timefmt import duration

if TYPE_CHECKING:
    from lcsbench.diffusion.denoiser import Denoiser

DEFAULT_SIGMAS = "0.05,0.2,0.5,1,2,5,10,40"  # the locality noise grid (Figure 2's rows and more)


def snapshot_step(path: Path) -> int | None:
    """checkpoints.snapshot_step (the owner of the snapshot file name), kept here for commands/trainer.py; imported
    when called, so that importing a command does not import torch."""
    from lcsbench.checkpoints import snapshot_step as step_in_name

    return step_in_name(path)


# --- the parser of every command (CONTRIBUTING.md, "Flags: one name per idea") ------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every command's --help: the description and the epilog (its examples) as written, and each option's default
    once: " (default: X)" is appended unless the help already says its default in words, or there is no default to
    show (a required option, a switch, a default of None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or not action.option_strings or action.nargs == 0 or isinstance(action.default, bool)
                or action.default is None or action.default == argparse.SUPPRESS or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"

    def add_usage(self, usage, actions, groups, prefix=None) -> None:
        """The usage line without the deprecated aliases (--help lists them in a group of their own)."""
        super().add_usage(usage, [a for a in actions if not isinstance(a, DeprecatedAlias)], groups, prefix)


class DeprecatedAlias(argparse.Action):
    """An old name of an option: it parses into the new option's dest exactly as the new name does (same type,
    choices, number of values), --help lists it as "deprecated alias of NEW", and each use prints one line on
    stderr: "lcsbench <command>: OLD is deprecated, use NEW". (argparse's own `deprecated=` is Python 3.13+.)"""

    def __init__(self, option_strings: list[str], dest: str, target: argparse.Action, new: str, **kwargs):
        super().__init__(option_strings, target.dest, nargs=target.nargs, const=target.const,
                         default=argparse.SUPPRESS, type=target.type, choices=target.choices,
                         metavar=target.metavar, help=f"deprecated alias of {new}")
        self.target, self.new = target, new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        command = parser.prog.removeprefix("python -m ")
        print(f"{command}: {option_string} is deprecated, use {self.new}", file=sys.stderr, flush=True)
        if isinstance(parser, CommandParser):
            parser.typed[self.new] = option_string
        self.target(parser, namespace, values, self.new)


class CommandParser(argparse.ArgumentParser):
    """argparse for one command (`command_parser`; closed-form's actions are CommandParsers too): HelpFormatter,
    and old flag names kept as deprecated aliases (`deprecated_aliases`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.aliases: list[DeprecatedAlias] = []
        self.typed: dict[str, str] = {}  # new flag -> the deprecated alias the last parse was given it by

    def deprecated_aliases(self, renamed: dict[str, str]) -> None:
        """Keep each old flag name of `renamed` (old -> new, the new one already added) as a DeprecatedAlias, listed
        by --help under "deprecated aliases"."""
        group = self.add_argument_group("deprecated aliases (still accepted; each use says so on stderr)")
        for old, new in renamed.items():
            self.aliases.append(group.add_argument(old, action=DeprecatedAlias, new=new,
                                                   target=self._option_string_actions[new]))

    def refuse_alias_with_its_new_name(self, args: list[str]) -> None:
        """SystemExit when a deprecated alias and its new name are both given (argparse would silently keep the
        last one): the user meant one value."""

        def given(names: list[str]) -> str | None:
            return next((arg.partition("=")[0] for arg in args for name in names
                         if arg == name or arg.startswith(name + "=")), None)

        for alias in self.aliases:
            old, new = given(alias.option_strings), given(alias.target.option_strings)
            if old and new:
                raise SystemExit(f"{self.prog.removeprefix('python -m ')}: {old} is the deprecated name of {new}, "
                                 f"and both were given: give {new} once")

    def flag(self, new: str) -> str:
        """The flag as the user typed it in the last parse: its deprecated alias when given by that, else `new`
        (an error message names the flag the user wrote)."""
        return self.typed.get(new, new)

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        self.typed = {}
        self.refuse_alias_with_its_new_name(args)
        given = [alias.target for alias in self.aliases if alias.target.required and any(
            arg == old or arg.startswith(old + "=") for arg in args for old in alias.option_strings)]
        for target in given:  # a required option given by its old name is given
            target.required = False
        try:
            return super().parse_known_args(args, namespace)
        finally:
            for target in given:
                target.required = True


def command_parser(command: str, doc: str) -> CommandParser:
    """The parser of `python -m lcsbench <command>`: its usage names the command so; the first paragraph of `doc`
    (the command module's docstring) is the description, the rest, which opens with "Examples:", the epilog."""
    description, _, rest = doc.strip().partition("\n\n")
    return CommandParser(prog=f"python -m lcsbench {command}", description=description, epilog=rest or None)


CGROUP_ROOT = Path("/sys/fs/cgroup")  # v2: cpu.max "<quota us> <period us>" | "max <period>"; v1: cpu/cpu.cfs_*


def usable_core_ids() -> list[int]:
    """The cores this process may run on (its CPU affinity), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))  # not on Linux


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU time this process's cgroup may use, in cores (quota / period), or None when unlimited or unknown.
    Reads cgroup v2's `cpu.max`, else v1's `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us` (quota -1: none)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """How many cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers, SLURM
    with cgroups), at least 1. What a fit should use as threads."""
    cores = len(usable_core_ids())
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit - 1e-9))
    return max(1, cores)


def busy_cores(core_ids: list[int], seconds: float = 0.25) -> float:
    """How many of `core_ids` other processes keep busy (their summed busy fraction over `seconds`, read from
    /proc/stat while this process sleeps); 0 where /proc/stat cannot be read. A thread on a busy core waits for it
    at every parallel region, which made a fit beside one busy process 26x slower than one thread (issue 27)."""

    def times() -> dict[int, tuple[int, int]]:
        found = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(v) for v in fields[:8]]
                idle = values[3] + values[4]  # idle + iowait
                found[int(name[3:])] = (sum(values) - idle, sum(values))
        return found

    try:
        before = times()
        time.sleep(seconds)
        after = times()
    except (OSError, ValueError):
        return 0.0
    busy = 0.0
    for core in core_ids:
        if core in before and core in after and after[core][1] > before[core][1]:
            busy += (after[core][0] - before[core][0]) / (after[core][1] - before[core][1])
    return busy


def thread_count(processes: int = 1, requested: int | None = None) -> tuple[int, str]:
    """Torch intra-op threads for each of `processes` processes on this machine (DDP ranks), and why: `requested`
    (--threads) if given, else OMP_NUM_THREADS if set, else the usable cores (`usable_cores`) less those other
    processes keep busy (measured only for a single process: ranks starting together would count each other),
    split between the processes."""
    if requested is not None:
        if requested < 1:
            raise SystemExit(f"--threads takes a positive number of threads; found {requested}")
        return capped(requested, "--threads", processes)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            if int(env) >= 1:
                return capped(int(env), "OMP_NUM_THREADS", processes)
        except ValueError:
            pass
        raise SystemExit(f"OMP_NUM_THREADS={env!r} is not a positive number of threads: set it to one (e.g. "
                         f"OMP_NUM_THREADS=2) or unset it to use the cores this process may use")
    cores = usable_cores()
    why = f"{cores} usable core{'s' * (cores != 1)}"
    free = cores
    if processes == 1 and cores > 1 and cgroup_cpu_limit() is None:
        busy = min(cores - 1, round(busy_cores(usable_core_ids())))
        if busy:
            free = cores - busy
            why += f", {busy} busy with other processes"
    if processes > 1:
        why += f" for {processes} processes"
    return max(1, free // processes), why


def capped(threads: int, source: str, processes: int = 1) -> tuple[int, str]:
    """`threads` asked for by `source`, at most the usable cores per process: more threads than cores only wait for
    each other at every parallel region (a fit asked for far more threads than cores ran ~700x slower); the reason
    says when it was capped."""
    cores = usable_cores()
    most = max(1, cores // processes)
    if threads <= most:
        return threads, source
    share = f" for each of {processes} processes" if processes > 1 else ""
    return most, (f"{source} asked for {threads} threads, capped at {most}{share}: this process may use "
                  f"{cores} core{'s' * (cores != 1)}")


class Progress:
    """Progress of `total` units of work for a log: `line(done)` reads "sample: 32/64 images, 1.9 images/s, ETA
    0:00:17, elapsed 0:00:17", with the rate over everything done since the Progress was made."""

    def __init__(self, prefix: str, total: int, unit: str = "images"):
        self.prefix, self.total, self.unit = prefix, total, unit
        self.started = time.perf_counter()

    def line(self, done: int) -> str:
        elapsed = time.perf_counter() - self.started
        text = f"{self.prefix}: {done}/{self.total} {self.unit}"
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f", {rate:.3g} {self.unit}/s" if rate >= 1 else f", {1 / rate:.3g} s per {self.unit.rstrip('s')}"
            text += f", ETA {duration((self.total - done) / rate)}"
        return text + f", elapsed {duration(elapsed)}"

    def update(self, done: int) -> None:
        print(self.line(done), file=sys.stderr, flush=True)


@contextlib.contextmanager
def heartbeat(prefix: str, what: str, every_seconds: float = 30.0) -> Iterator[None]:
    """While the body runs, print "<prefix>: <what>, h:mm:ss so far" every `every_seconds` (a daemon thread), so
    long work with no progress of its own still shows in a log that it is alive and how long it has taken."""
    stop, started = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not stop.wait(every_seconds):
            print(f"{prefix}: {what}, {duration(time.perf_counter() - started)} so far", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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


def add_precision_argument(parser: argparse.ArgumentParser, default: str = "bf16") -> None:
    """--precision: the arithmetic of a trained network at inference (a closed form always runs in float32). bf16
    agrees with fp32 on the committed cpu weights (lengthgen rates at k = 1..4 within the Wilson interval, locality
    radii within the spread across scenes); the default is what measured fastest for the command."""
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=default,
                        help="the network's arithmetic: bf16 autocast on the CPU and the GPU (it gives the same "
                             "lengthgen rates and locality radii within their spread as fp32 on the committed "
                             "weights), or fp32 throughout")


def apply_precision(module, precision: str):
    """`module` (a trained model, or a closed form, which has no inference precision) with its network set to run
    in `precision` (models/edm2.py `set_inference_precision`); returns it."""
    if hasattr(module, "set_inference_precision"):
        module.set_inference_precision(precision)
    return module


def load_trained_denoiser(ckpt: str, ema: bool, device: str, precision: str = "fp32") -> "Denoiser":
    """The denoiser of a trained diffusion checkpoint (EMA weights unless ema=False), in eval mode on `device`:
    `denoiser(x, sigma, cond)` with its image shape, conditioning kind, grid size and network
    (diffusion/denoiser.py), the same for the global and the patch-local model; its network in `precision`."""
    path = Path(ckpt)
    if not path.is_file():
        raise SystemExit(f"checkpoint {ckpt} does not exist: pass the .ckpt written by `python -m lcsbench fit` "
                         f"(runs/<experiment>/.../checkpoints/last.ckpt)")
    from lcsbench.models.loaders import load_denoiser

    try:
        module = load_denoiser(str(path), ema=ema, map_location=device)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"lcsbench: {error}") from None
    return apply_precision(module, precision).to(device).eval().denoiser


def add_model_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The checkpoint, output and weight options every analysis command shares."""
    parser.add_argument("--ckpt", required=True,
                        help="trained checkpoint (.ckpt), or an EMA file or a closed-form spec")
    parser.add_argument("--out", required=True, metavar="DIR", help=out_help)
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--no-ema", action="store_true", help="use the raw training weights, not the EMA")
    parser.add_argument("--device", default=default_device(),
                        help="torch device: cpu, cuda, cuda:N (default: cuda if a GPU is visible, else cpu)")


def memory_budget_option(gib: float, flag: str, default: float, what: str = "one chunk", command: str = "") -> int:
    """The bytes of a --memory-budget-gib option, or a SystemExit saying what is expected (a positive, finite number
    of GiB: analysis/closed_form/posterior.budget_from_gib, which the callbacks' options use too); `command`
    opens the message when given."""
    from lcsbench.analysis.closed_form.posterior import budget_from_gib

    try:
        return budget_from_gib(gib, flag, default, what)
    except ValueError as error:
        raise SystemExit(f"{command}: {error}" if command else str(error)) from None


def parse_floats(text: str, what: str) -> list[float]:
    """A comma list of positive numbers for option --`what`, or a SystemExit that says what was expected."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{what} takes comma-separated numbers such as {DEFAULT_SIGMAS}; found {text!r}")
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise SystemExit(f"--{what} needs positive, finite numbers (e.g. {DEFAULT_SIGMAS}); found {text!r}")
    return values
