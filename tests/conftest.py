"""Shared fixtures: tiny real CLEVR renders (Blender) that data, model and analysis tests read."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

# A tiny dataset: 32x32, 1-3 objects, 8 training and 4 held-out images per count, 4 images per
# shard (so 2 train shards and 1 val shard per count). Rendered once per test session (~5 s).
TINY_DATASET = dict(counts=(1, 2, 3), per_count=8, val_per_count=4, shard_size=4, resolution=32,
                    samples=8, seed=0)


@pytest.fixture(scope="session")
def clevr_shards(tmp_path_factory):
    """Root of a tiny real render (see TINY_DATASET): manifest.json, n{1,2,3}/{train,val}-*.tar."""
    from lcsbench.data.render import render_dataset

    root = tmp_path_factory.mktemp("clevr_tiny")
    render_dataset(root, progress=False, **TINY_DATASET)
    return root


def pytest_collection_modifyitems(config, items):
    """Every test that reads the Blender render (directly or through a fixture that does) is marked `blender`."""
    for item in items:
        if "clevr_shards" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.blender)


def run_killing_on_timeout(command: list[str], env: dict, timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run `command` in its own process group, output and errors together; on timeout kill the whole group (child
    processes such as DDP ranks included) and fail the test naming `what`."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{what} did not finish: killed after {timeout} s. Output:\n{output[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output, None)
