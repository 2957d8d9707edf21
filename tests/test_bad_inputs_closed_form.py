"""Bad input to the closed forms is one line saying what was expected (issue 36, Build 4): memory budgets wherever
one is accepted, hand-edited fields of a closed-form spec (with every command that reads a spec), and the options
and inputs of `closed-form coverage` and `memorisation`. All on the tiny Blender render of conftest.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lcsbench.analysis.closed_form.posterior import budget_from_gib
from lcsbench.analysis.lengthgen import save_samples
from lcsbench.callbacks.closed_form import ClosedFormR2
from lcsbench.callbacks.locality import LocalityHeatmaps
from lcsbench.checkpoints import DATA_HPARAMS_KEY
from lcsbench.cli import main as cli_main
from lcsbench.cli import run as cli_run
from lcsbench.models.closed_form import CLOSED_FORM_KEY, load_closed_form, render_images, write_spec

BAD_BUDGETS = ["inf", "-inf", "nan", "-1", "0", "1e-12"]


def refused_in_one_line(argv: list[str], capsys) -> str:
    """Run a command as from a terminal; it must exit with status 2 and one line on stderr, which is returned."""
    assert cli_run(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- memory budgets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_BUDGETS)
def test_a_memory_budget_must_be_positive_and_finite_everywhere(value, tmp_path, capsys):
    gib = float(value)
    with pytest.raises(ValueError, match=r"is the memory one chunk may use, a positive, finite number of GiB"):
        budget_from_gib(gib)
    with pytest.raises(ValueError, match="ClosedFormR2's memory_budget_gib is the memory one chunk may use"):
        ClosedFormR2(memory_budget_gib=gib)
    with pytest.raises(ValueError, match="LocalityHeatmaps' memory_budget_gib is the memory one batched backward"):
        LocalityHeatmaps(memory_budget_gib=gib)
    # the commands refuse it before reading anything (the render and the checkpoint here do not exist)
    line = refused_in_one_line(["closed-form", "spec", "--render", str(tmp_path / "none"), "--kind", "local",
                                "--label-mode", "all", f"--memory-budget-gib={value}", "--out",
                                str(tmp_path / "s.pt")], capsys)
    assert line.endswith(f"closed-form spec: --memory-budget-gib is the memory one chunk may use, a positive, finite "
                         f"number of GiB (default 0.5); found {gib!r}")
    line = refused_in_one_line(["locality", "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o"),
                                f"--memory-budget-gib={value}"], capsys)
    assert "--memory-budget-gib is the memory one batched backward may use, a positive, finite number" in line
    assert not (tmp_path / "s.pt").exists()


def test_a_budget_that_is_a_number_of_gib_is_its_bytes():
    assert budget_from_gib(0.5) == 2**29 and budget_from_gib(1e-9) == 1
    with pytest.raises(ValueError, match="found 'x'"):
        budget_from_gib("x")
    with pytest.raises(ValueError, match="radius must be a whole number of cells >= 0"):
        write_spec("never.pt", "local", "none", "1-3", "all", radius=-1)
    with pytest.raises(ValueError, match="memory_budget must be a whole number of bytes >= 1"):
        write_spec("never.pt", "local", "none", "1-3", "all", memory_budget=math.inf)


# --- hand-edited spec fields --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec(clevr_shards, tmp_path_factory):
    """A local spec of single labels over the tiny render's counts 1-3."""
    path = tmp_path_factory.mktemp("spec") / "local.pt"
    write_spec(path, "local", clevr_shards, "1-3", "single", radius=1)
    return path


def edited(spec, tmp_path, section: str, field: str, value=None, remove: bool = False):
    payload = torch.load(spec, weights_only=True)
    for name in section.split("+"):  # "A+B": the same field edited in both sections
        if remove:
            del payload[name][field]
        else:
            payload[name][field] = value
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


