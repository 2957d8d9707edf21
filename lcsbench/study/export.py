"""The export stage: each run's EMA weights as a small file every command takes as --ckpt (with its sidecar and
learning curves), and the closed forms' specs over the study's render."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from lcsbench.study.runner import Study, flags, read_json, write_atomic

CURVE_TAGS = ("cond_gap/gap@", "lengthgen/success@", "lengthgen/k_max", "val/loss")  # the learning curves


def training_wall_seconds(log_dir: Path) -> float | None:
    """Seconds of training in a run folder: per TensorBoard event file (one per start or resume), the time from
    its first to its last event, summed; None without event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, found = 0.0, False
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        times = [event.wall_time for event in EventFileLoader(str(path)).Load()]
        if times:
            total += max(times) - min(times)
            found = True
    return round(total, 1) if found else None


def read_scalars(log_dir: Path, prefixes: tuple[str, ...] = CURVE_TAGS) -> dict[str, dict[int, float]]:
    """The TensorBoard scalars of a run folder whose tags start with a prefix: tag -> step -> value (the last
    write of a step wins, so a resumed run's repeated steps count once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    series: dict[str, dict[int, float]] = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith(prefixes):
            series[tag] = {event.step: float(event.value) for event in events.Scalars(tag)}
    return series


def write_curves(log_dir: Path, folder: Path, title: str) -> None:
    """OUT/<exp>/curves.csv (step, tag, value) and curves.png: the conditioning gap, the length-generalization
    curve and the validation loss over training, from the run's TensorBoard events."""
    from lcsbench.analysis import report as rp
    from lcsbench.analysis.plots import save_figure

    series = read_scalars(log_dir)
    if not series:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["step,tag,value"] + [f"{step},{tag},{value:.6g}" for tag, values in sorted(series.items())
                                 for step, value in sorted(values.items())]
    (folder / "curves.csv").write_text("\n".join(rows) + "\n")
    save_figure(rp.learning_curves_figure(series, title), folder / "curves.png")


def weights_match_record(weights: Path, sidecar: dict | None) -> bool | None:
    """Whether the weights file is the one its export recorded (sha256); None when no hash was recorded."""
    from lcsbench.data.shards import file_sha256

    if sidecar is None or "sha256" not in sidecar:
        return None
    return weights.exists() and file_sha256(weights) == sidecar["sha256"]


def named_experiment(exp: str, sidecar: dict | None) -> str | None:
    """The other experiment a weights file's sidecar names (copied over this one's), or None when it names `exp`
    (or no experiment: an export older than the field)."""
    named = (sidecar or {}).get("experiment")
    return named if named not in (None, exp) else None


def sidecar_mismatch(study: Study, exp: str, sidecar: dict | None) -> str | None:
    """The one line that refuses another experiment's weights read under this experiment's name, or None."""
    other = named_experiment(exp, sidecar)
    if other is None:
        return None
    return (f"{study.weights(exp).with_suffix('.json')} names experiment {other}, not {exp}: these are another "
            f"experiment's weights under {exp}'s name. Restore {exp}'s exported files, or rerun `--stage export` "
            f"from its run")


def export_is_current(study: Study, exp: str) -> bool:
    last, weights = study.last_ckpt(exp), study.weights(exp)
    sidecar = read_json(weights.with_suffix(".json"))
    if named_experiment(exp, sidecar) is not None:
        study.say(f"export {exp}: its sidecar names experiment {named_experiment(exp, sidecar)}: exporting again")
        return False
    intact = weights_match_record(weights, sidecar) is not False
    if weights.exists() and not intact:
        study.say(f"export {exp}: {weights} does not match the sha256 its export recorded: exporting again")
    return weights.exists() and sidecar is not None and intact and (
        not last.exists() or sidecar.get("source_mtime") == last.stat().st_mtime)


