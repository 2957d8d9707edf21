"""The reproduction report (issue 15): paper Table 1's contrast and Figure 2, from `lengthgen` and `locality` outputs.

Pure functions, no Lightning and no file access: the `reproduce` command reads each experiment's
`lengthgen.json` (analysis/lengthgen.py docstring), `locality.json`, `locality_maps.npz` (commands/locality.py
docstring) and the sample grids, and hands them here as dicts and arrays, keyed by experiment ("exp1", ...):

- `wilson_interval`: the 95% score interval of a success rate (Wilson 1927), the error bar of every rate;
- `experiment_summary`, `oracle_summary`: the numbers of one experiment (k_max, per-k rates and intervals);
- `goal_checks`: the goals issue 15 pre-registered, each with what was measured and pass / fail / not run;
- `table_markdown`: table.md, Table 1's "1-3 objects" row beside lcsbench's, then the per-k rates;
- `success_figure`, `locality_radius_figure`, `locality_maps_figure`, `sample_grid_figure`: matplotlib
  Figures (object API, no pyplot state) of success vs k, Figure 2's radii and maps, and the judged samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from lcsbench.analysis.lengthgen import K_MAX_STRICT_THRESHOLD, K_MAX_THRESHOLD, SuccessRule

Z_95 = 1.959963984540054  # standard normal quantile of 0.975: two-sided 95% intervals
ORACLE_PASS = 0.9  # issue 15: evaluate k up to where the Blender oracle row still passes (>= 90%)

# Paper Table 1, row "1-3 objects", location conditioning (Section 2, App. E.2, E.3)
PAPER_TABLE1 = {"exp1": "9", "exp2": "1+(0-2)", "exp3": "9+(0-2)"}
EXPERIMENT_NAMES = {
    "exp1": "Exp 1: global EDM2, all objects labelled",
    "exp2": "Exp 2: global EDM2, one object labelled",
    "exp3": "Exp 3: patch-local EDM2, one object labelled",
}


# --- rates and their intervals -----------------------------------------------------------------------------


def wilson_interval(successes: int, samples: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).

    Unlike the normal interval it stays inside [0, 1] and is not empty at 0 or n successes; (0, 1) for n = 0."""
    if samples < 0 or not 0 <= successes <= max(samples, 0):
        raise ValueError(f"need 0 <= successes <= samples, got {successes} successes of {samples}")
    if samples == 0:
        return 0.0, 1.0
    p, n = successes / samples, samples
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def row_rates(row: Mapping) -> dict:
    """Per-k success rates, their 95% Wilson intervals and sample counts of one lengthgen.json row."""
    per_k = row["per_k"]
    return {
        "success": {k: r["success_rate"] for k, r in per_k.items()},
        "success_interval": {k: list(wilson_interval(r["successes"], r["samples"])) for k, r in per_k.items()},
        "successes": {k: r["successes"] for k, r in per_k.items()},
        "samples": {k: r["samples"] for k, r in per_k.items()},
        "mean_missing": {k: r["mean_missing"] for k, r in per_k.items()},
        "mean_extra": {k: r["mean_extra"] for k, r in per_k.items()},
    }


def passes_up_to(row: Mapping, threshold: float = ORACLE_PASS) -> int:
    """Largest k with success rate >= threshold at every k' <= k, counting up from k = 1 (0 if k = 1 fails)."""
    rates = {int(k): r["success_rate"] for k, r in row["per_k"].items()}
    best = 0
    while best + 1 in rates and rates[best + 1] >= threshold:
        best += 1
    return best


def extras_notation(protocol: Mapping) -> str:
    """The extras the success rule allows, in the paper's notation ("+(0-2)"), or "" (none, or unknown)."""
    try:
        rule = SuccessRule(protocol["kind"], tuple(protocol["trained_counts"]), protocol["label_mode"])
        return rule.extras_notation()
    except (KeyError, TypeError, ValueError):
        return ""


