"""The commands a study starts die with it: each runs in its own process group, is ended when `reproduce` is
stopped (SIGTERM, SIGINT) or fails, and notices when `reproduce` is killed outright (SIGKILL: the parent-death
signal), so that a restarted study never finds an orphaned fit still writing into its run folder."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

LCSBENCH = [sys.executable, "-m", "lcsbench"]  # how a study starts a command: the interpreter that runs it
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies (Linux)
GRACE_SECONDS = 15.0  # how long an ended command may take to stop (a fit writes its checkpoint) before SIGKILL


def _prctl() -> Callable | None:
    """libc's prctl, looked up before any fork (None where there is none: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def child_setup(cores: list[int] | None) -> Callable[[], None]:
    """What a started command does between fork and exec: a process group of its own (a signal to the study
    reaches it only through `end_commands`), SIGTERM when `reproduce` dies, and its cores."""
    prctl, parent = _prctl(), os.getpid()

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # reproduce died before the signal was set: nothing will send it
                os._exit(1)
        if cores:
            os.sched_setaffinity(0, cores)

    return setup


def end_commands(processes: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM each running command's process group, SIGKILL what still runs after `grace` seconds; their pids."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return [p.pid for p in running]


class Stopped(SystemExit):
    """reproduce received SIGTERM or SIGINT (raised by the handler, handled outside the wait it interrupts)."""


@contextlib.contextmanager
def commands_end_with_the_study(processes: list[subprocess.Popen]):
    """While the study runs: SIGTERM or SIGINT ends its running commands, then stops it with one line; any failure
    of the study itself ends them too. The previous handlers come back afterwards."""
    def stop(number, frame):
        raise Stopped(signal.Signals(number).name)  # the ending happens below, after the interrupted wait let go

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except Stopped as stopped:
        pids = end_commands(processes)
        raise SystemExit(f"reproduce: stopped by {stopped.code}"
                         + (f"; ended its running command(s) (pid {', '.join(map(str, pids))})" if pids else "")
                         + ". Rerun the same reproduce command to resume: finished work is kept") from None
    except BaseException:
        end_commands(processes)
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
