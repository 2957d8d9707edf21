"""Does bf16 change anything that matters? (issue 22, Build 1) Two runs of one config that differ only in
`trainer.precision`, compared on the curves the study reads: the conditioning gap per noise level, the
length-generalization success per k (LengthGenCurve) and the validation loss.

    python -m lcsbench fit --config configs/reproduce/cpu/base.yaml --config configs/reproduce/cpu/exp1.yaml \\
        --trainer.max_steps 2000 \
        --trainer.precision bf16-mixed --trainer.logger.init_args.save_dir runs/precision/bf16-mixed \
        --trainer.logger.init_args.version run
    (the same with --trainer.precision 32-true and runs/precision/32-true)
    python scripts/precision_check.py --runs runs/precision/bf16-mixed/lightning_logs/run \
        runs/precision/32-true/lightning_logs/run --names bf16-mixed fp32 --out reports/reproduction/cpu/precision_check

Writes OUT/precision.csv (step, tag, one column per run), OUT/precision.png (the runs' curves overlaid) and
OUT/precision.json (per tag: the largest difference between the runs over the steps both logged, and the last
values).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from lcsbench.analysis.plots import save_figure
from lcsbench.study.export import read_scalars

PANELS = (("cond_gap/gap@", "conditioning gap (rolled - true) / true"),
          ("lengthgen/success@", "length generalization: success per k"), ("val/loss@", "validation loss per sigma"))


def compare(series: dict[str, dict[str, dict[int, float]]]) -> dict:
    """Per tag both runs logged: the steps in common, the largest |difference| and each run's last value."""
    names = list(series)
    tags = sorted(set.intersection(*(set(s) for s in series.values())))
    summary = {}
    for tag in tags:
        steps = sorted(set.intersection(*(set(series[n][tag]) for n in names)))
        if not steps:
            continue
        differences = [abs(series[names[0]][tag][s] - series[names[1]][tag][s]) for s in steps]
        summary[tag] = {"steps": steps, "max_abs_difference": max(differences),
                        "last": {n: series[n][tag][steps[-1]] for n in names}, "last_step": steps[-1]}
    return summary


def figure(series: dict[str, dict[str, dict[int, float]]], title: str) -> Figure:
    plot = Figure(figsize=(12.0, 3.6), layout="constrained")
    axes = plot.subplots(1, len(PANELS))
    styles = ("-", "--")
    for axis, (prefix, label) in zip(axes, PANELS):
        for style, (name, run) in zip(styles, series.items()):
            for index, tag in enumerate(sorted(t for t in run if t.startswith(prefix))):
                steps = sorted(run[tag])
                axis.plot(steps, [run[tag][s] for s in steps], ls=style, marker=".", ms=3, color=f"C{index}",
                          label=f"{tag[len(prefix):]} {name}")
        axis.set_xlabel("optimizer step")
        axis.set_title(label, fontsize=9)
        axis.legend(fontsize=6, ncol=2)
    plot.suptitle(title, fontsize=10)
    return plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--runs", nargs=2, required=True, help="the two runs' version folders (TensorBoard events)")
    parser.add_argument("--names", nargs=2, required=True, help="a name for each run, e.g. bf16-mixed fp32")
    parser.add_argument("--out", required=True, help="folder for precision.csv, .png, .json")
    args = parser.parse_args()
    series = {}
    for name, run in zip(args.names, args.runs):
        series[name] = read_scalars(Path(run), ("cond_gap/", "lengthgen/", "val/loss"))
        if not series[name]:
            raise SystemExit(f"precision_check: no TensorBoard scalars under {run}: pass the run's version folder "
                             f"(<save_dir>/lightning_logs/<version>) of a fit that logged ConditioningGap")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = compare(series)
    rows = ["step,tag," + ",".join(args.names)]
    for tag, entry in summary.items():
        rows += [f"{s},{tag}," + ",".join(f"{series[n][tag][s]:.6g}" for n in args.names) for s in entry["steps"]]
    (out / "precision.csv").write_text("\n".join(rows) + "\n")
    (out / "precision.json").write_text(json.dumps({"runs": dict(zip(args.names, args.runs)), "tags": summary},
                                                   indent=1) + "\n")
    save_figure(figure(series, f"{args.names[0]} (solid) vs {args.names[1]} (dashed), same config and seed"),
                out / "precision.png")
    for tag, entry in summary.items():
        print(f"{tag:24s} max |diff| {entry['max_abs_difference']:.3f}   at step {entry['last_step']}: "
              + "  ".join(f"{n} {v:.3f}" for n, v in entry["last"].items()))


if __name__ == "__main__":
    main()