C, D = CLOSED_FORM_KEY, DATA_HPARAMS_KEY
EDITS = [  # section, field, value, what the refusal says
    (C, "counts", "1-x", r"its field lcsbench_closed_form.counts is '1-x' \(str\), expected distinct object counts "
                         r">= 1 in increasing order, as a list such as \[1, 2, 3\]"),
    (C, "counts", [0, 1], r"counts is \[0, 1\] \(list\), expected distinct object counts >= 1"),
    (C, "counts", [3, 1, 2], r"counts is \[3, 1, 2\] \(list\), expected distinct object counts >= 1 in increasing"),
    (C, "label_mode", "sometimes", r"label_mode is 'sometimes' \(str\), expected one of \['all', 'single'"),
    (C, "kind", "global", r"kind is 'global' \(str\), expected one of \['local', 'empirical'\]"),
    (C, "grid_size", "16", r"grid_size is '16' \(str\), expected a whole number of grid cells >= 1"),
    (C, "grid_size", 7, r"datamodule_hyper_parameters.grid_size is 16 but lcsbench_closed_form.grid_size is 7; the "
                        r"two must agree"),
    (f"{C}+{D}", "grid_size", 7, r"its field lcsbench_closed_form.grid_size: grid_size 7 does not divide the image "
                                 r"size 32x32"),
    (C, "radius", -1, r"radius is -1 \(int\), expected a whole number of cells >= 0"),
    (C, "radius", None, r"a local spec needs lcsbench_closed_form.radius \(a whole number >= 0\)"),
    (C, "equivariant", "yes", r"equivariant is 'yes' \(str\), expected true or false"),
    (C, "images_per_count", 0, r"images_per_count is 0 \(int\), expected a whole number >= 1, or null"),
    (C, "memory_budget", math.inf, r"memory_budget is inf \(float\), expected a whole number of bytes >= 1"),
    (C, "memory_budget", -5, r"memory_budget is -5 \(int\), expected a whole number of bytes >= 1"),
    (C, "manifest_sha256", "abc", r"manifest_sha256 is 'abc' \(str\), expected the sha256 of the render's manifest"),
    (C, "manifest_sha256", "0" * 64, r"changed since the closed-form spec .* was written \(its manifest differs\)"),
    (C, "sigma", -1.0, r"its field lcsbench_closed_form.sigma = -1.0 \(float\) is unknown \(a spec holds "
                       r"lcsbench_closed_form.\{kind, render,"),
    (D, "resolution", 64, r"its field datamodule_hyper_parameters.resolution is 64 but its render .* is 32 px"),
    (D, "counts", [1, 2], r"datamodule_hyper_parameters.counts is \[1, 2\] but lcsbench_closed_form.counts is "
                          r"\[1, 2, 3\]; the two must agree"),
    (D, "label_mode", "all", r"datamodule_hyper_parameters.label_mode is 'all' but lcsbench_closed_form.label_mode "
                             r"is 'single'"),
    (D, "conditioning", "color", r"conditioning is 'color' \(str\), expected 'location'"),
]


@pytest.mark.parametrize("section, field, value, message", EDITS, ids=[f"{e[1]}={e[2]!r}" for e in EDITS])
def test_a_hand_edited_spec_field_is_named_with_its_value_and_what_was_expected(spec, tmp_path, capsys, section,
                                                                               field, value, message):
    path = edited(spec, tmp_path, section, field, value)
    with pytest.raises(ValueError, match=message):
        load_closed_form(path)
    line = refused_in_one_line(["closed-form", "coverage", "--spec", str(path)], capsys)
    assert line.startswith("closed-form: ") and "Traceback" not in line


@pytest.mark.parametrize("section, field", [(C, "memory_budget"), (C, "render"), (D, "resolution")])
def test_a_spec_missing_a_field_names_it(spec, tmp_path, section, field):
    path = edited(spec, tmp_path, section, field, remove=True)
    with pytest.raises(ValueError, match=rf"has no field {section}.{field} \(expected "):
        load_closed_form(path)


