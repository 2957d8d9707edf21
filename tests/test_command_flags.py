"""One vocabulary across commands (issue 26, item 6): every old flag name still parses, into the same value as its
new name, and says on stderr that it is deprecated; every command's --help names `python -m lcsbench <command>`,
shows defaults and an example; `reproduce` writes only current names; the locality study is one function
(`analysis.locality.run`) that runs on any denoiser."""

from __future__ import annotations

import argparse
import importlib
import shlex

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lcsbench.analysis.locality import grid_cell_centre, run
from lcsbench.cli import TOOLS, main as cli_main
from lcsbench.commands._common import CommandParser, DeprecatedAlias
from lcsbench.data.conditioning import PAPER_LOCATIONS, grid_from_locations
from lcsbench.diffusion.denoiser import BoundDenoiser


# --- the alias table, read from the parsers themselves -------------------------------------------------------------


def command_parsers() -> list[tuple[list[str], CommandParser, CommandParser]]:
    """(argv prefix, the parser that parses it, the parser holding the options) for every command and closed-form
    action."""
    found = []
    for command, (module_name, _) in TOOLS.items():
        parser = importlib.import_module(module_name).build_parser()
        for action, sub in getattr(parser, "action_parsers", {}).items():
            found.append(([command, action], parser, sub))
        if not hasattr(parser, "action_parsers"):
            found.append(([command], parser, parser))
    return found


def aliases() -> list[tuple[list[str], str, str]]:
    return [(prefix, alias.option_strings[0], alias.new) for prefix, _, holder in command_parsers()
            for alias in holder.aliases]


ALIASES = aliases()


