"""`python -m lcsbench reproduce`: the report functions on hand-made outputs, the stage logic (skip,
resume, dry run, refusals) on hand-made files, the EMA export, and the smoke scale end to end (slow: Blender,
three fits, lengthgen with its oracle row and locality, as subprocesses)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lcsbench.analysis import report as rp
from lcsbench.cli import main as cli_main
from lcsbench.commands import reproduce  # noqa: F401 - registers the study's experiments
from lcsbench.study import evaluate, goals, runner
from lcsbench.study.records import REGISTRY
from lcsbench.study.scales import SCALES, config_paths, read_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- hand-made evaluation outputs ---------------------------------------------------------------------------------


def lengthgen_document(label_mode: str, successes: dict[int, int], oracle: dict[int, int], samples: int = 10) -> dict:
    """A lengthgen.json with the given successes per k (model and oracle rows), as analysis/lengthgen/tally.py lays out."""
    def row(counts: dict[int, int]) -> dict:
        per_k = {str(k): {"samples": samples, "successes": s, "success_rate": s / samples, "mean_missing": 0.5,
                          "mean_extra": 0.25, "mean_detected": k, "count_histogram": {str(k): samples}}
                 for k, s in counts.items()}
        rates = {k: s / samples for k, s in counts.items()}
        return {"k_max": first_failure(rates, 0.25), "k_max_strict": first_failure(rates, 0.5), "per_k": per_k}

    protocol = {"kind": "location", "ks": sorted(successes), "order": "paper", "tolerance_cells": 1.0, "grid_size": 8,
                "resolution": 32, "trained_counts": [1, 2, 3], "label_mode": label_mode, "samples_per_k": samples,
                "success_rule": f"the {label_mode} rule", "judge": "hand-made"}
    return {"protocol": protocol, "rows": {"model": row(successes), "oracle": row(oracle)}}


def first_failure(rates: dict[int, float], threshold: float) -> int:
    k = 0
    while k + 1 in rates and rates[k + 1] > threshold:
        k += 1
    return k


def locality_document(conditional_at_high: float, spread: float = 1.0) -> dict:
    return {"sigmas": [0.5, 40.0], "fraction": 0.9, "pixel_radius_mean": [2.0, 3.0],
            "conditional_radius_mean": [4.0, conditional_at_high], "pixel_radius_scene_std": [0.5, 0.5],
            "conditional_radius_scene_std": [0.5, spread]}


def locality_maps(seed: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    return {"sigmas": np.array([0.5, 40.0]), "sample": generator.uniform(-1, 1, (3, 32, 32)),
            "pixels": np.array([[10, 22], [18, 6]]), "heat": generator.uniform(0, 1, (2, 2, 32, 32)),
            "conditioners": np.array([[2, 5], [5, 2]]), "influence": generator.uniform(0, 1, (2, 2, 32, 32)),
            "conditioner_centres": np.array([[10, 22], [22, 10]])}


EXP1 = lengthgen_document("all", {1: 10, 2: 9, 3: 8, 4: 4, 5: 1}, {k: 10 for k in range(1, 6)})
EXP2 = lengthgen_document("single", {1: 7, 2: 2, 3: 0, 4: 0, 5: 0}, {k: 10 for k in range(1, 6)})
EXP3 = lengthgen_document("single", {1: 10, 2: 10, 3: 9, 4: 6, 5: 3}, {1: 10, 2: 10, 3: 10, 4: 9, 5: 8})


def write_evaluation(out: Path, exp: str, lengthgen: dict, conditional_at_high: float, seed: int) -> None:
    from PIL import Image

    folder = out / exp / "lengthgen"
    folder.mkdir(parents=True)
    (folder / "lengthgen.json").write_text(json.dumps(lengthgen))
    for k in lengthgen["protocol"]["ks"]:
        Image.fromarray(np.full((20, 20, 3), 40 * k, dtype=np.uint8)).save(folder / f"samples_k{k}.png")
    locality = out / exp / "locality"
    locality.mkdir(parents=True)
    (locality / "locality.json").write_text(json.dumps(locality_document(conditional_at_high)))
    np.savez_compressed(locality / "locality_maps.npz", **locality_maps(seed))


ROWS = {name: rp.Row(r.title, r.paper, r.colour, r.prediction) for name, r in REGISTRY.items()}


def goal_checks(experiments: dict, localities: dict | None = None, timings: dict | None = None) -> list[dict]:
    """The cpu scale's pre-registered goals (its trained experiments' records, Figure 2's pair, the time budget)."""
    records = [REGISTRY[name] for name in SCALES["cpu"].experiments if REGISTRY[name].trained]
    return goals.goal_checks(records, experiments, localities, timings)


# --- the report functions -----------------------------------------------------------------------------------------


def test_wilson_interval_matches_the_formula_worked_by_hand():
    # 8 of 10, z = 1.96: z^2 = 3.8415, d = 1.38415, centre = (0.8 + 0.19207) / d = 0.71673,
    # half = 1.96 sqrt(0.016 + 0.0096037) / d = 0.22659, so (0.4902, 0.9433)
    low, high = rp.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # 0 of n: from 0 to z^2 / (n + z^2); n of n: mirrored
    assert rp.wilson_interval(0, 2) == pytest.approx((0.0, 3.8415 / 5.8415), abs=1e-4)
    assert rp.wilson_interval(32, 32)[1] == pytest.approx(1.0) and rp.wilson_interval(32, 32)[0] < 1
    assert rp.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= samples"):
        rp.wilson_interval(3, 2)


