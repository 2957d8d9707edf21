"""The report stage: collect the evaluation files -> summarise them (every number, the goals) -> draw the figures
-> write table.md and report.json. The statistics, tables and figures themselves are analysis/report.py's."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import lcsbench
from lcsbench.models.judge import judge_name
from lcsbench.study import paper
from lcsbench.study.evaluate import RESAMPLE, STEPS_CHECK, evaluations
from lcsbench.study.export import sidecar_mismatch
from lcsbench.study.goals import closed_form_predictions, goal_checks
from lcsbench.study.runner import Study, read_json, read_timings, write_atomic

# the report is written without them (older studies; a closed form has no export, random order or steps check;
# a study stopped early may lack a locality run: its rows stand, Figure 2 shows what was measured)
OPTIONAL_INPUTS = ("export", "random", "steps_check", "resample", "r2", "locality", "maps", "features")


def machine() -> dict:
    """Where the report was made: platform, cores, torch, GPU, lcsbench version and commit."""
    import torch

    try:
        commit = subprocess.run(["git", "-C", str(Path(lcsbench.__file__).resolve().parents[1]), "rev-parse",
                                 "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "lcsbench": lcsbench.__version__, "commit": commit}


def report_inputs(study: Study, names: list[str]) -> dict[str, dict[str, Path]]:
    """Per experiment and closed form, the evaluation files the report reads."""
    inputs = {}
    for name in names:
        folder = study.out / name
        files = {"lengthgen": folder / "lengthgen" / "lengthgen.json",
                 "locality": folder / "locality" / "locality.json",
                 "maps": folder / "locality" / "locality_maps.npz"}
        if study.record_of(name).trained:
            files |= {"random": folder / "lengthgen_random" / "lengthgen.json",
                      "steps_check": folder / STEPS_CHECK[0] / "lengthgen.json",
                      "resample": folder / RESAMPLE[0] / "lengthgen.json",
                      "export": study.weights(name).with_suffix(".json"), "r2": folder / "r2" / "r2.json"}
        if study.record_of(name).trained and study.record_of(name).conditioning == "color":
            files["features"] = folder / "features" / "features.json"  # Figure 5
        inputs[name] = files
    return inputs


def reported_experiments(study: Study) -> list[str]:
    """The experiments the report shows: every chosen one (--experiments), or by default those evaluated so far
    (a study whose newer models have not run yet still reports the finished ones, naming the rest)."""
    shown = [name for name in study.experiments if study.record_of(name).judged]  # yardsticks: in r2 only
    if study.chosen:
        return shown
    done = [name for name in shown if (study.out / name / "lengthgen" / "lengthgen.json").exists()]
    waiting = [name for name in shown if name not in done]
    if waiting and done:
        study.say(f"report: not evaluated yet, left out of the report: {', '.join(waiting)} (run `--stage "
                  f"evaluate` for them)")
    return done or shown


def report_is_current(study: Study, inputs: dict[str, dict[str, Path]]) -> bool:
    """report.json (readable) and table.md exist and are newer than every input the report reads."""
    report_path = study.out / "report.json"
    newest = max((p.stat().st_mtime for files in inputs.values() for p in files.values() if p.exists()), default=0)
    return (read_json(report_path) is not None and report_path.stat().st_mtime >= newest
            and (study.out / "table.md").exists())


def stage_report(study: Study) -> None:
    inputs = report_inputs(study, reported_experiments(study))
    missing = [str(p) for files in inputs.values() for key, p in files.items()
               if key not in OPTIONAL_INPUTS and not p.exists()]
    if missing:
        study.refuse(f"report: {len(missing)} evaluation output(s) missing, e.g. {missing[0]}: run `--stage "
                     f"evaluate` first")
        if study.dry_run:
            study.in_process("report", None, "report")
        return
    if report_is_current(study, inputs):
        study.say(f"report: {study.out / 'report.json'} is newer than its inputs, skipped")
        return
    study.in_process("report", None, f"report: {study.out / 'table.md'}, report.json and figures")
    if study.dry_run:
        return
    write_report(study, inputs)


@dataclass
class Collected:
    """The evaluation files of a study, read: experiment -> document (missing optional ones left out)."""

    trained: list[str]
    closed: list[str]
    lengthgens: dict[str, dict]
    localities: dict[str, dict] = field(default_factory=dict)
    randoms: dict[str, dict] = field(default_factory=dict)
    steps_checks: dict[str, dict] = field(default_factory=dict)
    resamples: dict[str, dict] = field(default_factory=dict)  # the same weights sampled with another seed
    exports: dict[str, dict] = field(default_factory=dict)
    r2s: dict[str, dict] = field(default_factory=dict)
    features: dict[str, dict] = field(default_factory=dict)  # colour model -> features.json (Figure 5)
    maps: dict[str, Path] = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    judge: dict = field(default_factory=dict)


def collect(study: Study, inputs: dict[str, dict[str, Path]]) -> Collected:
    """Read every evaluation file the report needs; the judge named by its package path and sha256."""
    def present(key: str) -> dict[str, dict]:
        read = {name: read_json(files[key]) for name, files in inputs.items() if key in files and files[key].exists()}
        return {name: document for name, document in read.items() if document is not None}

    names = list(inputs)
    collected = Collected(
        trained=[n for n in names if study.record_of(n).trained], closed=[n for n in names if not
                                                                           study.record_of(n).trained],
        lengthgens={name: read_json(files["lengthgen"]) for name, files in inputs.items()},
        localities=present("locality"), randoms=present("random"), steps_checks=present("steps_check"),
        resamples=present("resample"),
        exports=present("export"), r2s=present("r2"),
        maps={name: files["maps"] for name, files in inputs.items() if files["maps"].exists()},
        timings=read_timings(study.out / "timings.json"), features=present("features"))
    for name, sidecar in collected.exports.items():
        if (mismatch := sidecar_mismatch(study, name, sidecar)) is not None:
            raise SystemExit(f"reproduce: report: {mismatch}")
    judges = {}
    for document in (*collected.lengthgens.values(), *collected.randoms.values(), *collected.steps_checks.values()):
        protocol = document.get("protocol", {})
        if protocol.get("judge"):
            judges.setdefault(protocol["judge"], judge_name(protocol["judge"]))  # older files: a machine's path
            named = judges[protocol["judge"]]
            protocol["judge"], protocol["judge_sha256"] = named["path"], named["sha256"]
    collected.judge = next(iter(judges.values()), {"path": None, "sha256": None})
    return collected


def rows_of(study: Study, names: list[str]):
    from lcsbench.analysis import report as rp

    return {name: rp.Row(title=(r := study.record_of(name)).title, paper=r.paper, colour=r.colour,
                         prediction=r.prediction) for name in names}


def trained_summary(study: Study, c: Collected, exp: str) -> dict:
    """One trained experiment's numbers for report.json, with its record and export."""
    from lcsbench.analysis import report as rp

    record, lengthgen = study.record_of(exp), c.lengthgens[exp]
    summary = rp.experiment_summary(lengthgen, c.localities.get(exp), c.randoms.get(exp))
    if exp in c.steps_checks:
        summary["steps_check"] = rp.steps_agreement(lengthgen, c.steps_checks[exp])
    if exp in c.resamples:
        summary["resample"] = rp.resample_agreement(lengthgen, c.resamples[exp])
    export = c.exports.get(exp) or {}
    return summary | {
        "weights": str(study.weights(exp)), "paper": record.paper, "paper_rule": record.paper_rule,
        "source": record.source, "prediction": record.prediction, "name": record.title,
        "conditioning": record.conditioning, "model": record.model,
        "steps": export.get("step"), "max_steps": export.get("max_steps"),
        "wall_seconds": export.get("wall_seconds"), "parameters": export.get("parameters"),
        "config_file": export.get("config_file"), "config": export.get("config"),
        "lengthgen_protocol": lengthgen["protocol"], "lengthgen_rows": lengthgen["rows"],
        "locality_json": c.localities.get(exp)}  # every number


