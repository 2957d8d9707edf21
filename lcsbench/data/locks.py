"""File locks of a render directory: one lock that serialises manifest updates, and the claims of running renders
(`ROOT/.locks/`, flock), so a second render of the same shards into the same directory is refused while the first
runs; renders of disjoint shards (`--shards`, `--node-rank`) share a directory."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import warnings
from pathlib import Path

from lcsbench.data.render_errors import RenderError
from lcsbench.data.render_plan import ShardPlan

LOCKS = ".locks"  # claims of running renders (one file each) and the lock that serialises manifest updates



@contextlib.contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive flock on `path` (created if missing) for the block; blocks until it is free.

    A file system without flock (some network mounts) gives no exclusion: warn once and go on unlocked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:
            warnings.warn(f"cannot lock {path} ({error}): renders sharing {path.parent.parent} are not kept apart")
        yield  # closing the file releases the lock


def hold_or_name_holder(path: Path, holder: str):
    """Take an exclusive flock on `path` without waiting and write `holder` (who holds it) into it: returns the open
    file (the lock lasts while it stays open; the operating system drops it when the process dies), or the line the
    current holder wrote when another process has it. One writer of a run folder (fit), of a study (reproduce)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - the caller keeps it open to hold the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        current = handle.read().strip()
        handle.close()
        return current
    handle.seek(0)
    handle.truncate()
    handle.write(f"{holder}\n")
    handle.flush()
    return handle


# ---- claims: one running render per shard -------------------------------------------------------


@contextlib.contextmanager
def claim_shards(out: Path, plans: list[ShardPlan]):
    """Claim `plans` for this process while the block runs; RenderError if a running render claims any of them.

    A claim is `ROOT/.locks/<host>-<pid>.claim` (its owner and shards) held under flock: the kernel drops the
    flock when its process ends however it ends, so a claim whose flock is free is stale and removed. Claims
    are checked and written under one lock, so of two renders of the same shards started at once, one proceeds.
    """
    locks = out / LOCKS
    mine = {plan.relpath for plan in plans}
    own = locks / f"{socket.gethostname()}-{os.getpid()}.claim"
    with exclusive_lock(locks / "claims"):
        for path in sorted(locks.glob("*.claim")):
            try:
                handle = open(path, "r+")
            except FileNotFoundError:  # its render ended just now
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its render runs
                    other = json.loads(handle.read() or "{}")
                    overlap = sorted(mine & set(other.get("shards", [])))
                    if overlap:
                        raise RenderError(
                            f"{out} is being rendered by another `lcsbench render` (pid {other.get('pid')} on "
                            f"{other.get('host')}, since {other.get('started')}), which claims {len(overlap)} of "
                            f"the shards asked for here (e.g. {overlap[0]}). Nothing was changed. Wait for it to "
                            f"finish (or stop it), or give this render other shards with --shards or "
                            f"--node-rank/--num-nodes.") from None
                    continue
                except OSError:  # no flock on this file system: claims cannot be told apart, keep them all
                    continue
            path.unlink(missing_ok=True)  # its render has ended
        claim = open(own, "w")
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"), "shards": sorted(mine)}, claim)
        claim.flush()
        with contextlib.suppress(OSError):  # no flock here: exclusive_lock has warned already
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        own.unlink(missing_ok=True)
        claim.close()
