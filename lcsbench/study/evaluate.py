"""The evaluate stage: per trained model and closed form, `lengthgen` (the paper's order, random k-subsets, and
the steps check where fewer sampler steps were used), `locality`, and a trained model's r2 against its closed
forms; each skipped where its stamp says it was made from the current weights."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS
from lcsbench.study.export import sidecar_mismatch, spec_sha256, weights_match_record
from lcsbench.study.runner import Job, Study, flags, read_json, run_jobs, write_atomic

# The length-generalization evaluations of each experiment: folder -> lengthgen flags beside the scale's. Random
# k-subsets of the 12 locations are more crowded than the paper's prefixes; an experiment sampled with fewer than
# the paper's Heun steps is checked against them at k = 1..4 (the fewer steps stand only where both agree within
# their intervals).
EVALUATIONS = {"lengthgen": {}, "lengthgen_random": {"order": "random"}}
STEPS_CHECK = (f"lengthgen_steps{PAPER_HEUN_STEPS}", {"ks": "1-4", "no-oracle": True})  # at the scale's own steps
# every trained model sampled afresh (new noise, new random requests): its row must not be one lucky draw
RESAMPLE = ("lengthgen_seed2", {"seed": 2, "no-oracle": True})
# Figure 5 for each colour model: Eq. 3 cosines of every MCScale layer beside a re-initialised copy (the command's
# defaults: 4 noise levels, 8 of the model's own samples per level, the modulated site)
FEATURES = {"images-per-sigma": 8}


def judge_arguments(study: Study) -> list[str]:
    """--judge for lengthgen, or none when the judge shipped for the scale's resolution is to be used."""
    if study.judge is not None:
        return ["--judge", study.judge]
    from lcsbench.models.judge import shipped_judges

    if study.scale.resolution not in shipped_judges():
        from lcsbench.models.judge import JUDGE_RECIPE

        study.refuse(f"a judge: none ships for {study.scale.resolution}x{study.scale.resolution} images: pass "
                     f"--judge PATH, or {JUDGE_RECIPE.format(r=study.scale.resolution)}")
    return []


def evaluation_is_current(folder: Path, result: str, export: dict | None) -> bool:
    """The evaluation in `folder` exists and was made from the current export (its stamp names the export and
    the weights' sha256; for r2 also the closed forms' specs)."""
    stamp_record = read_json(folder / "evaluated.json")
    if not (folder / result).exists():
        return False
    if stamp_record is None or export is None:
        return True
    return all(stamp_record.get(key) == export.get(key) for key in ("exported", "sha256", "specs") if key in export)


def stamp(folder: Path, weights: Path, export: dict | None) -> None:
    export = export or {}
    write_atomic(folder / "evaluated.json", json.dumps(
        {"weights": str(weights), "exported": export.get("exported"), "step": export.get("step"),
         "sha256": export.get("sha256"), **({"specs": export["specs"]} if "specs" in export else {})}, indent=2))


def evaluations(study: Study, exp: str) -> dict[str, dict]:
    """The lengthgen runs of one experiment: OUT/<exp>/<folder> -> its full flags (EVALUATIONS, STEPS_CHECK,
    RESAMPLE). A closed form is judged in the paper's order only (its sampling is the study's slowest); a colour
    model has no random k-subsets (a colour request has no order of locations)."""
    record = study.record_of(exp)
    base = study.scale.lengthgen_flags(record)
    if not record.trained:
        return {"lengthgen": base}
    folder, extra = RESAMPLE
    if record.conditioning == "color":
        return {"lengthgen": base, folder: {**base, **extra}}
    runs = {folder: {**base, **extra} for folder, extra in (*EVALUATIONS.items(), RESAMPLE)}
    scale_steps = int(study.scale.lengthgen.get("steps", PAPER_HEUN_STEPS))
    if int(base.get("steps", scale_steps)) < scale_steps:  # this experiment samples with fewer steps
        folder, extra = STEPS_CHECK
        runs[folder] = {key: value for key, value in {**base, **extra, "steps": scale_steps}.items()
                        if key != "samples-per-pixel"}
    return runs


def same_requests(one: dict, other: dict) -> bool:
    """Whether two lengthgen runs ask the oracle for the same renders: the same flags but for the model's sampler
    steps (the oracle renders the requests; it does not sample)."""
    return {k: v for k, v in one.items() if k != "steps"} == {k: v for k, v in other.items() if k != "steps"}


def share_oracle(study: Study, exp: str, folder: Path, options: dict) -> None:
    """Copy the oracle renders another experiment's lengthgen made of the same requests (same flags and
    conditioning)."""
    if (folder / "oracle_render").exists() or options.get("no-oracle"):
        return
    conditioning = study.record_of(exp).conditioning
    for other in study.scale.experiments:
        if other == exp or study.record_of(other).conditioning != conditioning:
            continue
        for other_folder, other_options in evaluations(study, other).items():
            source = study.out / other / other_folder / "oracle_render"
            if (same_requests(other_options, options) and (source.parent / "lengthgen.json").exists()
                    and (source / "manifest.json").exists()):
                line = ["cp", "-r", str(source), str(folder / "oracle_render")]
                if study.dry_run:
                    print(shlex.join(line), flush=True)
                    return
                study.say(f"{folder.name} {exp}: reusing the oracle renders of {other}")
                study.record(line, f"{folder.name} {exp}: the oracle renders of {other}")
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copytree(source, folder / "oracle_render")
                return