def summarise(study: Study, c: Collected) -> dict:
    """Every number of the report: per experiment, the closed forms, the predictions, the goals, the oracle."""
    from lcsbench.analysis import report as rp

    experiments = {exp: trained_summary(study, c, exp) for exp in c.trained}
    closed = rp.closed_form_summary(
        {name: rp.experiment_summary(c.lengthgens[name], c.localities.get(name)) | {
            "spec": str(study.spec(name)), "lengthgen_protocol": c.lengthgens[name]["protocol"],
            "lengthgen_rows": c.lengthgens[name]["rows"]} for name in c.closed},
        {name: {"kind": study.record_of(name).closed_form, "label-mode": study.record_of(name).label_mode}
         for name in c.closed})
    records = {name: study.record_of(name) for name in study.scale.experiments}
    predictions = closed_form_predictions(records, closed, c.r2s) if c.closed else []
    scale_trained = [record for record in records.values() if record.trained]
    goals = goal_checks(scale_trained, experiments, c.localities, c.timings)
    oracles = {exp: rp.oracle_summary(c.lengthgens[exp]) for exp in c.lengthgens}
    first_oracle = next((o for o in oracles.values() if o is not None), None)
    result = {"experiments": experiments, "closed_form": closed, "closed_form_predictions": predictions,
              "goals": goals, "oracle": {**(first_oracle or {}), "per_experiment": oracles}}
    tables = paper.paper_tables(study, result)
    result |= {"table1": tables["table1"], "table2": tables["table2"],
               "hypothesis": paper.hypothesis(study, result, c.r2s), "figure5": paper.figure5(c.features)}
    result["goals"] = goals + paper.whole_paper_goals(study, result)
    return result


def sample_links(study: Study, c: Collected) -> dict:
    """Per experiment, k -> the relative path of lengthgen's judged sample grid (linked from table.md)."""
    links = {}
    for exp, lengthgen in c.lengthgens.items():
        folder = study.out / exp / "lengthgen"
        ks = [int(k) for k in lengthgen["rows"]["model"]["per_k"]]
        links[exp] = {k: str((folder / f"samples_k{k}.png").relative_to(study.out)) for k in ks
                      if (folder / f"samples_k{k}.png").exists()}
    return links