def test_every_command_that_reads_a_spec_refuses_an_edited_field_in_one_line(spec, tmp_path, capsys):
    path = edited(spec, tmp_path, C, "counts", "1-x")
    out = str(tmp_path / "out")
    for argv in (["lengthgen", "--ckpt", str(path), "--out", out, "--no-oracle", "--device", "cpu"],
                 ["locality", "--ckpt", str(path), "--out", out, "--device", "cpu"],
                 ["sample", "--ckpt", str(path), "--locations", "paper:2", "--out", str(tmp_path / "g.png"), "--device",
                  "cpu"],
                 ["closed-form", "r2", "--ckpt", str(spec), "--spec", str(path), "--out", out, "--device", "cpu"],
                 ["closed-form", "r2", "--ckpt", str(path), "--spec", str(spec), "--out", out, "--device", "cpu"],
                 ["closed-form", "memorisation", "--spec", str(path), "--samples-file", "none.npz", "--out", out]):
        line = refused_in_one_line(argv, capsys)
        assert "its field lcsbench_closed_form.counts is '1-x' (str)" in line, (argv[0], line)


def test_the_written_spec_and_the_committed_ones_pass_the_field_checks(spec):
    from lcsbench.models.closed_form import spec_entry

    committed = sorted((Path(__file__).parents[1] / "reports/reproduction/cpu/closed_forms").glob("*.pt"))
    assert {path.stem for path in committed} >= {"cf_local_all", "cf_local_single", "cf_empirical_all",
                                                 "cf_empirical_single"}  # the judged four, and r2's yardsticks
    for path in [spec, *committed]:
        assert spec_entry(torch.load(path, weights_only=True), path)["kind"] in ("local", "empirical")


# --- closed-form coverage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--samples-per-k", "0"], "closed-form coverage: --samples-per-k is the number of requests per k, in 1..4096 "
                               "(each is one label grid; the paper's order gives one grid per k); found 0"),
    (["--samples-per-k", "-3"], "--samples-per-k is the number of requests per k, in 1..4096"),
    (["--samples-per-k", "4097"], "--samples-per-k is the number of requests per k, in 1..4096"),
    (["--ks", "13"], "closed-form coverage: --ks 13: location requests take k in 1..12"),
    (["--ks", "abc"], "closed-form coverage: --ks abc: invalid object counts 'abc'"),
])
def test_coverage_refuses_wrong_numbers_in_one_line(spec, flags, message, capsys):
    assert message in refused_in_one_line(["closed-form", "coverage", "--spec", str(spec), *flags], capsys)


def test_coverage_refuses_bad_paths_before_any_work(spec, tmp_path, capsys):
    assert refused_in_one_line(["closed-form", "coverage", "--spec", str(tmp_path)], capsys) == (
        f"closed-form: --spec {tmp_path} is a folder; --spec is a spec file (.pt) written by `python -m lcsbench "
        f"closed-form spec`")
    line = refused_in_one_line(["closed-form", "coverage", "--spec", str(spec), "--json", str(tmp_path)], capsys)
    assert line.endswith(f"--json {tmp_path} is a folder; --json is the file to write: pass a file path")
    weights = tmp_path / "weights.pt"
    torch.save({"net_state": {}}, weights)  # a weights file, not a spec
    assert "is not a closed-form spec" in refused_in_one_line(["closed-form", "coverage", "--spec", str(weights)],
                                                               capsys)
    with pytest.raises(SystemExit) as stop:  # argparse's own refusal (usage and one error line): coverage runs no
        cli_run(["closed-form", "coverage", "--spec", str(spec), "--device", "cuda"])  # network, so takes no device
    assert stop.value.code == 2 and "unrecognized arguments: --device cuda" in capsys.readouterr().err


