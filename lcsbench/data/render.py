"""Render CLEVR datasets with Blender into WebDataset shards, in parallel and resumably.

The plan of a dataset is a pure function of its settings: object count n, split and shard index
fix the images of every shard (`ROOT/n3/train-000000.tar`), and each image's scene depends only on
`(seed, n, split, index)`. Work is split over one Blender process per core, each rendering a
contiguous run of images (start-up costs ~0.6 s, so a process renders many). Images land in
`ROOT/.staging/` as they finish; a shard is packed (write, then rename) once all its images are
there. Rerunning with the same arguments skips finished shards and finished images, so a crashed
or killed render loses at most the images in flight. SIGTERM, SIGINT and SIGHUP stop every Blender
process before the render exits (RenderInterrupted); where util-linux's setpriv can, Blender is also
started to die with the render process, so even SIGKILL leaves no Blender behind. Each packed shard's
sha256 goes into the manifest (`--repair` and `--verify` check it). A render claims its shards in
`ROOT/.locks/` (flock), so a second render of the same shards into the same directory is refused while
the first runs; renders of disjoint shards (`--shards`, `--node-rank`) share a directory.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lcsbench import __version__
from lcsbench.data.scenes import COLORS, IMAGE_EXT, MASK_EXT, MATERIALS, SCENE_EXT, SHAPES, SIZES, parse_counts
from lcsbench.data.shards import (
    CHECKSUMS,
    MANIFEST,
    ShardError,
    check_shard,
    read_manifest_file,
    verify_shard,
    write_json_atomic,
    write_shard,
)

SCENE_SCRIPT = Path(__file__).with_name("blender") / "clevr_scene.py"
STAGING = ".staging"
LOCKS = ".locks"  # claims of running renders (one file each) and the lock that serialises manifest updates
FORMAT = "lcsbench-clevr-shards/1"
MAX_IMAGES_PER_PROCESS = 200  # enough to amortise Blender's start-up, small enough to balance cores
# Object counts per image stop at 12: CLEVR's placement rules (min_dist 0.25, margin 0.4 on its 6x6 ground)
# place 12 objects in about 1 of 2,000 random layouts and 13 in fewer than 1 of 100,000 (measured), so 13
# would cost minutes of search per image; CLEVR itself stops at 10 and the paper's length generalization at 12.
MAX_OBJECTS = 12
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class RenderError(RuntimeError):
    """Blender is missing or failed, or the output directory conflicts with the request."""


class RenderInterrupted(RenderError):
    """A signal stopped the render: every Blender process was stopped, finished work is kept."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: every Blender process was stopped; finished "
                         f"shards and finished images are kept. Rerun the same command to resume.")


