"""Bad flags and options refused with one line (issue 36): a deprecated alias given with its new name, and a thread
count above the usable cores capped with a line saying so."""

from __future__ import annotations

import pytest

from lcsbench.commands._common import thread_count, usable_cores


@pytest.mark.parametrize("argv", [["--batch", "4", "--batch-size", "8"], ["--batch-size=8", "--batch=4"]])
def test_an_old_flag_given_with_its_new_name_is_refused(argv):
    from lcsbench.commands.sample import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit, match="--batch is the deprecated name of --batch-size, and both were given"):
        parser.parse_args(["--ckpt", "m.pt", "--locations", "paper:2", "--out", "g.png", *argv])
    args = parser.parse_args(["--ckpt", "m.pt", "--locations", "paper:2", "--out", "g.png", "--batch", "4"])
    assert args.batch_size == 4  # either name alone still parses


def test_every_commands_aliases_are_checked():
    from lcsbench.commands.locality import build_parser

    with pytest.raises(SystemExit, match="--samples is the deprecated name of --noise-draws"):
        build_parser().parse_args(["--ckpt", "m.pt", "--out", "o", "--samples", "2", "--noise-draws", "3"])


def test_threads_above_the_usable_cores_are_capped_with_a_line(monkeypatch):
    cores = usable_cores()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, why = thread_count(requested=cores + 500)
    assert threads == cores and f"--threads asked for {cores + 500} threads, capped at {cores}" in why
    assert thread_count(requested=cores) == (cores, "--threads")  # up to the cores: as asked
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 1))
    threads, why = thread_count()
    assert threads == cores and why.startswith("OMP_NUM_THREADS asked for")
    threads, why = thread_count(processes=2, requested=cores + 1)
    assert threads == max(1, cores // 2) and "for each of 2 processes" in why