def experiment_summary(lengthgen: Mapping, locality: Mapping | None = None) -> dict:
    """One experiment's numbers for report.json: the model row's k_max, k_max_strict and per-k rates, the success
    rule, and Figure 2's mean radii per noise level."""
    row = lengthgen["rows"]["model"]
    protocol = lengthgen["protocol"]
    summary = {"k_max": int(row["k_max"]), "k_max_strict": int(row["k_max_strict"]),
               "k_max_notation": f"{row['k_max']}{extras_notation(protocol)}", **row_rates(row),
               "success_rule": protocol.get("success_rule"), "trained_counts": protocol.get("trained_counts"),
               "label_mode": protocol.get("label_mode")}
    if locality is not None:
        summary["locality"] = {"sigmas": locality["sigmas"],
                               "pixel_radius_mean": locality.get("pixel_radius_mean"),
                               "conditional_radius_mean": locality.get("conditional_radius_mean")}
    return summary


def oracle_summary(lengthgen: Mapping) -> dict | None:
    """The oracle row's numbers (None when lengthgen ran with --no-oracle), and the k up to which it passes."""
    row = lengthgen["rows"].get("oracle")
    if row is None:
        return None
    return {"k_max": int(row["k_max"]), "k_max_strict": int(row["k_max_strict"]), **row_rates(row),
            "passes_90_up_to_k": passes_up_to(row)}


# --- the pre-registered goals (issue 15) ----------------------------------------------------------------------


def _radius_at_highest_noise(locality: Mapping, key: str) -> float | None:
    sigmas = locality["sigmas"]
    values = locality.get(key) or []
    top = max(range(len(sigmas)), key=lambda i: sigmas[i])
    return values[top] if top < len(values) else None


def goal_checks(experiments: Mapping[str, Mapping], localities: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Issue 15's goals, each `{"id", "goal", "experiments", "measured", "passed"}`; `passed` is None when an
    experiment it needs was not run. `experiments` holds `experiment_summary` dicts, `localities` locality.json's."""
    localities = localities or {}

    def check(goal_id: str, text: str, needs: Sequence[str], measure) -> dict:
        present = all(e in experiments for e in needs)
        measured, passed = measure() if present else ({}, None)
        return {"id": goal_id, "goal": text, "experiments": list(needs), "measured": measured, "passed": passed}

    def k1(e: str) -> float:
        return float(experiments[e]["success"].get("1", 0.0))

    def kmax_at_least_4(e: str):
        return lambda: ({"k_max": experiments[e]["k_max"], "k_max_strict": experiments[e]["k_max_strict"]},
                        experiments[e]["k_max"] >= 4)

    def exp2_valid():
        return {"k1_success": k1("exp2")}, k1("exp2") >= 0.5

    def exp2_fails():
        measured = {"k1_success": k1("exp2"), "k_max": experiments["exp2"]["k_max"]}
        return measured, k1("exp2") >= 0.5 and experiments["exp2"]["k_max"] <= 2

    def figure2():
        if not all(e in localities for e in ("exp1", "exp2")):
            return {"note": "locality outputs missing"}, None
        radii = {e: _radius_at_highest_noise(localities[e], "conditional_radius_mean") for e in ("exp1", "exp2")}
        pixel = {e: _radius_at_highest_noise(localities[e], "pixel_radius_mean") for e in ("exp1", "exp2")}
        sigma = max(localities["exp1"]["sigmas"])
        measured = {"sigma": sigma, "conditional_radius": radii, "pixel_radius": pixel}
        if None in radii.values():
            return measured, None
        return measured, radii["exp1"] < radii["exp2"]

    return [
        check("exp1_length_generalizes", "Exp 1 (all labels, 1-3 objects): k_max >= 4, beyond the trained counts",
              ["exp1"], kmax_at_least_4("exp1")),
        check("exp2_learned_its_conditioner", "Exp 2 counts only if its k = 1 success is >= 50%", ["exp2"],
              exp2_valid),
        check("exp2_fails", "Exp 2 (one label): k = 1 success >= 50% and k_max <= 2 (the paper's 1+(0-2))",
              ["exp2"], exp2_fails),
        check("exp3_length_generalizes", "Exp 3 (patch-local, one label): k_max >= 4 with 0-2 extra objects",
              ["exp3"], kmax_at_least_4("exp3")),
        check("figure2_conditional_locality", "Figure 2: Exp 1's conditional 90% radius at the highest noise level "
              "below Exp 2's (the issue's 'clearly' has no threshold: compare the numbers)", ["exp1", "exp2"],
              figure2),
    ]


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "not run"}[passed]