@dataclass(frozen=True)
class RenderSettings:
    """Everything that determines the pixels and labels of a dataset (recorded in the manifest)."""

    resolution: int = 64  # square images, pixels
    samples: int = 64  # Cycles samples per pixel
    seed: int = 0  # dataset seed: scene of image i = f(seed, n, split, i)
    counts: tuple[int, ...] = (1, 2, 3)  # object counts, one shard set each
    per_count: int = 1000  # training images per object count
    val_per_count: int = 0  # held-out images per object count
    shard_size: int = 1000  # images per shard
    fov: str = "crop"  # "crop": CLEVR's vertical FOV (square = centre crop); "full": horizontal FOV
    min_dist: float = 0.25  # CLEVR: min gap between objects on the ground (scene units)
    margin: float = 0.4  # CLEVR: min separation along left/right/front/behind
    min_visible_fraction: float = 0.0026  # visible pixels per object / image (200 px at 320x240)
    max_retries: int = 50  # CLEVR: placements per object before the layout restarts
    max_layout_attempts: int = 500  # layouts tried before giving up on the in-frame/visibility checks
    camera_jitter: float = 0.5  # CLEVR: uniform +-jitter per axis of the camera position
    light_jitter: float = 1.0  # CLEVR: uniform +-jitter per axis of each area light
    layout_sha256: str | None = None  # layout mode: hash of the requested scenes

    def __post_init__(self) -> None:
        """Placement numbers must be finite and in range: NaN compares false, so `--min-dist nan` would let
        objects intersect and write NaN into the manifest (issue 25 item 6)."""
        ranges = {"min_dist": (0, math.inf), "margin": (0, math.inf), "min_visible_fraction": (0, 1),
                  "camera_jitter": (0, math.inf), "light_jitter": (0, math.inf)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value < high):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number in [{low}, {high}); found "
                                 f"{value!r} (the default is {getattr(RenderSettings, name)})")

    def scene_script_settings(self) -> dict:
        return {
            "width": self.resolution, "height": self.resolution, "samples": self.samples,
            "fov": self.fov, "min_dist": self.min_dist, "margin": self.margin,
            "min_visible_fraction": self.min_visible_fraction, "max_retries": self.max_retries,
            "max_layout_attempts": self.max_layout_attempts, "camera_jitter": self.camera_jitter,
            "light_jitter": self.light_jitter,
            # CLEVR's vocabulary, from its one source (scenes.py): Blender's Python cannot import lcsbench
            "colors": COLORS, "shapes": list(SHAPES), "materials": list(MATERIALS), "sizes": SIZES,
        }


@dataclass
class ShardPlan:
    """One shard: where it goes and the Blender job of each of its images."""

    group: str  # "n3", or "layout"
    split: str  # "train", "val", or "eval" for layouts
    index: int
    jobs: list[dict] = field(default_factory=list)

    @property
    def relpath(self) -> str:
        return f"{self.group}/{self.split}-{self.index:06d}.tar"

    @property
    def staging(self) -> str:
        return f"{STAGING}/{self.group}/{self.split}-{self.index:06d}"


# ---- planning -----------------------------------------------------------------------------------


def parse_shard_range(text: str) -> slice:
    """'i:j' -> slice(i, j) over the dataset's ordered shard list."""
    try:
        start, _, stop = text.partition(":")
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise ValueError(f"invalid --shards {text!r}: expected 'i:j' (shard indices, j exclusive)") from None


def plan_dataset(settings: RenderSettings) -> list[ShardPlan]:
    plans: list[ShardPlan] = []
    for count in settings.counts:
        group = f"n{count}"
        for split, total in (("train", settings.per_count), ("val", settings.val_per_count)):
            for shard_index in range(math.ceil(total / settings.shard_size)):
                plan = ShardPlan(group, split, shard_index)
                for index in range(shard_index * settings.shard_size,
                                   min(total, (shard_index + 1) * settings.shard_size)):
                    plan.jobs.append({
                        "key": f"{group}_{split}_{index:08d}", "num_objects": count, "split": split,
                        "image_index": index, "scene_seed": f"{settings.seed}/{group}/{split}/{index}",
                    })
                plans.append(plan)
    return plans


def plan_layouts(settings: RenderSettings, scenes: list[list[dict]]) -> list[ShardPlan]:
    plans: list[ShardPlan] = []
    for shard_index in range(math.ceil(len(scenes) / settings.shard_size)):
        plan = ShardPlan("layout", "eval", shard_index)
        for index in range(shard_index * settings.shard_size,
                           min(len(scenes), (shard_index + 1) * settings.shard_size)):
            plan.jobs.append({
                "key": f"layout_eval_{index:08d}", "layout": scenes[index], "split": "eval",
                "image_index": index, "scene_seed": f"{settings.seed}/layout/eval/{index}",
            })
        plans.append(plan)
    return plans