def test_summaries_and_goals_from_hand_made_rows():
    experiments = {"exp1": rp.experiment_summary(EXP1), "exp2": rp.experiment_summary(EXP2)}
    assert experiments["exp1"]["k_max"] == 4 and experiments["exp1"]["k_max_strict"] == 3
    assert experiments["exp2"]["k_max_notation"] == "1+(0-2)"
    assert experiments["exp1"]["success"]["3"] == 0.8
    assert experiments["exp1"]["success_interval"]["3"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    oracle = rp.oracle_summary(EXP3)
    assert oracle["passes_90_up_to_k"] == 4 and oracle["k_max"] == 5
    goals = {g["id"]: g for g in goal_checks(experiments, {"exp1": locality_document(3.0),
                                                              "exp2": locality_document(12.0)})}
    assert goals["exp1_length_generalizes"]["passed"] is True
    assert goals["exp2_learned_its_conditioner"]["passed"] is True  # k = 1: 7/10 >= 50%
    assert goals["exp2_fails"]["passed"] is True and goals["exp2_fails"]["measured"]["k_max"] == 1
    assert goals["exp3_length_generalizes"]["passed"] is None  # not run
    assert goals["figure2_conditional_locality"]["passed"] is True
    assert goals["figure2_conditional_locality"]["measured"]["per_sigma"] == {
        "40": {"exp1": 3.0, "exp2": 12.0, "spread": 1.0}}
    assert goals["fig4_local_length_generalizes"]["passed"] is None and "study_time" not in goals  # not run
    # the gap must exceed the spread across scenes: 9 px apart with scenes spread 10 px is no evidence
    spread = goal_checks(experiments, {"exp1": locality_document(3.0, 10.0), "exp2": locality_document(12.0)})
    assert {g["id"]: g for g in spread}["figure2_conditional_locality"]["passed"] is False
    # the study's busy time: overlapping commands (two fits side by side) count once
    timings = {"fit exp1": {"seconds": 3600, "finished": "2026-01-01T02:00:00"},
               "fit exp2": {"seconds": 1800, "finished": "2026-01-01T01:45:00"},
               "lengthgen exp1": {"seconds": 900, "finished": "2026-01-01T05:15:00"}}
    assert rp.busy_hours(timings) == 1.25
    timed = {g["id"]: g for g in goal_checks(experiments, timings=timings)}["study_time"]
    assert timed["passed"] is None  # the study's time counts once every model is evaluated: only two are here
    everything = {name: experiments["exp1"] for name in SCALES["cpu"].experiments if REGISTRY[name].trained}
    timed = {g["id"]: g for g in goal_checks(everything, timings=timings)}["study_time"]
    assert timed["passed"] is True and timed["measured"] == {"busy_hours": 1.25}
    # an Exp 2 that never learned its conditioner (k = 1 below 50%) is no evidence of the failure
    weak = rp.experiment_summary(lengthgen_document("single", {1: 4, 2: 0}, {1: 10, 2: 10}))
    goals = {g["id"]: g for g in goal_checks({"exp2": weak})}
    assert goals["exp2_learned_its_conditioner"]["passed"] is False and goals["exp2_fails"]["passed"] is False


def test_table_and_figures_from_hand_made_outputs():
    lengthgens = {"exp1": EXP1, "exp2": EXP2, "exp3": EXP3}
    experiments = {e: rp.experiment_summary(d) for e, d in lengthgens.items()}
    randoms = {"exp1": lengthgen_document("all", {1: 10, 2: 5, 3: 2, 4: 0, 5: 0}, {k: 10 for k in range(1, 6)})}
    table = rp.table_markdown("cpu", lengthgens, goal_checks(experiments), {"exp1": {1: "exp1/x.png"}}, randoms,
                              rows=ROWS)
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| Exp ")}
    assert rows["| Exp 1: global EDM2, all objects labelled"].split(" | ")[1:6] == [
        "1-3 objects, all labels", "9", "4", "3", "2"]  # ..., random k-subsets k_max
    assert rows["| Exp 2: global EDM2, one object labelled"].split(" | ")[2:4] == ["1+(0-2)", "1+(0-2)"]
    assert rows["| Exp 3: patch-local EDM2, one object labelled"].split(" | ")[2:4] == ["9+(0-2)", "5+(0-2)"]
    # k = 3 of Exp 1: 8/10 succeed, every sample has 3 objects (count rate 1), random subsets 2/10, oracle 10/10
    assert "| 3 | 0.80 [0.49, 0.94] (8/10) | 1.00 | 0.20 [0.06, 0.51] (2/10) | 1.00 [0.72, 1.00] (10/10) |" in table
    assert "[k=1](exp1/x.png)" in table
    figures = [rp.success_figure(lengthgens), rp.locality_radius_figure({"exp1": locality_document(3.0)}),
               rp.locality_maps_figure({"exp1": locality_maps(0), "exp2": locality_maps(1)})]
    assert all(len(f.axes) >= 1 for f in figures)
    # the oracle rows of exp1 and exp2 agree, so the success figure draws them once: 3 models + 2 oracles
    assert len(figures[0].axes[0].get_lines()) == 5 + 2  # + the 25% and 50% threshold lines
    assert figures[2].axes[0].images and len(figures[2].axes) == 2 * 4  # sample, pixel map, 2 conditioners


LOCAL_MACHINE = lengthgen_document("single", {1: 10, 2: 10, 3: 10, 4: 9, 5: 8}, {k: 10 for k in range(1, 6)})
EMPIRICAL = lengthgen_document("all", {1: 10, 2: 10, 3: 9, 4: 0, 5: 0}, {k: 10 for k in range(1, 6)})


def write_r2(out: Path, exp: str, names: list[str], high: list[float]) -> None:
    """A hand-made r2.json (closed-form r2's layout): r2 0.2 at sigma 0.5 and `high` at sigma 40 per closed form."""
    (out / exp / "r2").mkdir(parents=True)
    (out / exp / "r2" / "r2.json").write_text(json.dumps(
        {"sigmas": [0.5, 40.0], "r2": {name: [0.2, value] for name, value in zip(names, high)},
         "mse": {name: [0.1, 0.1] for name in names}}))


def test_report_stage_writes_table_json_and_figures(tmp_path, capsys):
    out = tmp_path / "out"
    for seed, (exp, document, radius) in enumerate((("exp1", EXP1, 3.0), ("exp2", EXP2, 12.0),
                                                    ("exp3", EXP3, 2.0), ("cf_local_single", LOCAL_MACHINE, 4.0),
                                                    ("cf_empirical_all", EMPIRICAL, 20.0))):
        write_evaluation(out, exp, document, radius, seed)
    write_r2(out, "exp1", ["cf_empirical_all"], [0.5])  # the smoke scale's closed forms: one per label mode
    # the committed weights sampled afresh: exp1's fresh row agrees; exp2's k = 1 (7/10 before, 0/10 now) does not
    for exp, fresh in (("exp1", EXP1), ("exp2", lengthgen_document("single", {1: 0, 2: 2, 3: 0, 4: 0, 5: 0}, {}))):
        (out / exp / "lengthgen_seed2").mkdir(parents=True)
        fresh = {**fresh, "protocol": {**fresh["protocol"], "seed": 2}}
        (out / exp / "lengthgen_seed2" / "lengthgen.json").write_text(json.dumps(fresh))
    write_r2(out, "exp2", ["cf_local_single"], [0.3])
    write_r2(out, "exp3", ["cf_local_single"], [0.9])
    argv = ["reproduce", "--scale", "smoke", "--out", str(out), "--runs", str(tmp_path / "runs"), "--data",
            str(tmp_path / "data"), "--stage", "report"]
    assert cli_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["experiments"]["exp1"]["k_max"] == 4 and report["experiments"]["exp1"]["k_max_strict"] == 3
    assert report["experiments"]["exp2"]["success"] == {"1": 0.7, "2": 0.2, "3": 0.0, "4": 0.0, "5": 0.0}
    assert report["experiments"]["exp3"]["weights"] == str(out / "weights" / "exp3.pt")
    assert report["oracle"]["success"]["3"] == 1.0 and report["oracle"]["passes_90_up_to_k"] == 5
    assert {g["id"]: g["passed"] for g in report["goals"]} == {
        "exp1_length_generalizes": True, "exp2_learned_its_conditioner": True, "exp2_fails": True,
        "exp3_length_generalizes": True, "figure2_conditional_locality": True, "study_time": None,
        # the whole paper's goals need models the smoke scale does not train
        "trend_exp1": None, "labels_restore": None, "colour_trend": None, "figure5_disentangled": None,
        "hypothesis": None}  # the smoke scale has no Figure 4 pair, and no timings in this study
    assert report["machine"]["cpus"] >= 1 and report["paper_table1"]["exp3"] == "9+(0-2)"
    for name in ("success_vs_k", "locality_radius", "locality_maps"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert "| Exp 1: global EDM2, all objects labelled | 1-3 objects, all labels | 9 | 4 | 3 | - |" in \
        (out / "table.md").read_text()
    assert "--stage report" in (out / "commands.sh").read_text()
    # the closed forms (issue 23): beside the trained models, by label mode and kind, with the r2 yardstick
    closed = report["closed_form"]
    assert closed["single"]["local"]["k_max"] == 5 and closed["all"]["empirical"]["k_max"] == 3
    assert closed["single"]["local"]["success"]["4"] == 0.9 and "exp1" not in closed["all"]
    assert report["r2"]["exp3"]["r2"]["cf_local_single"] == [0.2, 0.9]
    assert {p["prediction"]: p["passed"] for p in report["closed_form_predictions"]} == {
        "local score machine, single labels: k_max > 3": True, "empirical denoiser, all labels: k_max <= 3": True,
        "exp1 (length-generalizes) is closer to the local machine at high noise than exp2 (fails)": None,  # no
        "exp3 (length-generalizes) is closer to the local machine at high noise than exp2 (fails)": True}  # cf_local_all
    for name in ("closed_forms", "closed_forms_locality_radius", "r2"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert report["experiments"]["exp1"]["resample"]["agrees"] and report["experiments"]["exp1"]["resample"][
        "k_max"] == 4
    assert report["experiments"]["exp2"]["resample"]["per_k"]["1"] == {"seed": {"None": 0.7, "2": 0.0},
                                                                      "intervals_overlap": False}
    assert "exp3" not in report["experiments"] or "resample" not in report["experiments"]["exp3"]
    table = (out / "table.md").read_text()
    assert "| 4 (seed 2) | yes |" in table and "| 0 (seed 2) | no: k = 1 |" in table
    assert "| Closed form: local score machine, one object labelled | single | k_max > 3" in table
    assert "| exp3 | cf_local_single | 0.20 | 0.90 |" in table
    capsys.readouterr()
    assert cli_main(argv) == 0  # nothing newer than report.json: skipped
    assert "skipped" in capsys.readouterr().out
    # a half-written report.json (a crash while writing) is named and rebuilt, though newer than its inputs
    (out / "report.json").write_text(json.dumps(report)[:200])
    assert cli_main(argv) == 0
    assert "report.json is unreadable" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["experiments"]["exp1"]["k_max"] == 4
    assert not list(out.glob("*.partial"))  # written whole, then renamed


def test_swapped_weights_are_caught_by_their_recorded_sha256(tmp_path, capsys):
    from lcsbench.data.shards import file_sha256

    out = tmp_path / "out"
    weights = out / "weights"
    weights.mkdir(parents=True)
    (weights / "exp1.pt").write_bytes(b"the exported weights")
    record = {"exported": "2024-01-01T00:00:00", "step": 20, "sha256": file_sha256(weights / "exp1.pt")}
    (weights / "exp1.json").write_text(json.dumps(record))
    folder = out / "exp1" / "lengthgen"
    folder.mkdir(parents=True)
    (folder / "lengthgen.json").write_text("{}")
    evaluate.stamp(folder, weights / "exp1.pt", record)
    assert evaluate.evaluation_is_current(folder, "lengthgen.json", record)
    (weights / "exp1.pt").write_bytes(b"other weights, same name")  # swapped after the export
    argv = ["reproduce", "--scale", "smoke", "--out", str(out), "--runs", str(tmp_path / "no-runs"),
            "--experiments", "exp1"]
    with pytest.raises(SystemExit, match="exp1.pt does not match the sha256 its export recorded"):
        cli_main([*argv, "--stage", "evaluate"])
    # export notices too: with no run to export from, it refuses instead of keeping the swapped file
    with pytest.raises(SystemExit, match="no trained run at"):
        cli_main([*argv, "--stage", "export"])
    assert "does not match the sha256 its export recorded: exporting again" in capsys.readouterr().out
    # an evaluation stamped for other weights is not current
    assert not evaluate.evaluation_is_current(folder, "lengthgen.json", {**record, "sha256": "0" * 64})


# --- the stage logic on hand-made files ---------------------------------------------------------------------------


def test_a_study_stopped_before_a_locality_run_still_reports_its_rows(tmp_path):
    out = tmp_path / "out"
    for seed, (exp, document, radius) in enumerate((("exp1", EXP1, 3.0), ("exp2", EXP2, 12.0),
                                                    ("exp3", EXP3, 2.0))):
        write_evaluation(out, exp, document, radius, seed)
    shutil.rmtree(out / "exp3" / "locality")  # stopped before Exp 3's locality ran
    assert cli_main(["reproduce", "--scale", "smoke", "--out", str(out), "--runs", str(tmp_path / "runs"), "--data",
                     str(tmp_path / "data"), "--stage", "report", "--experiments", "exp1,exp2,exp3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["experiments"]["exp3"]["k_max"] == 5 and "locality" not in report["experiments"]["exp3"]
    assert "locality" in report["experiments"]["exp1"] and report["experiments"]["exp3"]["locality_json"] is None
    assert {g["id"]: g["passed"] for g in report["goals"]}["figure2_conditional_locality"] is True  # exp1, exp2
    assert (out / "locality_radius.png").read_bytes()[:8] == PNG_MAGIC


def fake_render(root: Path, scale: str = "smoke") -> None:
    """A complete-looking render: the manifest of the scale's settings and its (empty) shards."""
    from lcsbench.data.scenes import parse_counts

    render = next(iter(SCALES[scale].renders.values()))
    shards = [f"n{c}/{split}-000000.tar" for c in parse_counts(render["counts"]) for split in ("train", "val")]
    settings = {"counts": list(parse_counts(render["counts"])), "per_count": render["per-count"],
                "val_per_count": render["val-per-count"], "resolution": render["resolution"],
                "samples": render["samples-per-pixel"], "seed": render["seed"], "shard_size": 1000}
    for shard in shards:
        (root / shard).parent.mkdir(parents=True, exist_ok=True)
        (root / shard).touch()
    (root / "manifest.json").write_text(json.dumps({"settings": settings, "shard_samples": {s: 1 for s in shards}}))


def fake_checkpoint(path: Path, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)


def study_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["reproduce", "--scale", "smoke", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"),
            "--data", str(tmp_path / "data"), *extra]


def test_dry_run_prints_the_stage_commands_skipping_and_resuming(tmp_path, capsys):
    fake_render(tmp_path / "data")
    runs = tmp_path / "runs"
    fake_checkpoint(runs / "exp1" / "lightning_logs" / "run" / "checkpoints" / "last.ckpt", 20)  # max_steps: done
    fake_checkpoint(runs / "exp2" / "lightning_logs" / "run" / "checkpoints" / "last.ckpt", 10)  # half way
    assert cli_main(study_argv(tmp_path, "--stage", "all", "--dry-run", "--judge", __file__)) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("python -m lcsbench")]
    fits = [c for c in commands if " fit " in c]
    assert "render: " in out and "is complete, skipped" in out and not any(" render " in c for c in commands)
    assert "fit exp1: " in out and "holds step 20 of 20, skipped" in out
    assert len(fits) == 2  # exp2 resumed, exp3 from scratch
    resume = str(runs / "exp2" / "lightning_logs" / "run" / "checkpoints" / "last.ckpt")
    assert fits[0] == ("python -m lcsbench fit --config configs/reproduce/smoke/base.yaml "
                       "--config configs/reproduce/smoke/exp2.yaml "
                       f"--trainer.logger.init_args.save_dir {runs / 'exp2'} --trainer.logger.init_args.version run "
                       f"--data.init_args.root {tmp_path / 'data'} --ckpt_path {resume}")
    assert "--ckpt_path" not in fits[1] and "exp3.yaml" in fits[1]
    assert any("--stage export --experiments exp3" in c for c in commands)
    lengthgen = [c for c in commands if " lengthgen " in c]
    # 3 experiments x (paper order, random k-subsets, a fresh seed) + the scale's 2 closed forms in the paper's order
    assert len(lengthgen) == 11 and all(f"--judge {__file__}" in c and "--ks 1-3" in c for c in lengthgen)
    assert sum("--order random" in c and "lengthgen_random" in c for c in lengthgen) == 3  # beside the paper's
    assert sum("--seed 2 --no-oracle" in c and "lengthgen_seed2" in c for c in lengthgen) == 3
    assert sum("closed_forms/cf_local_single.pt --out" in c for c in lengthgen) == 1
    assert len([c for c in commands if " locality " in c]) == 5
    specs = [c for c in commands if " closed-form spec " in c]
    assert len(specs) == 2 and all(f"--render {tmp_path / 'data'}" in c and "--grid-size 8" in c for c in specs)
    r2 = [c for c in commands if " closed-form r2 " in c]  # each model against the closed form of its labels
    assert len(r2) == 3 and "weights/exp1.pt --spec" in r2[0] and "cf_empirical_all.pt" in r2[0]
    assert all("cf_local_single.pt" in c for c in r2[1:])
    assert "(would need: evaluate exp1: no weights" in out  # noted, not refused: export would write them
    assert not (tmp_path / "out" / "commands.sh").exists()  # a dry run records nothing


def test_finished_stages_are_skipped_and_run_nothing(tmp_path, capsys):
    fake_render(tmp_path / "data")
    out = tmp_path / "out"
    for exp in ("exp1", "exp2", "exp3"):
        fake_checkpoint(tmp_path / "runs" / exp / "lightning_logs" / "run" / "checkpoints" / "last.ckpt", 20)
    assert cli_main(study_argv(tmp_path, "--stage", "fit")) == 0
    assert not (out / "commands.sh").exists()
    # committed weights with no runs beside them (a fresh clone): export keeps them
    weights = out / "weights"
    weights.mkdir(parents=True)
    for exp in ("exp1", "exp2"):
        (weights / f"{exp}.pt").write_bytes(b"weights")
        (weights / f"{exp}.json").write_text(json.dumps({"exported": "2024-01-01T00:00:00", "step": 20}))
        for folder, result in (("lengthgen", "lengthgen.json"), ("lengthgen_random", "lengthgen.json"),
                               ("lengthgen_seed2", "lengthgen.json"), ("locality", "locality_maps.npz")):
            (out / exp / folder).mkdir(parents=True)
            (out / exp / folder / result).write_text("{}")
            (out / exp / folder / "evaluated.json").write_text(json.dumps({"exported": "2024-01-01T00:00:00"}))
    capsys.readouterr()
    argv = ["reproduce", "--scale", "smoke", "--out", str(out), "--runs", str(tmp_path / "no-runs"),
            "--experiments", "exp1,exp2"]  # no judge: a finished evaluation needs none
    assert cli_main([*argv, "--stage", "export"]) == 0
    assert cli_main([*argv, "--stage", "evaluate"]) == 0
    text = capsys.readouterr().out
    assert text.count("is the current export, skipped") == 2 and text.count("exists, skipped") == 8
    assert not (out / "commands.sh").exists()
    # a new export (another stamp) makes the evaluation stale: its commands are planned again
    (weights / "exp2.json").write_text(json.dumps({"exported": "2024-02-02T00:00:00", "step": 30}))
    assert cli_main([*argv, "--stage", "evaluate", "--dry-run"]) == 0
    commands = [c for c in capsys.readouterr().out.splitlines() if c.startswith("python -m lcsbench")]
    planned = [c for c in commands if " closed-form r2 " not in c]  # r2 waits for the closed forms' specs
    assert len(planned) == 4 and all("weights/exp2.pt" in c for c in planned)


def test_the_oracle_renders_are_shared_between_experiments(tmp_path, capsys):
    out = tmp_path / "out"
    oracle = out / "exp1" / "lengthgen" / "oracle_render"
    oracle.mkdir(parents=True)
    (oracle / "manifest.json").write_text("{}")
    (oracle.parent / "lengthgen.json").write_text("{}")
    assert cli_main(study_argv(tmp_path, "--stage", "evaluate", "--experiments", "exp2", "--dry-run",
                               "--judge", __file__)) == 0
    assert f"cp -r {oracle} {out / 'exp2' / 'lengthgen' / 'oracle_render'}" in capsys.readouterr().out


@pytest.mark.parametrize("stage, needs", [
    ("fit", "run `--stage render` first"),
    ("export", "run `--stage fit` first"),
    ("evaluate", "run `--stage fit` and `--stage export` first"),
    ("report", "run `--stage evaluate` first"),
])
def test_a_stage_refuses_when_its_input_is_missing(tmp_path, stage, needs):
    if stage == "export":
        fake_render(tmp_path / "data")
    with pytest.raises(SystemExit, match=f"reproduce: .*{needs}"):
        cli_main(study_argv(tmp_path, "--stage", stage, "--judge", __file__))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--experiments takes a comma list among exp1,exp2,exp3"):
        cli_main(study_argv(tmp_path, "--experiments", "exp4"))
    with pytest.raises(SystemExit, match="--judge .* does not exist"):
        cli_main(study_argv(tmp_path, "--stage", "evaluate", "--judge", str(tmp_path / "none.ckpt")))


def test_parallel_fits_pin_each_fit_to_its_own_cores(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert runner.core_slots(2) == [[0, 2], [1, 3]] and runner.core_slots(4) == [[0], [1], [2], [3]]
    fake_render(tmp_path / "data")
    assert cli_main(study_argv(tmp_path, "--stage", "fit", "--parallel-fits", "2", "--dry-run")) == 0
    fits = [line for line in capsys.readouterr().out.splitlines() if line.startswith("taskset")]
    assert [f.split(" python")[0] for f in fits] == ["taskset -c 0,2 env OMP_NUM_THREADS=2",
                                                     "taskset -c 1,3 env OMP_NUM_THREADS=2",
                                                     "taskset -c 0,2 env OMP_NUM_THREADS=2"]
    # the evaluations too: 3 x 3 lengthgen + 2 closed forms' lengthgen, 5 locality, 3 r2, pinned in turn
    assert cli_main(study_argv(tmp_path, "--stage", "evaluate", "--parallel", "2", "--dry-run",
                               "--judge", __file__)) == 0
    pinned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("taskset")]
    assert len(pinned) == 19 and pinned[0].startswith("taskset -c 0,2 ") and pinned[1].startswith("taskset -c 1,3 ")
    assert sum(" lengthgen " in line for line in pinned) == 11 and sum(" r2 " in line for line in pinned) == 3
    with pytest.raises(SystemExit, match="--parallel 5 needs at least 5 cores"):
        cli_main(study_argv(tmp_path, "--stage", "fit", "--parallel-fits", "5"))  # the older name still works
    with pytest.raises(SystemExit, match="--parallel is a number of commands"):
        cli_main(study_argv(tmp_path, "--stage", "fit", "--parallel", "0"))


def test_a_second_reproduce_on_the_same_study_is_refused_with_the_holders_pid(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from lcsbench.study import runner\n"
         "with runner.study_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=f"another reproduce \\(pid {holder.pid}\\) is working on"):
            cli_main(study_argv(tmp_path, "--stage", "fit"))
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock went with it, and the same study runs (here: refused only for its missing data)
    with pytest.raises(SystemExit, match="run `--stage render` first"):
        cli_main(study_argv(tmp_path, "--stage", "fit"))


def test_every_scale_names_its_configs_and_a_render_that_feeds_them():
    assert set(SCALES) == {"smoke", "cpu", "paper"}
    cpu = SCALES["cpu"]
    assert cpu.resolution == 32 and list(cpu.renders) == ["1-5"] and cpu.renders["1-5"]["root"] == "data/reproduce32"
    assert cpu.experiments[:5] == ["exp1", "exp2", "exp3", "fig4_global", "fig4_local"]
    judged = [name for name in cpu.experiments if REGISTRY[name].judged and not REGISTRY[name].trained]
    assert judged == ["cf_local_all", "cf_local_single", "cf_empirical_all", "cf_empirical_single"]
    yardsticks = [name for name in cpu.experiments if not REGISTRY[name].judged]
    assert all(REGISTRY[name].closed_form == "local" for name in yardsticks) and len(yardsticks) == 8
    # Table 1's 1-3 row and Figure 4, the eleven new, the judged closed forms, the hypothesis's r2 yardsticks
    assert len(cpu.experiments) == 5 + 11 + 4 + 8
    assert not any(REGISTRY[name].counts == "1-5" for name in SCALES["paper"].experiments
                   if not REGISTRY[name].trained)  # the paper scale renders 1-3: no yardstick over 1-5
    assert all(cpu.render_for(REGISTRY[name].counts) == "1-5" for name in cpu.experiments)
    assert cpu.lengthgen["ks"] == "1-10" and cpu.lengthgen["samples-per-k"] == 32
    # patch-local sampling is ~22x the global net's work: the patch models sample with 16 Heun steps (derived from
    # the record's model kind), checked against the scale's 32 at k = 1..4; Figure 4's local model with 16 samples
    # per k and the closed forms with 8 (the 2-core study's budget)
    flags_of = {name: cpu.lengthgen_flags(REGISTRY[name]) for name in cpu.experiments}
    assert flags_of["exp3"] == flags_of["exp3_1to5"] == {**cpu.lengthgen, "steps": 16}
    assert flags_of["fig4_local"] == {**cpu.lengthgen, "steps": 16, "samples-per-k": 16}
    assert all(flags_of[name] == {**cpu.lengthgen, "steps": 16, "samples-per-k": 8} for name in cpu.experiments[-4:])
    assert flags_of["exp1"] == flags_of["exp2"] == flags_of["drop_one_1to5"] == cpu.lengthgen
    assert flags_of["color_1to5"] == {**cpu.lengthgen, "ks": "1-8"}  # the paper's 8 colours
    study = runner.Study(cpu, Path("out"), Path("runs"), None, cpu.experiments, None, True)
    assert list(evaluate.evaluations(study, "exp1")) == ["lengthgen", "lengthgen_random", "lengthgen_seed2"]
    assert evaluate.evaluations(study, "exp1")["lengthgen_seed2"] == {**cpu.lengthgen, "seed": 2, "no-oracle": True}
    # no order of locations in a colour request: no random k-subsets; a fresh seed like every trained model
    assert list(evaluate.evaluations(study, "color_1to3")) == ["lengthgen", "lengthgen_seed2"]
    assert evaluate.evaluations(study, "exp3")["lengthgen_steps32"] == {
        "ks": "1-4", "samples-per-k": 32, "steps": 32, "no-oracle": True}
    assert runner.flags({"ks": "1-4", "no-oracle": True}) == ["--ks", "1-4", "--no-oracle"]
    assert SCALES["paper"].lengthgen["ks"] == "1-12" and SCALES["paper"].resolution == 64
    for name, scale in SCALES.items():
        for exp in scale.experiments:
            record = REGISTRY[exp]
            if not record.trained:
                continue
            config = read_config(config_paths(record, name))
            data = config["data"]
            model_class = config["config"]["model"]["class_path"].rsplit(".", 1)[1]
            assert data["label_mode"] == record.label_mode, (name, exp)
            assert str(data["counts"]) == record.counts, (name, exp)
            assert data.get("conditioning", "location") == record.conditioning, (name, exp)
            assert model_class == {"global": "EDM2Diffusion", "patch": "PatchLocalDiffusion"}[record.model], exp
            assert data["resolution"] == scale.resolution, (name, exp)


def test_the_smoke_configs_parse_and_instantiate(clevr_shards, tmp_path, monkeypatch):
    from lcsbench.commands.trainer import build_cli

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    for exp in ("exp1", "exp2", "exp3"):
        stack = [item for path in config_paths(REGISTRY[exp], "smoke") for item in ("--config", str(repo / path))]
        cli = build_cli([*stack, "--data.init_args.root", str(clevr_shards)], run=False)
        assert cli.model.grid_size == cli.datamodule.grid_size == 8
        assert cli.trainer.max_steps % cli.trainer.checkpoint_callback._every_n_train_steps == 0


# --- the export -------------------------------------------------------------------------------------------------


def test_the_export_carries_the_ema_weights_and_the_training_data_settings(tmp_path):
    import argparse

    from lcsbench.callbacks.ema import PowerFunctionEMA
    from lcsbench.checkpoints import ARCH_KEY, EMA_STATE_KEY
    from lcsbench.commands.lengthgen import training_setup
    from lcsbench.checkpoints import read_checkpoint
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.models.loaders import export_ema_weights, load_denoiser
    from lcsbench.nn.edm2 import preset

    torch.manual_seed(0)
    module = EDM2Diffusion(preset("tiny", label_dim=64), grid_size=8)
    ema = PowerFunctionEMA(sigma_rels=[0.05, 0.10])
    averages = [{k: torch.randn_like(p) for k, p in module.net.named_parameters()} for _ in range(2)]
    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 7, ARCH_KEY: module.describe(), "state_dict": module.state_dict(),
                "callbacks": {EMA_STATE_KEY: {"sigma_rels": ema.sigma_rels, "gammas": ema.gammas, "step": 7,
                                              "averages": averages}},
                "datamodule_hyper_parameters": {"counts": "1-3", "label_mode": "single", "grid_size": 8,
                                                "resolution": 32}}, ckpt)
    recorded = export_ema_weights(ckpt, tmp_path / "w.pt", {"wall_seconds": 12.5, "experiment": "exp2"})
    assert recorded["step"] == 7 and recorded["sigma_rel"] == 0.05 and recorded["wall_seconds"] == 12.5
    exported = load_denoiser(tmp_path / "w.pt")
    for name, parameter in exported.net.named_parameters():
        assert torch.equal(parameter, averages[0][name]), name
    assert exported.denoiser.image_shape == (3, 32, 32) and exported.grid_size == 8
    payload = read_checkpoint(tmp_path / "w.pt", "")
    args = argparse.Namespace(trained_counts=None, label_mode=None, ckpt="w.pt")
    assert training_setup(payload, args) == ((1, 2, 3), "single")  # what lengthgen reads
    assert (tmp_path / "w.pt").stat().st_size < ckpt.stat().st_size / 2  # no optimizer state, one EMA
    # float16 storage (the study's exports): half the file, the weights as float16 rounds them, loaded as float32
    half = export_ema_weights(ckpt, tmp_path / "h.pt", {"experiment": "exp2"}, stored_dtype=torch.float16)
    assert half["stored_dtype"] == "float16" and recorded["stored_dtype"] == "float32"
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * (tmp_path / "w.pt").stat().st_size
    for name, parameter in load_denoiser(tmp_path / "h.pt").net.named_parameters():
        assert parameter.dtype == torch.float32 and torch.equal(parameter, averages[0][name].half().float()), name
    next(iter(averages[0].values())).fill_(1e6)  # beyond float16's range: refused, not stored as inf
    torch.save({**torch.load(ckpt, weights_only=False), "callbacks": {EMA_STATE_KEY: {
        "sigma_rels": ema.sigma_rels, "gammas": ema.gammas, "step": 7, "averages": averages}}}, ckpt)
    with pytest.raises(ValueError, match="exceeds torch.float16's range.*export it as float32"):
        export_ema_weights(ckpt, tmp_path / "o.pt", {}, stored_dtype=torch.float16)


# --- the smoke scale end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.blender
@pytest.mark.timeout(3600)
def test_smoke_scale_end_to_end(tmp_path, capsys):
    import lightning as L

    from lcsbench.data.datamodule import CLEVRDataModule
    from lcsbench.models.loaders import load_denoiser
    from lcsbench.models.judge import JudgeModule
    from lcsbench.nn.judge import CentreHeatmapNet

    argv = study_argv(tmp_path)
    assert cli_main([*argv, "--stage", "render"]) == 0
    torch.manual_seed(0)  # a judge fitted a few steps on the scale's own render (none ships at 32 px here)
    judge = JudgeModule(CentreHeatmapNet(channels=8, levels=2), lr=5e-3)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(judge, CLEVRDataModule(str(tmp_path / "data"), counts="1-3", batch_size=4, num_workers=0,
                                       steps_per_epoch=3, shuffle_buffer=8, resolution=32))
    trainer.save_checkpoint(tmp_path / "judge.ckpt")
    argv += ["--judge", str(tmp_path / "judge.ckpt")]
    parallel = min(2, len(os.sched_getaffinity(0)))  # two fits at once, one core each, where there are two
    assert cli_main([*argv, "--parallel-fits", str(parallel)]) == 0

    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert set(report["experiments"]) == {"exp1", "exp2", "exp3"}
    for exp, summary in report["experiments"].items():
        assert isinstance(summary["k_max"], int) and isinstance(summary["k_max_strict"], int)
        assert sorted(summary["success"]) == ["1", "2", "3"] and summary["steps"] == 20
        assert summary["wall_seconds"] > 0 and summary["config"]["trainer"]["max_steps"] == 20
        assert summary["label_mode"] == ("all" if exp == "exp1" else "single")
        module = load_denoiser(summary["weights"])  # the export alone rebuilds the model
        assert module.denoiser.image_shape == (3, 32, 32) and module.grid_size == 8
    assert sorted(report["oracle"]["success"]) == ["1", "2", "3"] and len(report["goals"]) == 11  # 5 + study time
    whole_paper = [g for g in report["goals"] if g["id"] in ("trend_exp1", "labels_restore", "colour_trend",
                                                             "figure5_disentangled", "hypothesis")]
    assert len(whole_paper) == 5 and all(g["passed"] is None for g in whole_paper)  # smoke trains none of them
    assert report["table1"]["1-3"]["exp1"]["k_max"] == report["experiments"]["exp1"]["k_max"]
    # the closed forms of the render, judged like the models, and each model's r2 against its labels' closed form
    assert set(report["closed_form"]) == {"all", "single"} and isinstance(
        report["closed_form"]["single"]["local"]["k_max"], int)
    assert set(report["r2"]) == {"exp1", "exp2", "exp3"} and list(report["r2"]["exp3"]["r2"]) == ["cf_local_single"]
    assert all(math.isfinite(v) for r2 in report["r2"].values() for v in next(iter(r2["r2"].values())))
    for name in ("success_vs_k", "locality_radius", "locality_maps"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    table = (out / "table.md").read_text()
    assert "| Exp 2: global EDM2, one object labelled | 1-3 objects, single labels | 1+(0-2) |" in table
    commands = (out / "commands.sh").read_text()
    if parallel == 2:
        assert "taskset -c 0 env OMP_NUM_THREADS=1 python -m lcsbench fit" in commands
        assert "taskset -c 1 env OMP_NUM_THREADS=1 python -m lcsbench fit" in commands
    for line in ("python -m lcsbench render --out", "configs/reproduce/smoke/exp3.yaml",
                 "python -m lcsbench lengthgen --ckpt", "python -m lcsbench locality --ckpt", "--stage report"):
        assert line in commands, line
    assert commands.count("lcsbench render --out") == 1  # the render stage skipped its finished render
    assert "cp -r" in commands  # exp2 and exp3 judged exp1's oracle renders
    # the weights work in every command that takes --ckpt
    assert cli_main(["sample", "--ckpt", str(out / "weights" / "exp3.pt"), "--locations", "paper:2", "--n", "1",
                     "--steps", "2", "--out", str(tmp_path / "grid.png"), "--device", "cpu"]) == 0

    # everything is done: a rerun skips every stage and runs nothing
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert (out / "commands.sh").read_text() == commands
    # render, 3 fits, 3 exports, 2 closed-form specs, 3 x (lengthgen, lengthgen_random, lengthgen_seed2,
    # locality), 3 r2, 2 closed forms x (lengthgen, locality), report
    assert capsys.readouterr().out.count("skipped") == 1 + 3 + 3 + 2 + 12 + 3 + 4 + 1
    assert all(report["experiments"][exp]["resample"]["seed"] == 2 for exp in ("exp1", "exp2", "exp3"))
    assert math.isfinite(report["experiments"]["exp1"]["success_interval"]["1"][1])
