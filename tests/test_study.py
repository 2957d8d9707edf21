"""The study as data (lcsbench/study/): `reproduce --dry-run` prints the commands it printed before the study
became records (golden data in tests/data/reproduce_golden/), every experiment of every scale parses, the stacked
configs parse to the old single files' configs, and an experiment added at run time (one record, one small
config) appears in the dry run."""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

import pytest
import yaml

from lcsbench.analysis import report as rp
from lcsbench.cli import main as cli_main
from lcsbench.commands import reproduce  # noqa: F401 - registers the study's experiments
from lcsbench.study import export, records
from lcsbench.study.records import REGISTRY, Experiment
from lcsbench.study.runner import Study
from lcsbench.study.scales import SCALES, config_paths

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "reproduce_golden"
OLD_EXPERIMENTS = ("exp1", "exp2", "exp3", "fig4_global", "fig4_local", "cf_local_all", "cf_local_single",
                   "cf_empirical_all", "cf_empirical_single")
SPEC_DEFAULTS = {"--grid-size": "16", "--radius": "2"}  # `closed-form spec`'s defaults, which the old lines left out


def dry_run(tmp_path: Path, monkeypatch, capsys, scale: str, *extra: str) -> list[str]:
    """The command lines `reproduce --scale SCALE --out out --runs runs --dry-run` prints in an empty folder, the
    repository's path taken out of the config paths (as the golden data was captured)."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli_main(["reproduce", "--scale", scale, "--out", "out", "--runs", "runs", "--dry-run", *extra]) == 0
    text = capsys.readouterr().out.replace(f"{REPO}/", "")
    return commands(text)


def commands(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("python -m lcsbench", "taskset", "cp -r"))]


def options(line: str) -> tuple[list[str], dict[str, list[str]]]:
    """A command line's leading words and its flags (flag -> values in order; a bare switch -> [])."""
    words = shlex.split(line)
    head = []
    while words and not words[0].startswith("--"):
        head.append(words.pop(0))
    found: dict[str, list[str]] = {}
    while words:
        flag = words.pop(0)
        found.setdefault(flag, [])
        if words and not words[0].startswith("--"):
            found[flag].append(words.pop(0))
    return head, found


def same_command(old: str, new: str) -> str | None:
    """Whether a new line is the old one, as allowed: identical; a fit whose one --config became the stack
    (returned: the old config, for the parse check); a closed-form spec that states the grid and radius the old
    line left to the defaults; the render of a scale whose render now covers more object counts."""
    if old == new:
        return "same"
    (old_head, old_flags), (new_head, new_flags) = options(old), options(new)
    if old_head != new_head:
        return None
    if old_head[-1] == "fit":
        rest = {k: v for k, v in old_flags.items() if k != "--config"}
        return old_flags["--config"][0] if rest == {k: v for k, v in new_flags.items() if k != "--config"} else None
    if old_head[-1] == "spec":
        filled = {**{k: [v] for k, v in SPEC_DEFAULTS.items()}, **old_flags}
        return "spec" if filled == new_flags else None
    if old_head[-1] == "render":
        from lcsbench.data.scenes import parse_counts

        old_counts, new_counts = (set(parse_counts(f["--counts"][0])) for f in (old_flags, new_flags))
        rest = ({k: v for k, v in f.items() if k != "--counts"} for f in (old_flags, new_flags))
        return "render" if old_counts <= new_counts and next(rest) == next(rest) else None
    return None


def new_experiment_line(line: str) -> bool:
    """A line of an experiment that did not exist before (its name is in the line as a folder or --name)."""
    new_names = [name for name in REGISTRY if name not in OLD_EXPERIMENTS]
    return any(f"/{name}/" in line or f"/{name}.pt" in line or line.endswith(f"/{name}.yaml") or
               f"--experiments {name}" in line or f"{name}.yaml " in line for name in new_names)


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_the_dry_run_prints_the_commands_it_printed_before(scale, tmp_path, monkeypatch, capsys):
    old = commands((GOLDEN / f"dry_run_{scale}.txt").read_text())
    new = dry_run(tmp_path, monkeypatch, capsys, scale)
    matched, position, old_configs = [], 0, {}
    for line in old:  # every old command, in the same order, as the same command
        for index in range(position, len(new)):
            verdict = same_command(line, new[index])
            if verdict is not None:
                matched.append(index)
                position = index + 1
                if verdict.endswith(".yaml"):
                    old_configs[verdict] = new[index]
                break
        else:
            pytest.fail(f"the old command is no longer printed: {line}")
    extra = [line for index, line in enumerate(new) if index not in matched]
    # new lines: the new experiments', and every trained model's fresh-seed check (added after the golden files)
    added = [e for e in extra if not (new_experiment_line(e) or "/lengthgen_seed2 " in e and "--seed 2" in e)]
    assert not added, added
    # the fits whose --config became a stack: each stack parses to the old single file's config
    stacks = {Path(old).stem: options(line)[1]["--config"] for old, line in old_configs.items()}
    assert set(stacks) == ({"exp1", "exp2", "exp3", "fig4_global", "fig4_local"} if scale == "cpu" else
                           {"exp1", "exp2", "exp3"} if scale == "smoke" else set())
    for exp, stack in stacks.items():
        assert stack == [str(p) for p in record_stack(scale, exp)]


def record_stack(scale: str, exp: str) -> list[str]:
    return [str(path.relative_to(REPO)) if path.is_absolute() else str(path)
            for path in config_paths(REGISTRY[exp], scale)]