def select_shards(plans: list[ShardPlan], shards: slice | None, node_rank: int, num_nodes: int) -> list[ShardPlan]:
    """This machine's part: a slice of the ordered shard list, then every num_nodes-th shard."""
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(f"node rank {node_rank} is not in [0, {num_nodes}): pass --node-rank in "
                         f"0..num_nodes-1 (SLURM: $SLURM_ARRAY_TASK_ID) and --num-nodes >= 1")
    selected = plans[shards] if shards is not None else plans
    return selected[node_rank::num_nodes]


# ---- Blender ------------------------------------------------------------------------------------


# The scene script runs on these Blender releases (major, minor), both ends included: Debian's 3.4 (tested by
# every render test) up to 5.0 (4.2 LTS, 4.5 LTS and 5.0 tested through `bpy` from PyPI:
# tests/test_blender_versions.py). 4.0 renamed the Principled BSDF input "Specular" and 4.1 removed auto
# smooth; the script branches on both. A later release may break the script: test it, then widen this.
SUPPORTED_BLENDER = ((3, 4), (5, 0))


def supported_range() -> str:
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED_BLENDER
    return f"{low_major}.{low_minor} to {high_major}.{high_minor}"


def find_blender(blender: str | None = None) -> str:
    candidate = blender or os.environ.get("LCSBENCH_BLENDER") or "blender"
    path = shutil.which(candidate)
    if path is None:
        raise RenderError(
            f"Blender executable {candidate!r} not found on PATH. lcsbench renders with Blender "
            f"{supported_range()}: install one (Debian/Ubuntu: `apt-get install -y blender`, which is 3.4 on "
            f"Debian 12; or unpack the 4.5 LTS from https://download.blender.org/release/Blender4.5/) and put "
            f"it on PATH, or pass --blender /path/to/blender (or set LCSBENCH_BLENDER).")
    return path


def supported_blender_version(blender: str) -> str:
    """`blender --version`'s version, or RenderError naming the supported releases when it is not one."""
    version = blender_version(blender)
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    if len(major_minor) != 2 or not SUPPORTED_BLENDER[0] <= major_minor <= SUPPORTED_BLENDER[1]:
        raise RenderError(
            f"{blender} is Blender {version}, which lcsbench's scene script does not support: it runs on Blender "
            f"{supported_range()} (tested: Debian's 3.4, the 4.2 and 4.5 LTS, 5.0). Nothing was rendered. Install a "
            f"supported release (the 4.5 LTS from https://download.blender.org/release/Blender4.5/) and pass "
            f"--blender /path/to/blender (or set LCSBENCH_BLENDER).")
    return version


def blender_version(blender: str) -> str:
    result = subprocess.run([blender, "--version"], capture_output=True, text=True, timeout=120)
    for line in result.stdout.splitlines():
        if line.startswith("Blender "):
            return line.split()[1]
    raise RenderError(f"{blender} --version printed no version (exit {result.returncode}): "
                      f"{(result.stdout + result.stderr)[-500:]}")