# --- table.md ------------------------------------------------------------------------------------------------


def _rate_cell(rates: Mapping, k: str) -> str:
    if k not in rates["success"]:
        return "-"
    low, high = rates["success_interval"][k]
    return f"{rates['success'][k]:.2f} [{low:.2f}, {high:.2f}] ({rates['successes'][k]}/{rates['samples'][k]})"


def table_markdown(
    scale: str,  # the reproduce scale's name
    lengthgens: Mapping[str, Mapping],  # experiment -> lengthgen.json
    goals: Sequence[Mapping],  # goal_checks
    sample_links: Mapping[str, Mapping[int, str]] | None = None,  # experiment -> k -> relative path of its grid
) -> str:
    """table.md: Table 1's row beside lcsbench's k_max and k_max_strict, the goals, and per-k success rates with
    95% Wilson intervals, model beside oracle, for each experiment."""
    first = next(iter(lengthgens.values()))["protocol"]
    lines = [f"# Reproduction of Table 1 (scale `{scale}`)", "",
             f"Models trained on {_counts(first.get('trained_counts'))} objects, location conditioning; "
             f"{first.get('samples_per_k')} samples per k, judged by `{first.get('judge')}` (paper: 8 samples, "
             f"counted by eye). k_max: largest k with success > {K_MAX_THRESHOLD:.0%} at every k' <= k (App. E.2); "
             f"k_max_strict: > {K_MAX_STRICT_THRESHOLD:.0%}. Oracle: the same judge on Blender renders of the same "
             f"requests; a model's k_max means something only up to where the oracle passes (>= {ORACLE_PASS:.0%}).",
             "", "| experiment | paper (Table 1, 1-3 objects) | lcsbench k_max | k_max_strict | oracle k_max (strict) "
             "| oracle >= 90% up to k |", "|---|---|---|---|---|---|"]
    for exp, report in lengthgens.items():
        row, oracle = report["rows"]["model"], report["rows"].get("oracle")
        extra = extras_notation(report["protocol"])
        oracle_cells = (f"{oracle['k_max']} ({oracle['k_max_strict']})", str(passes_up_to(oracle))) if oracle \
            else ("-", "-")
        lines.append(f"| {EXPERIMENT_NAMES.get(exp, exp)} | {PAPER_TABLE1.get(exp, '-')} | {row['k_max']}{extra} | "
                     f"{row['k_max_strict']}{extra} | {oracle_cells[0]} | {oracle_cells[1]} |")
    lines += ["", "## Goals (pre-registered in issue 15)", "", "| goal | measured | result |", "|---|---|---|"]
    for goal in goals:
        measured = ", ".join(f"{k} {_short(v)}" for k, v in goal["measured"].items()) or "-"
        lines.append(f"| {goal['goal']} | {measured} | {verdict(goal['passed'])} |")
    lines += ["", "## Success rate per k (95% Wilson interval, successes/samples)"]
    for exp, report in lengthgens.items():
        model = row_rates(report["rows"]["model"])
        oracle = row_rates(report["rows"]["oracle"]) if "oracle" in report["rows"] else None
        lines += ["", f"### {EXPERIMENT_NAMES.get(exp, exp)}", "",
                  f"Success rule: {report['protocol'].get('success_rule', '-')}.", "",
                  "| k | model | oracle | model mean missing | model mean extra |", "|---|---|---|---|---|"]
        for k in model["success"]:
            lines.append(f"| {k} | {_rate_cell(model, k)} | {_rate_cell(oracle, k) if oracle else '-'} | "
                         f"{model['mean_missing'][k]:.2f} | {model['mean_extra'][k]:.2f} |")
        links = (sample_links or {}).get(exp)
        if links:
            lines += ["", "Samples with detections (green +: requested, yellow o: matched, red o: extra): "
                      + " ".join(f"[k={k}]({path})" for k, path in sorted(links.items()))]
    lines += ["", "## Figures", "", "![success vs k](success_vs_k.png)", "",
              "![locality radii](locality_radius.png)", "", "![Eq. 10 maps](locality_maps.png)", "",
              "![samples](samples_by_k.png)", ""]
    return "\n".join(lines)


