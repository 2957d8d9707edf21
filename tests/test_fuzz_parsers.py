"""Property-based fuzzing of the parsers that take user strings and files (issue 25, "Must show"): any input either
parses or raises the project's one-line error (a SystemExit with a message or argparse's exit 2, a ValueError,
ShardError or LayoutError with a message), never another exception.

The strategies mix arbitrary text with text built from each option's own alphabet (digits, commas, ranges, colour
names), so that near-misses of the valid syntax are explored, not only noise. Numbers are kept below a million:
`parse_counts("1-100000000")` builds the whole range (see docs/bad-input.md, open items)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lcsbench.commands._common import parse_floats
from lcsbench.commands.eval_judge import parse_degradation
from lcsbench.commands.lengthgen import parse_ks
from lcsbench.commands.locality import parse_pixels
from lcsbench.commands.sample import parse_colors, parse_locations
from lcsbench.data.layouts import LayoutError, load_layout_file
from lcsbench.data.scenes import COLOR_NAMES, parse_counts
from lcsbench.data.shards import ShardError, load_manifest, verify_dataset

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

small_numbers = st.integers(-20, 999_999).map(str) | st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "²",
                                                                        "٣", "1_0", " 2", "", "paper", "paper:"])
separators = st.sampled_from([",", "-", ":", " ", ",,", "--", "paper:"])
near_syntax = st.lists(st.one_of(small_numbers, separators, st.sampled_from(list(COLOR_NAMES))), max_size=8).map(
    "".join)
user_text = st.one_of(near_syntax, st.text(max_size=30))


def assert_project_error(error: BaseException) -> None:
    """The error is one the project raises on purpose, with a one-line message (argparse's usage errors: exit 2)."""
    if isinstance(error, SystemExit):
        assert error.code == 2 or (isinstance(error.code, str) and error.code.strip()), repr(error.code)
        message = error.code if isinstance(error.code, str) else ""
    else:
        assert isinstance(error, (ValueError, ShardError)), f"{type(error).__name__}: {error}"
        message = str(error)
    assert "\n" not in message.strip(), message


def parses_or_refuses(parse, *args) -> None:
    try:
        parse(*args)
    except (SystemExit, ValueError, ShardError) as error:
        assert_project_error(error)


@FUZZ
@given(user_text)
def test_counts_and_ks(text):
    parses_or_refuses(parse_counts, text)
    parses_or_refuses(parse_ks, text)


@FUZZ
@given(st.lists(user_text, min_size=1, max_size=4))
@example(["paper:²"])
def test_locations_and_colors(items):
    parses_or_refuses(parse_locations, items)
    parses_or_refuses(parse_colors, items)


@FUZZ
@given(user_text)
def test_degrade_sigmas_and_targets(text):
    parser = argparse.ArgumentParser(prog="fuzz")  # its error() prints usage and exits 2
    parses_or_refuses(parse_degradation, parser, text)
    parses_or_refuses(parse_floats, text, "sigmas")
    parses_or_refuses(parse_pixels, [text])


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=12)
shard_paths = st.sampled_from(["n1/train-000000.tar", "../x.tar", "/etc/passwd", "", ".", "n1/../../x.tar",
                               "C:/x.tar", "n1\\x.tar"]) | st.text(max_size=12)
manifest_parts = {
    "settings": st.one_of(json_values, st.fixed_dictionaries({"resolution": json_values})),
    "shards": st.one_of(json_values, st.dictionaries(st.text(max_size=4), st.dictionaries(
        st.sampled_from(["train", "val"]), st.lists(shard_paths, max_size=3) | json_values, max_size=2), max_size=2)),
    "shard_samples": st.one_of(json_values, st.dictionaries(shard_paths, json_values, max_size=3)),
    "shard_sha256": st.one_of(json_values, st.dictionaries(shard_paths, json_values, max_size=2)),
    "has_masks": json_values,
}
manifests = st.one_of(json_values, st.fixed_dictionaries({}, optional=manifest_parts))


@FUZZ
@given(manifests)
def test_manifests(manifest):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "manifest.json").write_text(json.dumps(manifest))
        parses_or_refuses(load_manifest, Path(folder))
        parses_or_refuses(verify_dataset, Path(folder), "re-render")  # every shard it lists is missing: a report


@FUZZ
@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_manifest_bytes(data):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "manifest.json").write_bytes(data)
        parses_or_refuses(load_manifest, Path(folder))


layout_objects = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "pixel": json_values | st.lists(st.floats(), min_size=2, max_size=2),
    "frac": json_values | st.lists(st.floats(), min_size=2, max_size=2),
    "grid": json_values | st.lists(st.integers(-2, 20), min_size=2, max_size=2),
    "color": json_values | st.sampled_from(list(COLOR_NAMES)),
}))
layouts = st.one_of(json_values, st.lists(st.lists(layout_objects, max_size=3), max_size=3),
                    st.fixed_dictionaries({"scenes": st.lists(st.lists(layout_objects, max_size=3), max_size=3)},
                                          optional={"grid_size": json_values}))


@FUZZ
@given(layouts)
@example([[5]])
def test_layout_files(layout):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "layout.json"
        path.write_text(json.dumps(layout))
        try:
            load_layout_file(path, 32)
        except LayoutError as error:
            assert_project_error(error)
