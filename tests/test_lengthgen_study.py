"""The length-generalization study in one call (analysis/lengthgen/study.py `run`), on a denoiser that draws
exactly what it is asked for and a judge that reads it back: no training, no Blender."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcsbench.analysis import lengthgen as lg
from lcsbench.diffusion.denoiser import BoundDenoiser

RES, G = 32, 16
CELL = RES // G


def painter(x, sigma, cond):
    """D(x): white blocks on the conditioned cells of a black image (the sampler ends on D exactly)."""
    blocks = (cond > 0).float().repeat_interleave(CELL, -1).repeat_interleave(CELL, -2)
    return (blocks * 2 - 1)[:, None].expand(-1, 3, -1, -1).to(x)


class CellReader:
    """A judge that reports a detection at the centre of every bright cell."""

    resolution = RES

    def detect(self, images):
        cells = images.mean(1).unfold(1, CELL, CELL).unfold(2, CELL, CELL).mean((-1, -2)) > 0
        return [{"centres": torch.tensor([[(c + 0.5) * CELL, (r + 0.5) * CELL] for r, c in one.nonzero().tolist()]),
                 "colors": []} for one in cells]


def test_run_measures_a_perfect_model_at_every_k_and_reuses_its_samples(tmp_path):
    denoiser = BoundDenoiser(painter, (3, RES, RES), "location", G)
    protocol = lg.LengthGenProtocol(lg.SuccessRule("location", (1, 2, 3)), ks=(1, 2, 3), samples_per_k=2,
                                    num_steps=2)
    seen = []
    result = lg.run(denoiser, CellReader(), protocol, samples_file=tmp_path / "samples.npz",
                    record={"note": "test"}, progress=lambda done, total: seen.append((done, total)))
    row = result.report["rows"]["model"]
    assert row["k_max"] == 3 and all(v["success_rate"] == 1.0 for v in row["per_k"].values())
    assert result.report["protocol"]["grid_size"] == G and result.report["protocol"]["note"] == "test"
    assert list(result.report["protocol"])[:3] == ["kind", "ks", "order"]
    assert result.images["model"].shape == (6, RES, RES, 3) and seen[-1] == (6, 6)
    logged = []
    again = lg.run(denoiser, CellReader(), protocol, samples_file=tmp_path / "samples.npz", log=logged.append)
    assert logged and "judging the 6 samples saved in" in logged[0]
    assert json.dumps(again.report) == json.dumps(lg.run(denoiser, CellReader(), protocol).report)
    np.testing.assert_array_equal(again.images["model"], result.images["model"])
    lg.save_figures(result, tmp_path, title="perfect")
    assert {p.name for p in tmp_path.glob("*.png")} == {"lengthgen.png", "samples_k1.png", "samples_k2.png",
                                                         "samples_k3.png"}


def test_protocol_refuses_bad_settings_before_any_work():
    rule = lg.SuccessRule("location", (1, 2, 3))
    assert lg.LengthGenProtocol(rule).ks == tuple(range(1, 13))
    assert lg.LengthGenProtocol(lg.SuccessRule("color", (1, 2, 3))).ks == tuple(range(1, 9))
    with pytest.raises(ValueError, match="k in 1..12"):
        lg.LengthGenProtocol(rule, ks=(12, 13))
    with pytest.raises(ValueError, match="tolerance"):
        lg.LengthGenProtocol(rule, tolerance_cells=0)
    with pytest.raises(ValueError, match="match rule"):
        lg.LengthGenProtocol(rule, match="box")
    with pytest.raises(ValueError, match="color protocol was asked for"):
        lg.run(BoundDenoiser(painter, (3, RES, RES), "location", G), CellReader(),
               lg.LengthGenProtocol(lg.SuccessRule("color", (1,)), ks=(1,), samples_per_k=1))