# --- closed-form memorisation -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(clevr_shards, tmp_path_factory):
    """A samples.npz of six training images (as lengthgen writes it) and a folder for bad ones."""
    folder = tmp_path_factory.mktemp("samples")
    images, _ = render_images(clevr_shards, [1, 2, 3], "train", 2)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    save_samples(folder / "samples.npz", pixels, {"ks": [1, 2, 3], "samples_per_k": 2})
    save_samples(folder / "samples64.npz", np.zeros((6, 64, 64, 3), np.uint8), {"ks": [1], "samples_per_k": 6})
    save_samples(folder / "gray.npz", np.zeros((6, 32, 32), np.uint8), {"ks": [1], "samples_per_k": 6})
    save_samples(folder / "floats.npz", np.zeros((6, 32, 32, 3), np.float32), {"ks": [1], "samples_per_k": 6})
    np.savez(folder / "images_only.npz", images=pixels)
    (folder / "sub").mkdir()
    (folder / "cut.npz").write_bytes((folder / "samples.npz").read_bytes()[:300])
    return folder


@pytest.mark.parametrize("name, message", [
    ("missing.npz", "--samples-file {folder}/missing.npz does not exist: pass the samples.npz"),
    ("sub", "--samples-file {folder}/sub is a folder: pass the samples.npz"),
    ("cut.npz", "{folder}/cut.npz is not a lengthgen samples.npz (BadZipFile: "),
    ("images_only.npz", "{folder}/images_only.npz is not a lengthgen samples.npz (KeyError: "),
    ("samples64.npz", "holds images of dtype uint8 and shape [6, 64, 64, 3]; expected uint8 [N >= 1, 32, 32, 3] "
                      "(the spec's render is 32 px)"),
    ("gray.npz", "holds images of dtype uint8 and shape [6, 32, 32]; expected uint8 [N >= 1, 32, 32, 3]"),
    ("floats.npz", "holds images of dtype float32 and shape [6, 32, 32, 3]; expected uint8"),
])
def test_memorisation_refuses_what_is_not_a_samples_file_of_the_render(spec, samples, tmp_path, name, message,
                                                                        capsys):
    line = refused_in_one_line(["closed-form", "memorisation", "--spec", str(spec), "--samples-file",
                                str(samples / name), "--out", str(tmp_path / "m")], capsys)
    assert message.format(folder=samples) in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("flags, message", [
    (["--heldout", "0"], "closed-form memorisation: --heldout is the number of held-out renders compared, >= 1; "
                         "found 0"),
    (["--heldout", "-4"], "--heldout is the number of held-out renders compared, >= 1; found -4"),
    (["--out", "{spec}"], "--out {spec} is a file; --out is the folder the outputs go into"),
])
def test_memorisation_refuses_wrong_numbers_and_paths_first(spec, samples, tmp_path, flags, message, capsys):
    flags = [flag.format(spec=spec) for flag in flags]
    argv = ["closed-form", "memorisation", "--spec", str(spec), "--samples-file", str(samples / "samples.npz"),
            "--out", str(tmp_path / "m"), *flags]
    assert message.format(spec=spec) in refused_in_one_line(argv, capsys)


def test_memorisation_says_when_the_render_has_fewer_heldout_images_and_checks_the_render(spec, samples, clevr_shards,
                                                                                        tmp_path, capsys):
    out = tmp_path / "m"
    assert cli_main(["closed-form", "memorisation", "--spec", str(spec), "--samples-file",
                     str(samples / "samples.npz"), "--heldout", "1000", "--out", str(out)]) == 0
    assert "--heldout 1000 asked for more held-out renders than" in capsys.readouterr().err
    report = json.loads((out / "memorisation.json").read_text())
    assert report["heldout_images"] == 12 and report["samples_median"] == 0  # 4 per count in the tiny render
    copy = tmp_path / "render"  # a spec whose render's manifest changed after it was written
    shutil.copytree(clevr_shards, copy)
    write_spec(tmp_path / "e.pt", "empirical", copy, "1-3", "all")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "created": "later"}))
    line = refused_in_one_line(["closed-form", "memorisation", "--spec", str(tmp_path / "e.pt"), "--samples-file",
                                str(samples / "samples.npz"), "--out", str(out)], capsys)
    assert f"the render {copy} changed since the closed-form spec" in line