def figures(study: Study, c: Collected) -> dict:
    """The report's figures by file name (without .png)."""
    import numpy as np

    from lcsbench.analysis import report as rp

    rows = rows_of(study, [*c.trained, *c.closed])
    drawn = {}
    measured = [e for e in c.trained if e in c.localities and e in c.maps]
    if c.trained:
        drawn["success_vs_k"] = rp.success_figure({e: c.lengthgens[e] for e in c.trained}, c.randoms, rows=rows)
    if measured:
        drawn |= {"locality_radius": rp.locality_radius_figure({e: c.localities[e] for e in measured}, rows),
                  "locality_maps": rp.locality_maps_figure(
                      {e: dict(np.load(c.maps[e], allow_pickle=False)) for e in measured})}
    if c.closed:
        drawn["closed_forms"] = rp.success_figure({n: c.lengthgens[n] for n in c.closed}, rows=rows,
                                                  title="Closed forms: length generalization")
    closed_localities = {n: c.localities[n] for n in c.closed if n in c.localities}
    if closed_localities:
        drawn["closed_forms_locality_radius"] = rp.locality_radius_figure(closed_localities, rows)
    if c.r2s:
        drawn["r2"] = rp.r2_figure(c.r2s, rows)
    return drawn


def write(study: Study, c: Collected, summary: dict, drawn: dict, links: dict) -> None:
    """table.md, report.json and the figures' files."""
    from lcsbench.analysis import report as rp
    from lcsbench.analysis.plots import save_figure

    for name, figure in drawn.items():
        save_figure(figure, study.out / f"{name}.png")
    rows = rows_of(study, [*c.trained, *c.closed])
    judge = f"{c.judge['path']}, sha256 {c.judge['sha256'][:12]}..." if c.judge.get("sha256") else c.judge.get("path")
    table = rp.table_markdown(study.scale_name, {e: c.lengthgens[e] for e in c.trained}, summary["goals"], links,
                              c.randoms, rows=rows, judge=judge) \
        if c.trained else f"# Reproduction (scale `{study.scale_name}`)\n"
    if c.closed:
        table += rp.closed_form_markdown(summary["closed_form"], c.r2s, summary["closed_form_predictions"], rows)
    table += rp.resample_markdown(summary["experiments"], rows)
    table += paper.markdown(summary, summary["hypothesis"], summary["figure5"])
    write_atomic(study.out / "table.md", table)
    document = {
        "scale": study.scale_name, "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "paper_table1": {e: study.record_of(e).paper for e in study.scale.experiments
                         if study.record_of(e).trained and study.record_of(e).paper},
        "experiments": summary["experiments"], "closed_form": summary["closed_form"], "r2": c.r2s,
        "closed_form_predictions": summary["closed_form_predictions"], "oracle": summary["oracle"],
        "goals": summary["goals"], "judge": c.judge,
        "table1": summary["table1"], "table2": summary["table2"], "figure5": summary["figure5"],
        "hypothesis": summary["hypothesis"],
        "render": {key: {**render, "root": str(study.render_root(key))} for key, render in study.scale.renders.items()},
        "evaluation": {"lengthgen": {exp: evaluations(study, exp) for exp in study.scale.experiments},
                       "locality": study.scale.locality, "closed_form_locality": study.scale.closed_form_locality,
                       "closed_forms": {n: {"kind": study.record_of(n).closed_form,
                                            "label-mode": study.record_of(n).label_mode} for n in c.closed},
                       "r2": study.scale.r2},
        "timings": c.timings, "machine": machine(), "commands": "commands.sh",
        "figures": [f"{name}.png" for name in drawn], "sample_grids": links,
    }
    write_atomic(study.out / "report.json", json.dumps(document, indent=2, default=str))


def say_summary(study: Study, summary: dict, figure_count: int) -> None:
    from lcsbench.analysis import report as rp

    for exp, numbers in summary["experiments"].items():
        study.say(f"{exp}: k_max {numbers['k_max_notation']} (strict {numbers['k_max_strict']}), paper "
                  f"{numbers['paper']}")
    for mode, kinds in summary["closed_form"].items():
        for kind, numbers in kinds.items():
            study.say(f"closed form {kind}, {mode} labels: k_max {numbers['k_max_notation']}")
    for goal in summary["goals"]:
        study.say(f"goal {rp.verdict(goal['passed']):7s} {goal['goal']}")
    for prediction in summary["closed_form_predictions"]:
        study.say(f"closed forms {rp.verdict(prediction['passed']):7s} {prediction['prediction']}")
    study.say(f"wrote {study.out / 'table.md'}, report.json and {figure_count} figures")


def write_report(study: Study, inputs: dict[str, dict[str, Path]]) -> None:
    """collect -> summarise -> figures -> write."""
    collected = collect(study, inputs)
    summary = summarise(study, collected)
    links = sample_links(study, collected)
    drawn = figures(study, collected) | paper.figures(summary, summary["hypothesis"], collected.features)
    write(study, collected, summary, drawn, links)
    say_summary(study, summary, len(drawn))
