"""Checkpoints handed to `fit`/`validate` are data, never code (issue 25, items 1, 2, 4 and the checkpoint cases
of item 14): URLs are refused unless asked for, and then read weights-only; a checkpoint's class path is never
imported; the configured model and hyperparameters win; broken files end in one line that says what to do."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from lcsbench.checkpoints import ARCH_KEY
from lcsbench.cli import main as cli_main
from lcsbench.cli import run as cli_run
from lcsbench.models.edm2 import EDM2Diffusion
from tests.test_edm2_training import REPO, micro_config, micro_net


class WritesAFile:
    """Unpickling this object creates a file: the proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@contextlib.contextmanager
def http_server(folder: Path):
    """A real HTTP server on 127.0.0.1 serving `folder`; yields (base URL, list of requested paths)."""
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - http.server's signature
            requested.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


def fit_args(tmp_path: Path, data_root: Path | str, *extra: str, command: str = "fit") -> list[str]:
    return [command, "--config", str(REPO / "configs" / "quickstart.yaml"),
            "--config", str(micro_config(tmp_path, data_root)), *extra]


@pytest.fixture
def evil_checkpoint(tmp_path):
    """A served folder holding a checkpoint whose pickled object writes `marker` when unpickled."""
    served, marker = tmp_path / "served", tmp_path / "payload-ran"
    served.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.01}, "payload": WritesAFile(marker)},
               served / "evil.ckpt")
    return served, marker


# --- item 1: URLs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_url_checkpoint_is_refused_without_being_fetched(command, evil_checkpoint, tmp_path, monkeypatch, capsys):
    served, marker = evil_checkpoint
    monkeypatch.chdir(tmp_path)
    with http_server(served) as (url, requested):
        argv = fit_args(tmp_path, tmp_path / "no-data", "--ckpt_path", f"{url}/evil.ckpt", command=command)
        with pytest.raises(ValueError, match="is a URL: lcsbench does not load remote checkpoints unless asked"):
            cli_main(argv)
        assert cli_run(argv) == 2  # from a terminal: one line, exit 2, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"lcsbench {command}: error:") and "--allow_remote_ckpt true" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert requested == [] and not marker.exists()


def test_an_opted_in_url_is_read_weights_only(evil_checkpoint, tmp_path, monkeypatch):
    served, marker = evil_checkpoint
    monkeypatch.chdir(tmp_path)
    with http_server(served) as (url, requested):
        with pytest.raises(ValueError, match="could run code when unpickled: refused"):
            cli_main(fit_args(tmp_path, tmp_path / "no-data", "--ckpt_path", f"{url}/evil.ckpt",
                              "--allow_remote_ckpt", "true"))
    assert requested == ["/evil.ckpt"]  # fetched once, then refused by lcsbench's reader
    assert not marker.exists()


def test_every_checkpoint_the_trainer_loads_goes_through_the_weights_only_reader(clevr_shards, evil_checkpoint,
                                                                                 tmp_path, monkeypatch):
    """Past the CLI's own check: the Trainer's loader itself is lcsbench's (a URL, or a pickled local file)."""
    from lcsbench.commands.trainer import build_cli

    served, marker = evil_checkpoint
    monkeypatch.chdir(tmp_path)
    cli = build_cli(fit_args(tmp_path, clevr_shards)[1:], run=False)
    cli.protect_checkpoint_loading()
    with pytest.raises(ValueError, match="could run code when unpickled"):
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(served / "evil.ckpt"))
    with http_server(served) as (url, requested):
        with pytest.raises(ValueError, match="is a URL"):
            cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=f"{url}/evil.ckpt")
    assert requested == [] and not marker.exists()


# --- item 2: the checkpoint's class path ------------------------------------------------------------------------