def denoiser_jobs(study: Study, exp: str, source: Path, record: dict | None, locality_flags: dict) -> list[Job]:
    """The lengthgen runs and the locality maps of one trained model's weights or one closed form's spec that are
    not current yet."""
    jobs = []
    if study.record_of(exp).conditioning == "color" and study.record_of(exp).trained:
        study.say(f"lengthgen {exp}: colour requests have no order of locations: no random k-subsets run")
    for name, options in evaluations(study, exp).items():
        folder = study.out / exp / name
        if evaluation_is_current(folder, "lengthgen.json", record):
            study.say(f"{name} {exp}: {folder / 'lengthgen.json'} exists, skipped")
            continue
        jobs.append(Job(["lengthgen", "--ckpt", str(source), "--out", str(folder), "--name", exp,
                         *judge_arguments(study), *flags(options)], f"{name} {exp}",
                        before=lambda folder=folder, options=options: share_oracle(study, exp, folder, options),
                        after=lambda folder=folder: stamp(folder, source, record), beside=name != "lengthgen"))
    locality = study.out / exp / "locality"
    if study.record_of(exp).conditioning == "color":  # Figure 2 places conditioners on the grid: location only
        study.say(f"locality {exp}: a colour model has no conditioner location to measure around: none run")
    elif evaluation_is_current(locality, "locality_maps.npz", record):
        study.say(f"locality {exp}: {locality / 'locality.json'} exists, skipped")
    else:
        jobs.append(Job(["locality", "--ckpt", str(source), "--out", str(locality), *flags(locality_flags)],
                        f"locality {exp}", after=lambda: stamp(locality, source, record)))
    return jobs


def r2_specs(study: Study, exp: str) -> list[str]:
    """The closed forms a trained model is measured against: those of the study with the model's labels and
    object counts (Exp 1: the `all` pair; Exp 2, Exp 3: the `single` pair)."""
    from lcsbench.data.scenes import parse_counts

    model = study.record_of(exp)
    data = study.config(exp)["data"]
    mode, counts = data.get("label_mode", "all"), parse_counts(str(data.get("counts", model.counts)))
    return [name for name in study.scale.experiments if not study.record_of(name).trained
            and parse_counts(study.record_of(name).counts) == counts and model.conditioning == "location"
            and study.record_of(name).label_mode == mode and (study.dry_run or study.spec(name).exists())]


def r2_jobs(study: Study, exp: str, weights: Path, export: dict | None) -> list[Job]:
    """OUT/<exp>/r2: the model's D against its closed forms' per noise level, unless current."""
    names = r2_specs(study, exp)
    if not names:
        return []
    folder = study.out / exp / "r2"
    record = {**(export or {}), "specs": {name: spec_sha256(study.spec(name)) for name in names}}
    if evaluation_is_current(folder, "r2.json", record):
        study.say(f"r2 {exp}: {folder / 'r2.json'} exists, skipped")
        return []
    specs = [item for name in names for item in ("--spec", str(study.spec(name)))]
    return [Job(["closed-form", "r2", "--ckpt", str(weights), *specs, "--out", str(folder), *flags(study.scale.r2)],
                f"r2 {exp}", after=lambda: stamp(folder, weights, record))]


def trained_jobs(study: Study, exp: str) -> list[Job]:
    weights = study.weights(exp)
    if not weights.exists():
        study.refuse(f"evaluate {exp}: no weights at {weights}: run `--stage fit` and `--stage export` first "
                     f"(export writes OUT/weights/<exp>.pt from the fit stage's run)")
    export = read_json(weights.with_suffix(".json"))
    if (mismatch := sidecar_mismatch(study, exp, export)) is not None:
        raise SystemExit(f"reproduce: evaluate {exp}: {mismatch}")
    if not study.dry_run and weights_match_record(weights, export) is False:
        raise SystemExit(f"reproduce: evaluate {exp}: {weights} does not match the sha256 its export recorded in "
                         f"{weights.with_suffix('.json')}: the file was replaced or damaged. Rerun `--stage "
                         f"export` (from the run folder) or restore the exported file")
    return (denoiser_jobs(study, exp, weights, export, study.scale.locality) + r2_jobs(study, exp, weights, export)
            + features_jobs(study, exp, weights, export))


def features_jobs(study: Study, exp: str, weights: Path, export: dict | None) -> list[Job]:
    """OUT/<exp>/features for a colour model (Figure 5), unless current; location models have no Figure 5 row."""
    if study.record_of(exp).conditioning != "color":
        return []
    folder = study.out / exp / "features"
    if evaluation_is_current(folder, "features.json", export):
        study.say(f"features {exp}: {folder / 'features.json'} exists, skipped")
        return []
    return [Job(["features", "--ckpt", str(weights), "--out", str(folder), *flags(FEATURES)], f"features {exp}",
                after=lambda: stamp(folder, weights, export), beside=True)]


def closed_form_jobs(study: Study, name: str) -> list[Job]:
    """The lengthgen and locality runs of one judged closed form's spec that are not current yet."""
    spec = study.spec(name)
    record = {"exported": None, "sha256": spec_sha256(spec)}
    return denoiser_jobs(study, name, spec, record, {**study.scale.locality, **study.scale.closed_form_locality})


def stage_evaluate(study: Study) -> None:
    """Judge every trained model's exported weights and every closed form (run_jobs: one after another on every
    core, or --parallel N at once on their own cores)."""
    jobs: list[Job] = []
    for exp in study.trained:
        jobs += trained_jobs(study, exp)
    for name in study.closed_forms:
        if not study.record_of(name).judged:  # a yardstick for r2 only: its spec is all it needs
            continue
        if not study.spec(name).exists():
            study.refuse(f"evaluate {name}: no closed-form spec at {study.spec(name)}: run `--stage export` first "
                         f"(it writes the specs of the closed forms from the render)")
        jobs += closed_form_jobs(study, name)
    # the rows of the table first, the checks beside them last: a study stopped early reports what it has
    run_jobs(study, [job for job in jobs if not job.beside] + [job for job in jobs if job.beside])
