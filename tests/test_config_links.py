"""The grid stated once (issue 26 item 3): the data's grid_size and conditioning reach the model and the net's label
width through LightningCLI links, a config that contradicts them is refused at parse time, and no shipped config
states them twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.models.judge import JudgeModule
from lcsbench.models.patch import PatchLocalDiffusion

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMOKE = REPO / "configs" / "reproduce" / "smoke"
SMOKE_EXP3 = ("--config", str(SMOKE / "base.yaml"), "--config", str(SMOKE / "patch.yaml"), "--config",
              str(SMOKE / "exp3.yaml"))  # the smoke scale's Exp 3: its base, the patch layer, its delta


def parse(tmp_path, monkeypatch, root, *args: str):
    from lcsbench.commands.trainer import build_cli

    monkeypatch.chdir(tmp_path)
    return build_cli([*args, "--data.init_args.root", str(root)], run=False)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO / "configs")) for c in CONFIGS])
def test_no_shipped_config_states_the_grid_twice(config):
    document = yaml.safe_load(config.read_text())
    model = document if config.parent.name == "models" else document.get("model") or {}  # a shared model section
    if isinstance(model, str):  # `model: models/<name>.yaml`: the section is read from that file
        model = yaml.safe_load((config.parent / model).read_text())
    init_args = model.get("init_args") or {}
    net_args = (init_args.get("net") or {}).get("init_args") or {}
    assert not {"grid_size", "conditioning"} & set(init_args), f"{config}: the model's grid/conditioning come from data"
    assert "label_dim" not in net_args, f"{config}: the net's label_dim comes from the data (or the patch radius)"


@pytest.mark.parametrize(("extra", "kind", "grid", "label_dim"), [
    ((), "location", 16, 256),
    (("--data.init_args.grid_size", "8"), "location", 8, 64),
    (("--data.init_args.conditioning", "color"), "color", 16, 8),
])
def test_the_data_sets_the_models_grid_conditioning_and_label_width(extra, kind, grid, label_dim, clevr_shards,
                                                                     tmp_path, monkeypatch):
    cli = parse(tmp_path, monkeypatch, clevr_shards, "--config", str(QUICKSTART), *extra)
    assert isinstance(cli.model, EDM2Diffusion)
    assert (cli.model.conditioning, cli.model.grid_size, cli.model.net.label_dim) == (kind, grid, label_dim)
    assert (cli.datamodule.conditioning, cli.datamodule.grid_size) == (kind, grid)
    assert cli.datamodule.label_dim == cli.model.net.label_dim


@pytest.mark.parametrize(("radius", "label_dim"), [(1, 11), (2, 27)])
def test_the_patch_models_label_width_follows_its_radius(radius, label_dim, clevr_shards, tmp_path, monkeypatch):
    window = 2 * radius + 1  # the smoke config's 4 px cells: a patch of (2r+1) cells is 4 (2r+1) px
    cli = parse(tmp_path, monkeypatch, clevr_shards, *SMOKE_EXP3,
                "--model.init_args.radius", str(radius), "--model.init_args.net.init_args.img_resolution",
                str(4 * window))
    assert isinstance(cli.model, PatchLocalDiffusion)
    assert (cli.model.grid_size, cli.model.net.label_dim) == (8, label_dim)


def test_the_judge_takes_the_grid_and_nothing_else(clevr_shards, tmp_path, monkeypatch):
    cli = parse(tmp_path, monkeypatch, clevr_shards, "--config", str(REPO / "configs" / "judge32.yaml"),
                "--data.init_args.grid_size", "8")
    assert isinstance(cli.model, JudgeModule) and cli.model.hparams.grid_size == 8


@pytest.mark.parametrize(("override", "key"), [
    (("--model.init_args.net.init_args.label_dim", "100"), "model.init_args.net.init_args.label_dim: 100"),
    (("--model.init_args.grid_size", "8"), "model.init_args.grid_size: 8"),
    (("--model.init_args.conditioning", "color"), "model.init_args.conditioning: 'color'"),
])
def test_a_config_contradicting_the_data_is_refused_at_parse_time(override, key, clevr_shards, tmp_path,
                                                                  monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse(tmp_path, monkeypatch, clevr_shards, "--config", str(QUICKSTART), *override)
    err = capsys.readouterr().err
    assert key in err and "contradicts" in err and "remove" in err


def test_a_config_stating_the_linked_values_consistently_still_parses(clevr_shards, tmp_path, monkeypatch):
    """Run folders' config.yaml (written after the links) and older configs state them: equal values are accepted."""
    cli = parse(tmp_path, monkeypatch, clevr_shards, "--config", str(QUICKSTART),
                "--model.init_args.grid_size", "16", "--model.init_args.conditioning", "location",
                "--model.init_args.net.init_args.label_dim", "256")
    assert (cli.model.grid_size, cli.model.net.label_dim) == (16, 256)


def test_the_patch_model_refuses_colour_data(clevr_shards, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="conditions on location cells"):  # when the model is built
        parse(tmp_path, monkeypatch, clevr_shards, *SMOKE_EXP3, "--data.init_args.conditioning",
              "color")