def _counts(counts: Sequence[int] | None) -> str:
    if not counts:
        return "?"
    return f"{min(counts)}-{max(counts)}" if list(counts) == list(range(min(counts), max(counts) + 1)) \
        else ",".join(map(str, counts))


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


# --- figures ---------------------------------------------------------------------------------------------------


COLORS = {"exp1": "tab:blue", "exp2": "tab:red", "exp3": "tab:green"}


def success_figure(lengthgens: Mapping[str, Mapping]) -> Figure:
    """Success rate vs k for every experiment with its 95% Wilson band; the oracle row dashed (drawn once when the
    experiments' oracle rows agree, as they do when they judge the same renders)."""
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axis = figure.subplots()
    oracles: dict[tuple, list[str]] = {}
    for exp, report in lengthgens.items():
        _rate_curve(axis, report["rows"]["model"], COLORS.get(exp), "-", "o",
                    f"{EXPERIMENT_NAMES.get(exp, exp)} (k_max {report['rows']['model']['k_max']})")
        oracle = report["rows"].get("oracle")
        if oracle is not None:
            key = tuple((k, r["successes"], r["samples"]) for k, r in oracle["per_k"].items())
            oracles.setdefault(key, []).append(exp)
    for i, (key, owners) in enumerate(oracles.items()):
        _rate_curve(axis, lengthgens[owners[0]]["rows"]["oracle"], "0.35", "--", "s",
                    f"oracle: judge on Blender renders ({', '.join(owners)})", band_alpha=0.08)
    axis.axhline(K_MAX_THRESHOLD, color="0.6", lw=0.8, ls=":")
    axis.axhline(K_MAX_STRICT_THRESHOLD, color="0.6", lw=0.8, ls="-.")
    axis.set_xlabel("k (requested objects)")
    axis.set_ylabel("success rate (95% Wilson band)")
    axis.set_ylim(-0.03, 1.03)
    axis.set_title("Length generalization (Table 1, App. E.2)", fontsize=10)
    axis.legend(fontsize=7)
    return figure


def _rate_curve(axis, row: Mapping, color, style: str, marker: str, label: str, band_alpha: float = 0.18) -> None:
    ks = sorted(int(k) for k in row["per_k"])
    rates = [row["per_k"][str(k)]["success_rate"] for k in ks]
    bands = np.array([wilson_interval(row["per_k"][str(k)]["successes"], row["per_k"][str(k)]["samples"])
                      for k in ks])
    axis.plot(ks, rates, ls=style, marker=marker, ms=4, color=color, label=label)
    axis.fill_between(ks, bands[:, 0], bands[:, 1], color=color, alpha=band_alpha, lw=0)


