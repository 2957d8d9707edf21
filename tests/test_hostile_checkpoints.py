"""Checkpoints never run code when loaded (issue 17, item 1): a pickled object is refused before it is
unpickled, and an architecture record may name only lcsbench's own classes."""

from __future__ import annotations

import pytest
import torch

from lcsbench.checkpoints import ARCH_KEY, JUDGE_ARCH_KEY, register_class, REBUILDABLE
from lcsbench.cli import main as cli_main
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.models.loaders import load_denoiser
from lcsbench.models.judge import load_judge
from lcsbench.nn.edm2 import preset


class WritesAFile:
    """Unpickling this object creates a file: the proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_object_in_a_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({ARCH_KEY: {}, "state_dict": {}, "payload": WritesAFile(marker)}, ckpt)
    with pytest.raises(ValueError, match="could run code when unpickled: refused"):
        load_denoiser(ckpt)
    with pytest.raises(SystemExit, match="could run code when unpickled"):
        cli_main(["sample", "--ckpt", str(ckpt), "--locations", "paper:1", "--out", str(tmp_path / "g.png")])
    with pytest.raises(ValueError, match="could run code"):
        load_judge(ckpt)
    assert not marker.exists()


def test_a_record_naming_a_foreign_class_is_refused(tmp_path):
    marker = tmp_path / "ran"
    record = {"net_class": "os.system", "net_config": {"command": f"touch {marker}"},
              "module_class": "lcsbench.models.edm2.EDM2Diffusion", "module_hparams": {}}
    ckpt = tmp_path / "plain.ckpt"
    torch.save({ARCH_KEY: record, "state_dict": {}}, ckpt)  # plain data: passes weights_only=True
    with pytest.raises(ValueError, match=r"asks to build 'os\.system', which is not one of lcsbench's"):
        load_denoiser(ckpt)
    torch.save({JUDGE_ARCH_KEY: {**record, "module_hparams": {"resolution": 32}}, "state_dict": {}}, ckpt)
    with pytest.raises(ValueError, match=str(ckpt)):
        load_judge(ckpt)
    assert not marker.exists()


class UserDiffusion(EDM2Diffusion):
    """A user's own LightningModule (here a plain subclass)."""


def test_a_registered_user_class_rebuilds(tmp_path):
    module = UserDiffusion(preset("tiny", label_dim=256))
    ckpt = tmp_path / "user.ckpt"
    torch.save({ARCH_KEY: module.describe(), "state_dict": module.state_dict()}, ckpt)
    with pytest.raises(ValueError, match="register_class"):
        load_denoiser(ckpt)
    try:
        register_class(UserDiffusion)
        with pytest.warns(UserWarning, match="holds no power-function EMA"):  # saved without the EMA callback
            assert type(load_denoiser(ckpt)) is UserDiffusion
    finally:
        REBUILDABLE.discard(f"{__name__}.UserDiffusion")
