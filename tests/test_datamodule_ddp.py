"""2-rank CPU DDP (gloo) over real shards: no hang, equal step counts, different data per rank,
and an exact validation pass split across the ranks. Runs in a subprocess with a hard timeout that kills."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import run_killing_on_timeout

HELPER = Path(__file__).with_name("ddp_datamodule_run.py")
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # DDP: two gloo ranks in subprocesses
def test_ddp_two_ranks_more_workers_than_shards(clevr_shards, tmp_path):
    # 2 ranks x 2 workers = 4 readers per count, against 2 training shards per count in the fixture.
    manifest = json.loads((clevr_shards / "manifest.json").read_text())
    assert all(len(manifest["shards"][f"n{c}"]["train"]) == 2 for c in (1, 2, 3))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    result = run_killing_on_timeout([sys.executable, str(HELPER), str(clevr_shards), str(tmp_path)], env, TIMEOUT_S,
                                    "the DDP run")
    assert result.returncode == 0, result.stdout[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    steps, epochs = 3, 2
    for r in ranks:  # with_epoch: the same number of batches on every rank, every epoch
        assert r["global_step"] == steps * epochs
        assert len(r["train_keys"]) == steps * epochs and all(len(b) == 4 for b in r["train_keys"])
    assert ranks[0]["train_keys"] != ranks[1]["train_keys"]  # each rank draws its own stream
    assert ranks[0]["train_keys"][:steps] != ranks[0]["train_keys"][steps:]  # and a new one each epoch

    all_val = sorted(f"n{c}_val_{i:08d}" for c in (1, 2, 3) for i in range(4))
    for epoch in range(epochs):  # the held-out pass: every image exactly once across the ranks
        seen = [r["val_keys"][epoch] for r in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == all_val