def parent_death_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL --` where util-linux has it (>= 2.33): the kernel then kills a Blender process
    when the render process dies, even of SIGKILL, which no handler sees; elsewhere nothing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    try:
        usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"] if "--pdeathsig" in usage else []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---- manifest -----------------------------------------------------------------------------------


def manifest_for(settings: RenderSettings, plans: list[ShardPlan], mode: str, blender_ver: str) -> dict:
    shards: dict[str, dict[str, list[str]]] = {}
    images: dict[str, dict[str, int]] = {}
    for plan in plans:
        shards.setdefault(plan.group, {}).setdefault(plan.split, []).append(plan.relpath)
        images.setdefault(plan.group, {}).setdefault(plan.split, 0)
        images[plan.group][plan.split] += len(plan.jobs)
    totals: dict[str, int] = {}
    for per_split in images.values():
        for split, n in per_split.items():
            totals[split] = totals.get(split, 0) + n
    return {
        "format": FORMAT,
        "mode": mode,
        "settings": json.loads(json.dumps(asdict(settings))),  # tuples as lists, as read back
        "shards": shards,
        "shard_samples": {plan.relpath: len(plan.jobs) for plan in plans},
        "images": images,
        "totals": totals,
        "sample_keys": {"image": IMAGE_EXT, "scene": SCENE_EXT, "mask": MASK_EXT},
        "renderer": {
            "lcsbench": __version__,
            "scene_script_sha256": hashlib.sha256(SCENE_SCRIPT.read_bytes()).hexdigest(),
            "blender": blender_ver,
            "engine": "CYCLES",
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


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


def reconcile_manifest(out: Path, manifest: dict) -> None:
    """Refuse an output directory made with other settings; otherwise (re)write the manifest, keeping the
    checksums of shards already finished."""
    path = out / MANIFEST
    with exclusive_lock(out / LOCKS / "manifest"):
        if path.exists():
            existing = read_manifest_file(path)
            old, new = existing.get("settings", {}), manifest["settings"]
            differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if existing.get("mode") != manifest["mode"]:
                differing.insert(0, "mode")
            if differing:
                detail = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differing)
                raise RenderError(
                    f"{out} holds a dataset rendered with other settings ({detail}). Nothing was changed. "
                    f"Render into a new --out directory, or rerun with the original arguments to resume it.")
            was, now = existing.get("renderer", {}).get("blender", ""), manifest["renderer"]["blender"]
            if was and was.split(".")[:2] != now.split(".")[:2]:  # same labels, other pixels (Cycles, Principled BSDF)
                raise RenderError(
                    f"{out} was rendered with Blender {was} and this is Blender {now}: their images differ (same "
                    f"scenes and labels, other shading), so one dataset must not mix them. Nothing was changed. "
                    f"Finish it with Blender {'.'.join(was.split('.')[:2])} (--blender /path/to/blender), or render "
                    f"into a new --out directory.")
            manifest["created"] = existing.get("created", manifest["created"])
            manifest[CHECKSUMS] = existing.get(CHECKSUMS, {})  # none in manifests of earlier versions
        manifest.setdefault(CHECKSUMS, {})
        write_json_atomic(path, manifest)


def record_checksum(out: Path, relpath: str, sha256: str) -> None:
    """Add one finished shard's sha256 to the manifest (read, update, rename under the manifest lock)."""
    path = out / MANIFEST
    with exclusive_lock(out / LOCKS / "manifest"):
        manifest = read_manifest_file(path)
        manifest.setdefault(CHECKSUMS, {})[relpath] = sha256
        write_json_atomic(path, manifest)


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


# ---- rendering ----------------------------------------------------------------------------------


def set_aside(path: Path) -> Path:
    """Rename a damaged shard to `<name>.corrupt`, or `<name>.corrupt.2`, `.3`, ... if earlier ones exist."""
    target, number = path.with_name(path.name + ".corrupt"), 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.corrupt.{number}")
    os.replace(path, target)
    return target


def check_existing_shards(out: Path, plans: list[ShardPlan], repair: bool) -> list[ShardPlan]:
    """Check finished shards; return the plans still to render. A plain rerun checks their tar structure
    (fast); `repair` verifies them fully (checksum from the manifest where recorded, every member decodes),
    moves damaged ones aside as `*.corrupt` (numbered, nothing is deleted) and re-renders them. Without
    `repair`, damaged shards stop the run."""
    manifest = read_manifest_file(out / MANIFEST)
    checksums, resolution = manifest.get(CHECKSUMS, {}), manifest["settings"]["resolution"]
    fix = "rerun `lcsbench render` with --repair"
    todo, damaged = [], []
    for plan in plans:
        path = out / plan.relpath
        if not path.exists():
            todo.append(plan)
            continue
        try:
            if repair:
                verify_shard(path, len(plan.jobs), checksums.get(plan.relpath), fix, resolution=resolution)
            else:
                check_shard(path, len(plan.jobs), fix)
        except ShardError as error:
            if not repair:
                damaged.append(str(error))
                continue
            set_aside(path)
            todo.append(plan)
    if damaged:
        raise ShardError(f"{len(damaged)} finished shard(s) are damaged:\n  " + "\n  ".join(damaged)
                         + "\nRerun the same command with --repair: damaged shards are moved aside as "
                           "*.corrupt and only they are re-rendered.")
    return todo


def image_done(out: Path, plan: ShardPlan, job: dict) -> bool:
    staging = out / plan.staging
    key = job["key"]
    return all((staging / f"{key}.{ext}").exists() for ext in (IMAGE_EXT, MASK_EXT, SCENE_EXT))


def pack_shard(out: Path, plan: ShardPlan) -> None:
    staging = out / plan.staging
    samples = []
    for job in plan.jobs:
        key = job["key"]
        samples.append({"__key__": key, **{ext: (staging / f"{key}.{ext}").read_bytes()
                                           for ext in (IMAGE_EXT, SCENE_EXT, MASK_EXT)}})
    record_checksum(out, plan.relpath, write_shard(out / plan.relpath, samples))
    shutil.rmtree(staging, ignore_errors=True)  # at the end of a dataset, another machine may remove it first


def make_tasks(out: Path, plans: list[ShardPlan], workers: int,
               images_per_process: int = MAX_IMAGES_PER_PROCESS) -> list[list[tuple[ShardPlan, dict]]]:
    """Pending images, in shard order, cut into contiguous runs of similar length per process."""
    pending = [(plan, job) for plan in plans for job in plan.jobs if not image_done(out, plan, job)]
    if not pending:
        return []
    size = max(1, min(images_per_process, math.ceil(len(pending) / workers)))
    return [pending[i:i + size] for i in range(0, len(pending), size)]


class _BlenderPool:
    """Runs Blender processes and reports finished images through `events`."""

    def __init__(self, blender: str, out: Path, settings: RenderSettings, threads: int, tag: str):
        self.blender, self.out, self.settings = blender, out, settings
        self.threads, self.tag = threads, tag  # tag keeps logs of machines sharing `out` apart
        self.events: queue.Queue = queue.Queue()
        self.running: dict[int, subprocess.Popen] = {}
        self.starting = False  # a Blender process is being started: a stop signal waits until it is registered
        self.stopping = False  # every Blender process is being stopped: a stop signal changes nothing
        self.deferred_signal = 0
        self.prefix = parent_death_prefix()  # Blender dies with this process, however it ends
        self.logs = out / STAGING / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, task_id: int, task: list[tuple[ShardPlan, dict]]) -> None:
        jobs = [{**job, "dir": str(self.out / plan.staging)} for plan, job in task]
        for plan, _ in task:
            (self.out / plan.staging).mkdir(parents=True, exist_ok=True)
        jobs_file = self.logs / f"{self.tag}-task-{task_id:05d}.json"
        jobs_file.write_text(json.dumps({"settings": self.settings.scene_script_settings(), "images": jobs}))
        log_path = self.logs / f"{self.tag}-task-{task_id:05d}.log"
        command = [*self.prefix, self.blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1",
                   "-P", str(SCENE_SCRIPT), "--", "--jobs", str(jobs_file), "--threads", str(self.threads)]
        self.starting = True
        try:  # its own session: a terminal's Ctrl-C reaches this process only, which then stops every Blender
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       start_new_session=True)
            self.running[task_id] = process
        finally:
            self.starting = False
        if self.deferred_signal:
            raise RenderInterrupted(self.deferred_signal)
        threading.Thread(target=self._follow, args=(task_id, process, log_path), daemon=True).start()

    def _follow(self, task_id: int, process: subprocess.Popen, log_path: Path) -> None:
        with open(log_path, "w") as log:
            for line in process.stdout:
                log.write(line)
                if line.startswith("LCSBENCH_DONE "):
                    self.events.put(("done", line.split()[1]))
                elif line.startswith("LCSBENCH_ERROR "):
                    self.events.put(("error", line.split(" ", 1)[1].strip()))
        self.events.put(("exit", task_id, process.wait(), log_path))

    def kill_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it exited since poll()
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.running.values():
            process.wait()

    @contextlib.contextmanager
    def stopped_by_signals(self):
        """SIGTERM, SIGINT and SIGHUP raise RenderInterrupted in the main thread, whose cleanup kills every
        Blender process (they run in their own sessions, so nothing else would); further stop signals during
        that cleanup are ignored. Outside the main thread (signals cannot be caught there) nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, frame):
            for number in STOP_SIGNALS:
                signal.signal(number, signal.SIG_IGN)
            if self.starting or self.stopping:
                self.deferred_signal = signum
                return
            raise RenderInterrupted(signum)

        previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def run_plans(out: Path, plans: list[ShardPlan], settings: RenderSettings, blender: str, workers: int,
              progress: bool, tag: str = "node0", images_per_process: int = MAX_IMAGES_PER_PROCESS) -> int:
    """Render every missing image of `plans`, packing shards as they complete. Returns images rendered."""
    for plan in plans:  # shards whose images all survived a crash before packing
        if all(image_done(out, plan, job) for job in plan.jobs):
            pack_shard(out, plan)
    plans = [plan for plan in plans if not (out / plan.relpath).exists()]
    tasks = make_tasks(out, plans, workers, images_per_process)
    if not tasks:
        return 0
    owner = {job["key"]: plan for task in tasks for plan, job in task}
    remaining = Counter(plan.relpath for task in tasks for plan, _ in task)  # images still to render per shard
    threads = max(1, usable_cores() // workers)
    pool = _BlenderPool(blender, out, settings, threads, tag)
    total = sum(len(task) for task in tasks)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc=f"render {out.name}", disable=not progress, smoothing=0.05)
    next_task, failures, rendered = 0, [], 0
    with pool.stopped_by_signals():
        try:
            while next_task < len(tasks) or pool.running:
                while not failures and next_task < len(tasks) and len(pool.running) < workers:
                    pool.start(next_task, tasks[next_task])
                    next_task += 1
                try:
                    event = pool.events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if event[0] == "done":
                    plan = owner[event[1]]
                    remaining[plan.relpath] -= 1
                    rendered += 1
                    bar.update(1)
                    if remaining[plan.relpath] == 0:
                        pack_shard(out, plan)
                elif event[0] == "error":  # a request no rerun can mend: stop everything now
                    raise RenderError(f"Blender cannot render {event[1]}\nThe render stopped. Other settings "
                                      f"make another dataset: render it into a new --out (or delete {out}).")
                else:
                    _, task_id, code, log_path = event
                    del pool.running[task_id]
                    if code != 0:
                        failures.append((code, log_path))
        except BaseException:
            pool.stopping = True  # a stop signal now must not cut the cleanup short
            pool.kill_all()
            raise
        finally:
            bar.close()
    if failures:
        code, log_path = failures[0]
        tail = "".join(Path(log_path).read_text().splitlines(keepends=True)[-25:])
        raise RenderError(
            f"Blender exited with code {code} ({len(failures)} failed process(es)); log: {log_path}\n"
            f"{tail}\nImages already finished are kept in {out / STAGING}: rerun the same command to resume.")
    return rendered


def render(out: str | Path, settings: RenderSettings, plans: list[ShardPlan], mode: str, *,
           shards: slice | None = None, node_rank: int = 0, num_nodes: int = 1, workers: int | None = None,
           repair: bool = False, blender: str | None = None, progress: bool = True,
           images_per_process: int = MAX_IMAGES_PER_PROCESS) -> dict:
    out = Path(out)
    blender_path = find_blender(blender)
    workers = workers or usable_cores()
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    version = supported_blender_version(blender_path)
    out.mkdir(parents=True, exist_ok=True)
    reconcile_manifest(out, manifest_for(settings, plans, mode, version))
    mine = select_shards(plans, shards, node_rank, num_nodes)
    with claim_shards(out, mine):
        todo = check_existing_shards(out, mine, repair)
        rendered = run_plans(out, todo, settings, blender_path, workers, progress, tag=f"node{node_rank}",
                             images_per_process=images_per_process)
        complete = sum((out / plan.relpath).exists() for plan in plans)
        if complete == len(plans):  # renders of other shards (other machines) may be cleaning up too
            shutil.rmtree(out / STAGING, ignore_errors=True)
    return {"out": str(out), "rendered_images": rendered, "selected_shards": len(mine),
            "complete_shards": complete, "total_shards": len(plans)}


def render_dataset(out: str | Path, counts=(1, 2, 3), per_count: int = 1000, val_per_count: int | None = None,
                   resolution: int = 64, samples: int = 64, seed: int = 0, shard_size: int = 1000,
                   **options) -> dict:
    """Render `per_count` training and `val_per_count` held-out images for every object count.

    `options`: RenderSettings placement fields (fov, min_dist, ...), and `shards`, `node_rank`,
    `num_nodes`, `workers`, `repair`, `blender`, `progress`, `images_per_process` of `render`.
    """
    counts = parse_counts(counts)
    if max(counts) > MAX_OBJECTS:
        raise ValueError(f"--counts asks for {max(counts)} objects per image; at most {MAX_OBJECTS} are supported: "
                         f"CLEVR's placement rules fit {MAX_OBJECTS} objects in about 1 of 2,000 random layouts and "
                         f"{MAX_OBJECTS + 1} in fewer than 1 of 100,000, so a scene of more would search for "
                         f"minutes. Pass counts in 1..{MAX_OBJECTS}, e.g. --counts 1-{MAX_OBJECTS}")
    if val_per_count is None:
        val_per_count = math.ceil(per_count / 50)
    if per_count < 1 or val_per_count < 0 or shard_size < 1 or resolution < 8 or samples < 1:
        raise ValueError(f"need per_count >= 1, val_per_count >= 0, shard_size >= 1, resolution >= 8 and "
                         f"samples >= 1; got {per_count}, {val_per_count}, {shard_size}, {resolution}, {samples}")
    setting_names = set(RenderSettings.__dataclass_fields__)
    settings = RenderSettings(resolution=resolution, samples=samples, seed=seed, counts=counts,
                              per_count=per_count, val_per_count=val_per_count, shard_size=shard_size,
                              **{k: v for k, v in options.items() if k in setting_names})
    run_options = {k: v for k, v in options.items() if k not in setting_names}
    return render(out, settings, plan_dataset(settings), "random", **run_options)


def render_layouts(out: str | Path, scenes: list[list[dict]], resolution: int = 64, samples: int = 64,
                   seed: int = 0, shard_size: int = 1000, **options) -> dict:
    """Render requested scenes exactly: each object centre projects to its requested pixel.

    `scenes`: one list of objects per image, each `{"pixel": [x, y]}` (float pixels at this
    resolution, origin top-left) with optional `color`, `shape`, `size`, `material`; see
    `lcsbench.data.layouts` for fractions and grid cells.
    """
    digest = hashlib.sha256(json.dumps(scenes, sort_keys=True).encode()).hexdigest()
    setting_names = set(RenderSettings.__dataclass_fields__)
    settings = RenderSettings(resolution=resolution, samples=samples, seed=seed, counts=(), per_count=len(scenes),
                              val_per_count=0, shard_size=shard_size, layout_sha256=digest,
                              **{k: v for k, v in options.items() if k in setting_names})
    run_options = {k: v for k, v in options.items() if k not in setting_names}
    return render(out, settings, plan_layouts(settings, scenes), "layout", **run_options)