def some_value(action: argparse.Action) -> list[str]:
    """A valid value of an option other than its default, as command-line words."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [next(str(c) for c in action.choices if c != action.default)]
    if action.type is int:
        return ["5" if action.default == 3 else "3"]
    if action.type is float:
        return ["0.25"]
    return ["some.json"]


def required_words(holder: CommandParser) -> list[str]:
    """Words that satisfy the options a parser requires (a required group: its first option)."""
    actions = [a for a in holder._actions if a.required and a.option_strings]
    actions += [group._group_actions[0] for group in holder._mutually_exclusive_groups if group.required]
    return [word for action in actions for word in (action.option_strings[0], *some_value(action))]


def test_the_alias_table_covers_the_renames_of_issue_26():
    table = {(" ".join(prefix), old): new for prefix, old, new in ALIASES}
    assert table[("sample", "--batch")] == table[("lengthgen", "--batch")] == "--batch-size"
    assert table[("locality", "--sample-steps")] == table[("features", "--sample-steps")] == "--steps"
    assert table[("sdxl", "--num-steps")] == "--steps" and table[("oracle-check", "--kind")] == "--conditioning"
    assert table[("render", "--samples")] == table[("lengthgen", "--oracle-samples")] == "--samples-per-pixel"
    assert {table[("locality", "--samples")], table[("features", "--samples")], table[("sdxl", "--samples")],
            table[("closed-form memorisation", "--samples")]} == {"--noise-draws", "--images-per-sigma",
                                                                  "--samples-per-prompt", "--samples-file"}
    assert table[("closed-form coverage", "--out")] == "--json"  # --out is a folder or the one file a command makes


@pytest.mark.parametrize("prefix, old, new", ALIASES, ids=[f"{' '.join(p)} {old}" for p, old, _ in ALIASES])
def test_an_old_flag_parses_as_its_new_name_and_says_it_is_deprecated(prefix, old, new, capsys):
    _, parser, holder = next(entry for entry in command_parsers() if entry[0] == prefix)
    value = some_value(holder._option_string_actions[new])
    base = [*prefix[1:], *required_words(holder)]
    base = [word for i, word in enumerate(base) if word != new and (i == 0 or base[i - 1] != new)]
    with_new = parser.parse_args([*base, new, *value])
    assert capsys.readouterr().err == ""
    with_old = parser.parse_args([*base, old, *value])
    assert vars(with_old) == vars(with_new)
    assert capsys.readouterr().err.splitlines() == [f"lcsbench {' '.join(prefix)}: {old} is deprecated, use {new}"]
    assert holder.flag(new) == old  # error messages name the flag as it was typed
    assert f"deprecated alias of {new}" in holder.format_help()


def test_an_error_names_the_flag_as_it_was_typed(tmp_path):
    with pytest.raises(SystemExit, match="need --noise-draws >= 1"):
        cli_main(["locality", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path), "--noise-draws", "0"])
    with pytest.raises(SystemExit, match="need --samples >= 1"):
        cli_main(["locality", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path), "--samples", "0"])


def test_a_required_option_given_by_its_old_name_is_given(capsys):
    parser = importlib.import_module("lcsbench.commands.closed_form").build_parser()
    args = parser.parse_args(["memorisation", "--spec", "s.pt", "--samples", "x.npz", "--out", "d"])
    assert args.samples_file == "x.npz"
    with pytest.raises(SystemExit):
        parser.parse_args(["memorisation", "--spec", "s.pt", "--out", "d"])
    assert "required: --samples-file" in capsys.readouterr().err
    assert parser.action_parsers["memorisation"]._option_string_actions["--samples-file"].required


# --- --help -----------------------------------------------------------------------------------------------------


HELPS = [[command] for command in TOOLS] + [["closed-form", action]
                                             for action in ("spec", "r2", "coverage", "memorisation")]


@pytest.mark.parametrize("argv", HELPS, ids=[" ".join(argv) for argv in HELPS])
def test_every_help_names_python_m_lcsbench_and_shows_defaults_and_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*argv, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m lcsbench {' '.join(argv)} ") and "__main__" not in text
    assert "default" in text and "Example" in text and "python -m lcsbench" in text.split("Example", 1)[1]
    assert "(default: None)" not in text and "(default: False)" not in text
    for line in text.splitlines():  # a default is shown once
        assert line.count("default") <= 1, line


def test_the_top_level_help_names_python_m_lcsbench(capsys):
    assert cli_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m lcsbench <command>") and "__main__" not in text


def test_oracle_check_takes_the_shipped_judge_without_judge(tmp_path):
    with pytest.raises(SystemExit, match=r"oracle-check: no judge for 48x48 images ships with lcsbench \(shipped: "):
        cli_main(["oracle-check", "--out", str(tmp_path / "oracle"), "--resolution", "48"])
    with pytest.raises(SystemExit, match="--resolution 32: the judge .*judge-64.pt was trained on 64x64 images"):
        from lcsbench.models.judge import shipped_judges

        cli_main(["oracle-check", "--judge", str(shipped_judges()[64]), "--out", str(tmp_path / "o"),
                  "--resolution", "32"])


# --- reproduce writes the current names ---------------------------------------------------------------------------


def test_reproduce_runs_every_command_with_current_flag_names(tmp_path, capsys):
    from tests.test_reproduce import fake_checkpoint, fake_render, study_argv

    assert cli_main([*study_argv(tmp_path / "empty"), "--stage", "render", "--dry-run"]) == 0
    fake_render(tmp_path / "data")
    for exp in ("exp1", "exp2", "exp3"):
        fake_checkpoint(tmp_path / "runs" / exp / "lightning_logs" / "run" / "checkpoints" / "last.ckpt", 20)
    assert cli_main([*study_argv(tmp_path), "--stage", "all", "--dry-run", "--judge", __file__]) == 0
    lines = [shlex.split(line, comments=True) for line in capsys.readouterr().out.splitlines()
             if line.startswith("python -m lcsbench") and " fit " not in line]
    commands = {words[3] for words in lines}
    assert {"render", "lengthgen", "locality", "closed-form", "reproduce"} <= commands
    for words in lines:
        parser = importlib.import_module(TOOLS[words[3]][0]).build_parser()
        parser.parse_args(words[4:])
        assert capsys.readouterr().err == "", shlex.join(words)  # no deprecated name
    assert any("--samples-per-pixel" in words for words in lines if words[3] in ("render", "lengthgen"))
    assert any("--noise-draws" in words and "--steps" in words for words in lines if words[3] == "locality")


# --- the locality study as one call (analysis/locality.py: run) --------------------------------------------------


class BoxDenoiser(nn.Module):
    """A location-conditioned toy on 1-pixel grid cells: D at a pixel is a smooth function of the pixels and the
    label cells within one cell of it, so every Eq. 9 and Eq. 10 map vanishes more than one pixel away from its
    target (or its conditioner): each 90% radius is at most 1."""

    def forward(self, x, sigma, cond):
        box = torch.ones(1, 1, 3, 3, dtype=x.dtype)
        near = F.conv2d(x.mean(1, keepdim=True), box, padding=1)
        labels = F.conv2d(cond[:, None].to(x.dtype), box, padding=1)
        return torch.tanh(x + 0.3 * near) * (1 + 0.5 * labels)


def box_denoiser() -> BoundDenoiser:
    return BoundDenoiser(BoxDenoiser(), (3, 16, 16), "location", 16)


def test_the_locality_study_measures_each_scene_on_its_own_sample():
    told, done = [], []
    study = run(box_denoiser(), [0.5, 5.0], objects=2, scenes=2, noise_draws=1, steps=2, seed=3,
                progress=lambda scene, scenes: done.append((scene, scenes)), log=told.append)
    assert done == [(1, 2), (2, 2)] and [line.split(":")[0] for line in told] == ["scene 1/2", "scene 2/2"]
    assert study.conditioned[0] == [f"{x:.2f},{y:.2f}" for x, y in PAPER_LOCATIONS[:2]]
    paper = {f"{x:.2f},{y:.2f}" for x, y in PAPER_LOCATIONS}
    assert len(set(study.conditioned[1])) == 2 and set(study.conditioned[1]) <= paper  # a random 2-subset
    first = study.profiles[0]
    cells = grid_from_locations(PAPER_LOCATIONS[:2], 16).nonzero().tolist()
    assert first.pixels == [grid_cell_centre(cell, 16, 16) for cell in cells]  # the conditioned cells' centres
    for profile in study.profiles:
        assert profile.pixel_radius.shape == (2, 2) and float(profile.pixel_radius.max()) <= 1
        assert profile.conditional_radius.shape == (2, 2) and float(profile.conditional_radius.max()) <= 1
    assert all(sample.shape == (3, 16, 16) and float(sample.abs().max()) <= 1 for sample in study.samples)
    assert not torch.equal(study.samples[0], study.samples[1])  # each scene its own sample
    summary = study.summary()
    assert summary["scenes"] == 2 and summary["noise_draws"] == summary["samples"] == 1
    assert summary["scene_conditioned"] == study.conditioned and len(summary["pixel_radius_per_scene"]) == 2
    again = run(box_denoiser(), [0.5, 5.0], objects=2, scenes=2, noise_draws=1, steps=2, seed=3)
    assert torch.equal(again.samples[1], study.samples[1]) and torch.equal(again.profiles[1].heat, study.profiles[1].heat)


def test_the_locality_study_takes_fixed_targets_and_refuses_a_count_beyond_the_paper():
    study = run(box_denoiser(), [1.0], objects=1, noise_draws=2, steps=2, targets=[(4, 7)])
    assert study.profiles[0].pixels == [(4, 7)] and study.profiles[0].heat.shape == (1, 1, 16, 16)
    heat = study.profiles[0].heat[0, 0]
    assert float(heat[4, 7]) > 0 and float(heat[:, :5].sum() + heat[:, 9:].sum() + heat[:3].sum() + heat[6:].sum()) == 0
    with pytest.raises(ValueError, match="1..12 of the paper's locations; found 13"):
        run(box_denoiser(), [1.0], objects=13)
