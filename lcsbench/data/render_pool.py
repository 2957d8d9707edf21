"""The process pool of a render: one Blender process per core, each rendering a contiguous run of images.

Images land in `ROOT/.staging/` as they finish; a shard is packed (write, then rename) once all its images are
there, and its sha256 goes into the manifest. SIGTERM, SIGINT and SIGHUP stop every Blender process before the
render exits (RenderInterrupted); where util-linux's setpriv can, Blender is also started to die with the render
process, so even SIGKILL leaves no Blender behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

from lcsbench.data.blender_binary import SCENE_SCRIPT, parent_death_prefix, usable_cores
from lcsbench.data.manifest import record_checksum
from lcsbench.data.render_errors import RenderError, RenderInterrupted
from lcsbench.data.render_plan import STAGING, RenderSettings, ShardPlan
from lcsbench.data.scenes import IMAGE_EXT, MASK_EXT, SCENE_EXT
from lcsbench.data.shards import write_shard

MAX_IMAGES_PER_PROCESS = 200  # enough to amortise Blender's start-up, small enough to balance cores

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