def export_one(study: Study, exp: str) -> None:
    """Write OUT/weights/<exp>.pt and its sidecar from the run's last.ckpt, and the run's learning curves."""
    import torch
    import yaml

    from lcsbench.data.shards import file_sha256
    from lcsbench.models.loaders import export_ema_weights

    last, weights = study.last_ckpt(exp), study.weights(exp)
    config = study.config(exp)
    run_config = study.log_dir(exp) / "config.yaml"
    metadata = {
        "scale": study.scale_name, "experiment": exp, "config_file": " + ".join(map(str, study.configs(exp))),
        "config": yaml.safe_load(run_config.read_text()) if run_config.exists() else config["config"],
        "max_steps": config["max_steps"], "wall_seconds": training_wall_seconds(study.log_dir(exp)),
        "source_mtime": last.stat().st_mtime, "exported": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    started = time.perf_counter()
    try:
        # float16 halves the committed file (a global model: 2.7 MB, not 5.5; see export_ema_weights)
        recorded = export_ema_weights(last, weights, metadata, stored_dtype=torch.float16)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"reproduce: export {exp}: {error}") from None
    recorded["sha256"] = file_sha256(weights)
    write_atomic(weights.with_suffix(".json"), json.dumps(recorded, indent=2, default=str))
    write_curves(study.log_dir(exp), study.out / exp, study.record_of(exp).title)
    study.timing(f"export {exp}", time.perf_counter() - started)
    if recorded["step"] < config["max_steps"]:
        study.say(f"export {exp}: note: the run is at step {recorded['step']} of {config['max_steps']}")
    study.say(f"export {exp}: wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB, step "
              f"{recorded['step']}, {recorded['parameters']} weights)")


def stage_export(study: Study) -> None:
    for exp in study.trained:
        last, weights = study.last_ckpt(exp), study.weights(exp)
        if export_is_current(study, exp):
            study.say(f"export {exp}: {weights} is the current export, skipped")
            continue
        if not last.exists():  # in a dry run a note: the fit stage of the same run may write it
            study.refuse(f"export {exp}: no trained run at {last}: run `--stage fit` first (or pass the --runs "
                         f"folder the fit stage wrote)")
        study.in_process("export", exp, f"export {exp}: EMA weights of {last} -> {weights}")
        if not study.dry_run:
            export_one(study, exp)
    for name in study.closed_forms:
        write_closed_form_spec(study, name)


def spec_record(path: Path) -> dict | None:
    """The closed-form entry of a spec file, or None when it is missing or unreadable."""
    if not path.exists():
        return None
    from lcsbench.checkpoints import read_checkpoint
    from lcsbench.models.closed_form import CLOSED_FORM_KEY

    try:
        return read_checkpoint(path, "").get(CLOSED_FORM_KEY)
    except (FileNotFoundError, ValueError):
        return None


def spec_sha256(spec: Path) -> str | None:
    from lcsbench.data.shards import file_sha256

    return file_sha256(spec) if spec.exists() else None


def closed_form_flags(study: Study, name: str) -> dict:
    """A closed form's `closed-form spec` flags: its kind, labels and counts from its record, the grid and the patch
    radius from the config of the experiment it stands beside (geometry_from), then the scale's own."""
    record = study.record_of(name)
    source = study.config(record.geometry_from)
    grid = source["data"].get("grid_size")
    radius = source["model"].get("radius")
    if grid is None or radius is None:
        raise SystemExit(f"reproduce: closed form {name}: the config of {record.geometry_from} must set "
                         f"data.init_args.grid_size and model.init_args.radius (a patch-local model's)")
    return {"counts": record.counts, "kind": record.closed_form, "label-mode": record.label_mode,
            "grid-size": grid, "radius": radius, **study.scale.closed_form_flags}


def spec_is_current(study: Study, name: str) -> bool:
    """The closed form's spec names the study's render as it is now (its path and manifest sha256)."""
    from lcsbench.data.shards import file_sha256

    root = study.render_root(study.record_of(name).counts)
    entry, manifest = spec_record(study.spec(name)), root / "manifest.json"
    return (entry is not None and manifest.exists() and entry.get("render") == str(root.resolve())
            and entry.get("manifest_sha256") == file_sha256(manifest))


def write_closed_form_spec(study: Study, name: str) -> None:
    """OUT/closed_forms/<name>.pt, the closed form's spec over the study's render, unless the one there is current."""
    root, spec = study.render_root(study.record_of(name).counts), study.spec(name)
    if spec_is_current(study, name):
        study.say(f"closed form {name}: {spec} names the current render, skipped")
        return
    study.run(["closed-form", "spec", "--render", str(root), "--out", str(spec),
               *flags(closed_form_flags(study, name))], f"closed form {name}")