def printed_config(monkeypatch, stack: list[str]) -> dict:
    """`fit --config ... --print_config`, parsed (LightningCLI's view of the stack, with every default)."""
    from lcsbench.commands.trainer import build_cli

    monkeypatch.chdir(REPO)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        build_cli([*[item for path in stack for item in ("--config", path)], "--print_config"], run=False)
    return yaml.safe_load(buffer.getvalue())


EVERY_FIT = [(scale, name) for scale in SCALES for name in SCALES[scale].experiments if REGISTRY[name].trained]


@pytest.mark.parametrize(("scale", "exp"), EVERY_FIT, ids=[f"{s}-{e}" for s, e in EVERY_FIT])
def test_every_experiment_of_every_scale_parses(scale, exp, monkeypatch):
    record = REGISTRY[exp]
    config = printed_config(monkeypatch, record_stack(scale, exp))
    data = config["data"]["init_args"]
    assert (str(data["counts"]), data["label_mode"], data["conditioning"]) == (
        record.counts, record.label_mode, record.conditioning)
    assert config["model"]["class_path"].endswith({"global": "EDM2Diffusion", "patch": "PatchLocalDiffusion"}[
        record.model])
    golden = GOLDEN / "configs" / f"{scale}_{exp}.yaml"
    if golden.exists():  # an experiment whose weights were trained from an old single file: the same config
        assert config == yaml.safe_load(golden.read_text())


def test_an_experiment_added_at_run_time_appears_in_the_dry_run(tmp_path, monkeypatch, capsys):
    delta = tmp_path / "exp1_wide.yaml"
    delta.write_text("trainer:\n  max_steps: 40\ndata:\n  init_args:\n    counts: 1-2\n")
    smoke = record_stack("smoke", "exp1")[0]
    records.register(Experiment("exp1_wide", "Exp 1 on 1-2 objects, longer", "global", "1-2", "all", paper="5",
                                configs={"smoke": (str(REPO / smoke), str(delta))}))
    try:
        lines = dry_run(tmp_path, monkeypatch, capsys, "smoke", "--experiments", "exp1,exp1_wide")
    finally:
        records.unregister("exp1_wide")
    fits = [line for line in lines if " fit " in line]
    assert len(fits) == 2 and f"--config {REPO / smoke} --config {delta}".replace(f"{REPO}/", "") in fits[1]
    assert any(line.startswith("python -m lcsbench lengthgen --ckpt out/weights/exp1_wide.pt") for line in lines)
    assert any("--stage export --experiments exp1_wide" in line for line in lines)
    assert "exp1_wide" not in REGISTRY


def test_facts_are_derived_from_the_records_and_configs(monkeypatch, capsys):
    cpu = SCALES["cpu"]
    monkeypatch.chdir(REPO)
    study = Study(cpu, Path("out"), Path("runs"), None, cpu.experiments, None, True)
    # the closed forms' grid and radius: those of the experiment they stand beside (Exp 3's config stack)
    assert export.closed_form_flags(study, "cf_local_single") == {
        "counts": "1-3", "kind": "local", "label-mode": "single", "grid-size": 16, "radius": 2}
    # colour: k up to the paper's 8 colours, and no random k-subsets (said in a line)
    from lcsbench.study.evaluate import denoiser_jobs

    jobs = denoiser_jobs(study, "color_1to5", Path("w.pt"), None, cpu.locality)
    assert "no random k-subsets run" in capsys.readouterr().out
    lengthgen = [job.argv for job in jobs if job.argv[0] == "lengthgen"]
    assert [argv[argv.index("--out") + 1] for argv in lengthgen] == ["out/color_1to5/lengthgen",
                                                                     "out/color_1to5/lengthgen_seed2"]  # + fresh seed
    assert all(argv[argv.index("--ks") + 1] == "1-8" for argv in lengthgen)
    # the paper's success rule, from its notation
    assert REGISTRY["exp3"].paper_rule == "the k requested objects and 0 to 2 others"
    assert REGISTRY["exp1"].paper_rule == "exactly the k requested objects"
    with pytest.raises(ValueError, match="model is one of"):
        Experiment("bad", "bad", "unet", "1-3", "all")
    with pytest.raises(ValueError, match="registered already"):
        records.register(REGISTRY["exp1"])


def test_the_table_says_which_conditioning_it_measured():
    from tests.test_reproduce import EXP1, lengthgen_document

    colour = lengthgen_document("all", {1: 10, 2: 3}, {1: 10, 2: 10})
    colour["protocol"]["conditioning"] = "color"
    assert rp.table_markdown("cpu", {"exp1": EXP1}, []).splitlines()[2].startswith("Location conditioning;")
    assert rp.table_markdown("cpu", {"c": colour}, []).splitlines()[2].startswith("Colour conditioning;")


def test_the_report_names_the_judge_by_its_package_path_and_sha256(tmp_path):
    from lcsbench.data.shards import file_sha256
    from lcsbench.models.judge import judge_name

    shipped = REPO / "lcsbench" / "weights" / "judge-32.pt"
    expected = {"path": "lcsbench/weights/judge-32.pt", "sha256": file_sha256(shipped)}
    assert judge_name(str(shipped)) == expected
    assert judge_name("/another/machine/lcsbench/weights/judge-32.pt") == expected  # a report made elsewhere
    own = tmp_path / "judge.ckpt"
    own.write_bytes(b"a judge")
    assert judge_name(str(own)) == {"path": "judge.ckpt", "sha256": file_sha256(own)}  # never the absolute path