@pytest.mark.parametrize("class_path", ["this.Nope", "lightning.pytorch.demos.boring_classes.BoringModel"])
def test_a_checkpoint_naming_another_model_class_is_refused_before_importing_it(class_path, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "plain.ckpt"  # plain data: it passes weights_only, so only the class check can stop it
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": class_path, "lr": 0.01}}, ckpt)
    assert "this" not in sys.modules
    with pytest.raises(ValueError, match=rf"asks to build '{class_path}', which is not one of lcsbench's"):
        cli_main(fit_args(tmp_path, tmp_path / "no-data", "--ckpt_path", str(ckpt)))
    assert "this" not in sys.modules  # `import this` prints the Zen of Python: it never ran
    assert "Zen of Python" not in capsys.readouterr().out


def test_a_colour_checkpoint_under_a_location_config_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    colour = EDM2Diffusion(net=micro_net(label_dim=8), conditioning="color")
    ckpt = tmp_path / "colour.ckpt"
    torch.save({ARCH_KEY: colour.describe(), "state_dict": colour.state_dict(),
                "hyper_parameters": {"_class_path": "lcsbench.models.edm2.EDM2Diffusion", "conditioning": "color"}},
               ckpt)
    with pytest.raises(ValueError, match=r"holds another network than the config builds \(label_dim: 8 in the "
                                         r"checkpoint, 256 configured\)"):
        cli_main(fit_args(tmp_path, tmp_path / "no-data", "--ckpt_path", str(ckpt)))


# --- item 14: broken checkpoint files ----------------------------------------------------------------------------


@pytest.mark.parametrize("content, found", [(b"", "is empty"), (b"PK\x03\x04" + b"\0" * 200, "is truncated")])
def test_a_broken_checkpoint_names_the_ones_to_resume_from(content, found, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "runs" / "x" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("epoch=0-step=200.ckpt", "epoch=1-step=400.ckpt"):
        (checkpoints / name).write_bytes(b"stands in for a good checkpoint")
    (checkpoints / "last.ckpt").write_bytes(content)
    with pytest.raises(ValueError, match=rf"last.ckpt .*{found}.*--ckpt_path \S*epoch=1-step=400.ckpt"):
        cli_main(fit_args(tmp_path, tmp_path / "no-data", "--ckpt_path", str(checkpoints / "last.ckpt")))


def test_sample_refuses_an_empty_or_malformed_checkpoint_in_one_line(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    argv = ["sample", "--ckpt", str(empty), "--locations", "paper:2", "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit, match="is empty"):
        cli_main(argv)
    malformed = tmp_path / "malformed.ckpt"
    torch.save({ARCH_KEY: {"net_class": "lcsbench.nn.edm2.Precond", "net_config": [1, 2]}, "state_dict": {}},
               malformed)
    with pytest.raises(SystemExit, match="malformed architecture record.*net_config is list.*module_class is missing"):
        cli_main(["sample", "--ckpt", str(malformed), "--locations", "paper:2", "--out", str(tmp_path / "g.png")])
    assert not (tmp_path / "g.png").exists()


# --- item 4 (and item 1's opt-in path): a resume through a URL with a new learning rate -----------------------------


# fine-tuning into a new version folder: Lightning says, truly, that the old best-model bookkeeping stays behind
@pytest.mark.filterwarnings("ignore:The dirpath has changed from:UserWarning")
def test_a_configured_lr_wins_over_the_resumed_checkpoints(clevr_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(fit_args(tmp_path, clevr_shards, "--trainer.max_steps", "2")) == 0
    first = tmp_path / "runs" / "quickstart" / "lightning_logs" / "version_0"
    capsys.readouterr()
    with http_server(first / "checkpoints") as (url, requested):
        assert cli_main(fit_args(tmp_path, clevr_shards, "--trainer.max_steps", "4", "--model.init_args.lr", "0.005",
                                 "--ckpt_path", f"{url}/last.ckpt", "--allow_remote_ckpt", "true")) == 0
    assert requested == ["/last.ckpt"]
    assert "resuming with model lr = 0.005 as configured" in capsys.readouterr().err
    resumed = torch.load(tmp_path / "runs/quickstart/lightning_logs/version_1/checkpoints/last.ckpt",
                         weights_only=True)
    assert resumed["global_step"] == 4 and resumed["hyper_parameters"]["lr"] == 0.005
    assert resumed["lr_schedulers"][0]["base_lrs"] == [pytest.approx(0.005)]
    assert resumed["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(0.005)
    # item 10: snapshots carry the run's id, and a resumed run keeps it
    run_ids = {torch.load(p, weights_only=True)["run_id"] for p in tmp_path.glob("runs/quickstart/*/*/phema/*.pt")}
    assert len(run_ids) == 1 and None not in run_ids