def locality_radius_figure(localities: Mapping[str, Mapping]) -> Figure:
    """Figure 2's summary: the pixel (Eq. 9) and conditional (Eq. 10) 90% radii, averaged over targets and
    conditioners, against the noise level, one line per experiment."""
    figure = Figure(figsize=(9.0, 3.6), layout="constrained")
    axes = figure.subplots(1, 2)
    for exp, locality in localities.items():
        sigmas = locality["sigmas"]
        for axis, key in zip(axes, ("pixel_radius_mean", "conditional_radius_mean")):
            values = [np.nan if v is None else v for v in (locality.get(key) or [None] * len(sigmas))]
            axis.plot(sigmas, values, marker="o", ms=3, color=COLORS.get(exp), label=EXPERIMENT_NAMES.get(exp, exp))
    fraction = next(iter(localities.values())).get("fraction", 0.9)
    axes[0].set_title(f"pixel locality (Eq. 9): {fraction:.0%} radius", fontsize=9)
    axes[1].set_title(f"conditional locality (Eq. 10): {fraction:.0%} radius", fontsize=9)
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("sigma (noise level)")
        axis.set_ylabel("radius (pixels)")
        axis.legend(fontsize=7)
    return figure


def locality_maps_figure(maps: Mapping[str, Mapping[str, np.ndarray]], max_conditioners: int = 4) -> Figure:
    """Figure 2's maps at the highest noise level, one row per experiment: the model's sample, the pixel heat map
    at the first target (Eq. 9) and the conditional influence map of each conditioner (Eq. 10), its centre in red."""
    columns = 2 + max(min(len(m.get("conditioners", [])), max_conditioners) for m in maps.values())
    figure = Figure(figsize=(1.8 * columns, 1.9 * len(maps) + 0.4), layout="constrained")
    axes = figure.subplots(len(maps), columns, squeeze=False)
    for row, (exp, m) in enumerate(maps.items()):
        top = int(np.argmax(m["sigmas"]))
        sample = np.clip((np.moveaxis(m["sample"][:3], 0, -1) + 1) / 2, 0, 1)
        axes[row, 0].imshow(sample)
        axes[row, 0].set_ylabel(exp, fontsize=9)
        target = m["pixels"][0]
        axes[row, 1].imshow(m["heat"][top, 0], cmap="magma")
        axes[row, 1].plot([target[1]], [target[0]], marker="+", color="lime", ms=8)
        axes[row, 1].set_title(f"pixel |J| at {tuple(int(v) for v in target)}", fontsize=7)
        conditioners = m.get("conditioners", np.zeros((0, 2)))
        for j in range(columns - 2):
            axis = axes[row, 2 + j]
            if j >= min(len(conditioners), max_conditioners):
                axis.axis("off")
                continue
            axis.imshow(m["influence"][top, j], cmap="viridis")
            if "conditioner_centres" in m:
                centre = m["conditioner_centres"][j]
                axis.plot([centre[1]], [centre[0]], marker="+", color="red", ms=8)
            axis.set_title(f"cond {tuple(int(v) for v in conditioners[j])}", fontsize=7)
        axes[row, 0].set_title(f"sample; sigma={float(m['sigmas'][top]):g}", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("Eq. 10 conditional influence at the highest noise level", fontsize=10)
    return figure


def sample_grid_figure(grids: Mapping[str, Mapping[int, np.ndarray]]) -> Figure:
    """The judged sample grids (lengthgen's samples_k{K}.png) side by side: one row per experiment, one column
    per k."""
    ks = sorted({k for per_k in grids.values() for k in per_k})
    figure = Figure(figsize=(2.2 * len(ks), 2.3 * len(grids) + 0.4), layout="constrained")
    axes = figure.subplots(len(grids), len(ks), squeeze=False)
    for row, (exp, per_k) in enumerate(grids.items()):
        for column, k in enumerate(ks):
            axis = axes[row, column]
            if k in per_k:
                axis.imshow(per_k[k])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"k = {k}", fontsize=9)
        axes[row, 0].set_ylabel(exp, fontsize=9)
    figure.suptitle("samples with detections (green +: requested, yellow o: matched, red o: extra)", fontsize=10)
    return figure
