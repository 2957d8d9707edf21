"""The reproduction report's statistics, tables and figures, from `lengthgen` and `locality` outputs.

Pure functions, no Lightning, no file access and no experiment names: the study (lcsbench/study/report.py) reads
each experiment's `lengthgen.json` (analysis/lengthgen/tally.py, `lengthgen_report`), `locality.json`,
`locality_maps.npz` (commands/locality.py docstring) and the sample grids, and hands them here as dicts and
arrays keyed by experiment, with each experiment's title, colour and paper value (`Row`) passed in:

- `wilson_interval`: the 95% score interval of a success rate (Wilson 1927), the error bar of every rate;
- `experiment_summary`, `oracle_summary`: the numbers of one experiment (k_max, per-k rates and intervals);
- `goal`, `k_max_bound`, `learned_conditioner`, `radius_below`, `busy_hours`: a pre-registered goal's check,
  with what was measured and pass / fail / not run;
- `table_markdown`, `closed_form_markdown`: table.md, the paper's values beside lcsbench's, then the per-k rates;
- `success_figure`, `locality_radius_figure`, `locality_maps_figure`, `r2_figure`: matplotlib
  Figures (object API, no pyplot state) of success vs k, Figure 2's radii and maps, the judged samples and r2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from lcsbench.analysis.lengthgen import K_MAX_STRICT_THRESHOLD, K_MAX_THRESHOLD, SuccessRule

Z_95 = 1.959963984540054  # standard normal quantile of 0.975: two-sided 95% intervals
ORACLE_PASS = 0.9  # evaluate k up to where the Blender oracle row still passes (>= 90%)



@dataclass(frozen=True)
class Row:
    """What the report shows of one experiment besides its numbers (the study passes one per experiment)."""

    title: str  # e.g. "Exp 1: global EDM2, all objects labelled"
    paper: str | None = None  # the paper's value in its notation, e.g. "9+(0-2)"
    colour: str | None = None  # its line colour in the figures
    prediction: str = ""  # what the study predicts of it (the closed forms' table shows it)


def _title(rows: Mapping[str, Row] | None, name: str) -> str:
    return rows[name].title if rows and name in rows else name


def _colour(rows: Mapping[str, Row] | None, name: str) -> str | None:
    return rows[name].colour if rows and name in rows else None


HIGH_NOISE = 10.0  # "closer to the local machine at high noise": the mean r2 over sigma >= this


# --- rates and their intervals -----------------------------------------------------------------------------


def wilson_interval(successes: int, samples: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (scipy's `binomtest(...).proportion_ci(method="wilson")`).

    Unlike the normal interval it stays inside [0, 1] and is not empty at 0 or n successes; (0, 1) for n = 0."""
    if samples < 0 or not 0 <= successes <= max(samples, 0):
        raise ValueError(f"need 0 <= successes <= samples, got {successes} successes of {samples}")
    if samples == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest, norm

    interval = binomtest(successes, samples).proportion_ci(confidence_level=2 * norm.cdf(z) - 1, method="wilson")
    return max(0.0, float(interval.low)), min(1.0, float(interval.high))


def count_rates(row: Mapping, protocol: Mapping) -> dict[str, float]:
    """Per k, the fraction of samples with a number of detected objects that the success rule allows (k, or k to
    k + n - 1 for single labels), locations ignored: does the model draw the right number of objects at all?"""
    rule = SuccessRule(protocol["kind"], tuple(protocol["trained_counts"]), protocol["label_mode"])
    rates = {}
    for k, r in row["per_k"].items():
        fewest, most = rule.extra_range(int(k))
        right = sum(n for count, n in r.get("count_histogram", {}).items()
                    if int(k) + fewest <= int(count) <= int(k) + most)
        rates[k] = right / r["samples"] if r["samples"] else 0.0
    return rates


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


def experiment_summary(lengthgen: Mapping, locality: Mapping | None = None,
                       random_order: Mapping | None = None) -> dict:
    """One experiment's numbers for report.json: the model row's k_max, k_max_strict, per-k success and count
    rates, the success rule, the random-subset row beside the paper's order (when run), and Figure 2's radii per
    noise level."""
    row = lengthgen["rows"]["model"]
    protocol = lengthgen["protocol"]
    summary = {"k_max": int(row["k_max"]), "k_max_strict": int(row["k_max_strict"]),
               "k_max_notation": f"{row['k_max']}{extras_notation(protocol)}", **row_rates(row),
               "count_rate": count_rates(row, protocol), "match": protocol.get("match", "point"),
               "success_rule": protocol.get("success_rule"), "trained_counts": protocol.get("trained_counts"),
               "label_mode": protocol.get("label_mode")}
    if random_order is not None:
        random_row = random_order["rows"]["model"]
        summary["random_order"] = {"k_max": int(random_row["k_max"]), "k_max_strict": int(random_row["k_max_strict"]),
                                   **row_rates(random_row), "count_rate": count_rates(random_row, protocol),
                                   "crowding": random_order["protocol"].get("crowding")}
        summary["crowding"] = protocol.get("crowding")
    if locality is not None:
        summary["locality"] = {key: locality.get(key) for key in (
            "sigmas", "pixel_radius_mean", "conditional_radius_mean", "pixel_radius_scene_std",
            "conditional_radius_scene_std", "scenes", "noise_draws") if key in locality}
    return summary


def rows_agree(one: Mapping, other: Mapping, setting: str) -> dict:
    """Whether two lengthgen runs of one model that differ in one protocol `setting` (steps, seed) tell the same:
    at every k both ran, the two 95% Wilson intervals overlap ("agrees within the interval"); each k's success
    rates keyed by the setting's value."""
    rows = one["rows"]["model"]["per_k"], other["rows"]["model"]["per_k"]
    per_k = {}
    for k in sorted(set(rows[0]) & set(rows[1]), key=int):
        (a_low, a_high), (b_low, b_high) = (wilson_interval(r[k]["successes"], r[k]["samples"]) for r in rows)
        per_k[k] = {setting: {str(one["protocol"].get(setting)): rows[0][k]["success_rate"],
                              str(other["protocol"].get(setting)): rows[1][k]["success_rate"]},
                    "intervals_overlap": a_low <= b_high and b_low <= a_high}
    return {"per_k": per_k, "agrees": bool(per_k) and all(r["intervals_overlap"] for r in per_k.values())}


def steps_agreement(fewer: Mapping, paper_steps: Mapping) -> dict:
    """Whether a row sampled with fewer Heun steps stands for the paper's 32 (rows_agree over `steps`)."""
    return rows_agree(fewer, paper_steps, "steps")


def resample_agreement(first: Mapping, fresh: Mapping) -> dict:
    """Whether the committed weights sampled afresh (another seed: new noise and new random requests) agree with
    the reported row at every k within the intervals, with the fresh run's k_max beside the reported one."""
    fresh_row = fresh["rows"]["model"]
    return rows_agree(first, fresh, "seed") | {"seed": fresh["protocol"].get("seed"),
                                               "k_max": int(fresh_row["k_max"]),
                                               "k_max_strict": int(fresh_row["k_max_strict"])}


def resample_markdown(experiments: Mapping[str, Mapping], rows: Mapping[str, Row]) -> str:
    """table.md's check that each model's row is not one lucky draw: its k_max sampled afresh with another seed."""
    checked = {exp: numbers["resample"] for exp, numbers in experiments.items() if numbers.get("resample")}
    if not checked:
        return ""
    lines = ["", "## Fresh samples (the committed weights sampled again with another seed)", "",
             "| experiment | k_max (reported) | k_max (fresh seed) | every k within the 95% intervals |",
             "|---|---|---|---|"]
    for exp, check in checked.items():
        apart = [k for k, r in check["per_k"].items() if not r["intervals_overlap"]]
        lines.append(f"| {_title(rows, exp)} | {experiments[exp]['k_max_notation']} | {check['k_max']} (seed "
                     f"{check['seed']}) | {'yes' if check['agrees'] else 'no: k = ' + ', '.join(apart)} |")
    return "\n".join(lines) + "\n"


def oracle_summary(lengthgen: Mapping) -> dict | None:
    """The oracle row's numbers (None when lengthgen ran with --no-oracle), and the k up to which it passes."""
    row = lengthgen["rows"].get("oracle")
    if row is None:
        return None
    return {"k_max": int(row["k_max"]), "k_max_strict": int(row["k_max_strict"]), **row_rates(row),
            "passes_90_up_to_k": passes_up_to(row)}


# --- the pre-registered goals ----------------------------------------------------------------------------------


def busy_hours(timings: Mapping[str, Mapping]) -> float | None:
    """Hours during which at least one recorded command of the study ran (the union of their [start, end]
    intervals from timings.json), so fits run side by side count once and pauses between invocations not at all."""
    import datetime

    intervals = []
    for entry in timings.values():
        try:
            end = datetime.datetime.fromisoformat(entry["finished"]).timestamp()
            intervals.append((end - float(entry["seconds"]), end))
        except (KeyError, TypeError, ValueError):
            continue
    if not intervals:
        return None
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            total += 0.0 if current_end is None else current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    total += current_end - current_start
    return round(total / 3600, 2)


FIGURE2_MIN_SIGMA = 10.0  # Figure 2's claim is about high noise: "conditional radius at sigma >= 10"


def radius_below(localities: Mapping[str, Mapping], lower: str, higher: str) -> tuple[dict, bool | None]:
    """`lower`'s mean conditional radius below `higher`'s at every sigma >= 10 by more than the spread across
    scenes (the larger of the two experiments' standard deviations over scenes at that sigma)."""
    if not all(e in localities for e in (lower, higher)):
        return {"note": "locality outputs missing"}, None
    one, two = localities[lower], localities[higher]
    rows = {}
    for i, sigma in enumerate(one["sigmas"]):
        if sigma < FIGURE2_MIN_SIGMA:
            continue
        spread = [loc.get("conditional_radius_scene_std") for loc in (one, two)]
        rows[f"{sigma:g}"] = {lower: one["conditional_radius_mean"][i], higher: two["conditional_radius_mean"][i],
                              "spread": None if None in spread else max(spread[0][i], spread[1][i])}
    if not rows:
        return {"note": f"no sigma >= {FIGURE2_MIN_SIGMA:g} in the locality outputs"}, None
    if any(r["spread"] is None or None in (r[lower], r[higher]) for r in rows.values()):
        return {"per_sigma": rows, "note": "no per-scene spread in locality.json (locality with --scenes >= 2)"}, None
    return {"per_sigma": rows}, all(r[higher] - r[lower] > r["spread"] for r in rows.values())


def goal(goal_id: str, text: str, needs: Sequence[str], present: Sequence[str],
         measure: Callable[[], tuple[dict, bool | None]]) -> dict:
    """One pre-registered goal `{"id", "goal", "experiments", "measured", "passed"}`: measured when every
    experiment it needs is `present`, else `passed` None (not run)."""
    measured, passed = measure() if all(e in present for e in needs) else ({}, None)
    return {"id": goal_id, "goal": text, "experiments": list(needs), "measured": measured, "passed": passed}


def k1_success(summary: Mapping) -> float:
    return float(summary["success"].get("1", 0.0))


def k_max_bound(summary: Mapping, least: int | None = None, most: int | None = None,
                conditioner: float | None = None) -> tuple[dict, bool]:
    """k_max within [least, most]; with `conditioner`, only where the k = 1 success reaches it too (a failure to
    length-generalize counts only for a model that learned its conditioner)."""
    measured = {"k_max": summary["k_max"], "k_max_strict": summary["k_max_strict"]}
    passed = (least is None or summary["k_max"] >= least) and (most is None or summary["k_max"] <= most)
    if conditioner is not None:
        measured = {"k1_success": k1_success(summary), "k_max": summary["k_max"]}
        passed = passed and k1_success(summary) >= conditioner
    return measured, passed


def learned_conditioner(summary: Mapping, least: float = 0.5) -> tuple[dict, bool]:
    """The model draws the one requested object at k = 1 at least `least` of the time."""
    return {"k1_success": k1_success(summary)}, k1_success(summary) >= least


def hours_within(timings: Mapping[str, Mapping], hours_goal: float) -> tuple[dict, bool | None]:
    hours = busy_hours(timings)
    return {"busy_hours": hours}, None if hours is None else hours <= hours_goal


# --- the closed forms ------------------------------------------------------------------------------------------


def closed_form_summary(summaries: Mapping[str, Mapping], kinds: Mapping[str, Mapping]) -> dict:
    """report.json's "closed_form": label mode -> kind -> the closed form's `experiment_summary` (k_max, success
    per k, Figure 2's radii), from the summaries keyed by closed-form name and each one's spec flags (kind,
    label-mode)."""
    grouped: dict[str, dict] = {}
    for name, summary in summaries.items():
        flags = kinds[name]
        grouped.setdefault(flags["label-mode"], {})[flags["kind"]] = {"name": name, **summary}
    return grouped


def high_noise_r2(r2: Mapping, least_sigma: float = HIGH_NOISE) -> dict[str, float]:
    """Per closed form, the mean r2 of a model against it over the noise levels >= least_sigma (r2.json)."""
    picked = [i for i, sigma in enumerate(r2["sigmas"]) if sigma >= least_sigma]
    return {name: float(np.mean([values[i] for i in picked])) for name, values in r2["r2"].items() if picked}


def closer_to_local(r2s: Mapping[str, Mapping], better: str, worse: str, local_of: Mapping[str, str]) -> dict:
    """Whether `better` is closer to its labels' local machine than `worse` to its own, at high noise (mean r2 over
    sigma >= HIGH_NOISE), as a prediction `{"prediction", "measured", "passed"}`."""
    closeness = {e: high_noise_r2(r2s[e]).get(local_of.get(e, "")) if e in r2s else None for e in (better, worse)}
    measured = {f"{e} r2 vs its local machine, sigma >= {HIGH_NOISE:g}": closeness[e] for e in (better, worse)}
    known = None not in closeness.values()
    return {"prediction": f"{better} (length-generalizes) is closer to the local machine at high noise than "
                          f"{worse} (fails)", "measured": measured,
            "passed": (closeness[better] > closeness[worse]) if known else None}


def closed_form_markdown(closed: Mapping[str, Mapping], r2s: Mapping[str, Mapping],
                         predictions: Sequence[Mapping], rows: Mapping[str, Row] | None = None) -> str:
    """table.md's closed-form section: each closed form's k_max and per-k success beside the theory's prediction,
    the high-noise conditional radius, each trained model's r2 against its closed forms, the predictions."""
    lines = ["", "## Closed forms: the theory without training", "",
             "Training-free denoisers of the render's training split, judged by the same rule and judge (samples per "
             "k in the protocol of each `lengthgen.json`). Local score machine: each cell's posterior mean given its "
             "noisy (2r+1)-cell patch, the patch's label sub-grid and the cell's position (an LCS by construction); "
             "empirical denoiser: the exact optimal denoiser of the training set (it memorises).", "",
             "| closed form | labels | predicted | k_max | k_max_strict | success per k | conditional radius, "
             "sigma >= 10 (px) |", "|---|---|---|---|---|---|---|"]
    for mode, kinds in closed.items():
        for kind, summary in kinds.items():
            per_k = " ".join(f"{float(v):.2f}" for v in summary["success"].values())
            radius = "-"
            locality = summary.get("locality") or {}
            if locality.get("conditional_radius_mean"):
                high = [r for s, r in zip(locality["sigmas"], locality["conditional_radius_mean"])
                        if s >= HIGH_NOISE and r is not None]
                radius = f"{np.mean(high):.1f}" if high else "-"
            predicted = rows[summary["name"]].prediction if rows and summary["name"] in rows else "-"
            lines.append(f"| {_title(rows, summary['name'])} | {mode} | "
                         f"{predicted} | {summary['k_max']} | {summary['k_max_strict']} | "
                         f"{per_k} | {radius} |")
    if r2s:
        sigmas = next(iter(r2s.values()))["sigmas"]
        lines += ["", "r2 of each trained model's D against its labels' closed forms (fraction of the model's variance "
                  "across held-out noisy renders that the closed form explains), per noise level:", "",
                  "| model | closed form | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |",
                  "|---|---|" + "---|" * len(sigmas)]
        for exp, r2 in r2s.items():
            for name, values in r2["r2"].items():
                lines.append(f"| {exp} | {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    if predictions:
        lines += ["", "| prediction | measured | result |", "|---|---|---|"]
        lines += [f"| {p['prediction']} | {_short(p['measured'])} | {verdict(p['passed'])} |" for p in predictions]
    lines += ["", "![closed forms: success vs k](closed_forms.png)", ""]
    if r2s:
        lines += ["![r2 against the closed forms](r2.png)", ""]
    return "\n".join(lines)


def r2_figure(r2s: Mapping[str, Mapping], rows: Mapping[str, Row] | None = None) -> Figure:
    """One panel per trained model: its r2 against each closed form over the noise level (log axis)."""
    figure = Figure(figsize=(3.4 * max(1, len(r2s)), 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, max(1, len(r2s)), sharey=True))
    for axis, (exp, r2) in zip(axes, r2s.items()):
        for name, values in r2["r2"].items():
            axis.plot(r2["sigmas"], values, marker="o", ms=3, label=name,
                      ls="-" if "local" in name else "--")
        axis.set_xscale("log")
        axis.set_ylim(-1.0, 1.0)
        axis.axhline(0.0, color="0.6", lw=0.8)
        axis.set_xlabel("sigma (noise level)")
        axis.set_title(_title(rows, exp), fontsize=8)
        axis.legend(fontsize=7)
    axes[0].set_ylabel("r2 of D against the closed form")
    return figure


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
    lengthgens: Mapping[str, Mapping],  # experiment -> lengthgen.json (the paper's order)
    goals: Sequence[Mapping],  # goal_checks
    sample_links: Mapping[str, Mapping[int, str]] | None = None,  # experiment -> k -> relative path of its grid
    randoms: Mapping[str, Mapping] | None = None,  # experiment -> lengthgen.json of random k-subsets
    rows: Mapping[str, Row] | None = None,  # experiment -> its title and the paper's value
    judge: str | None = None,  # how the table names the judge (default: the protocol's path)
    title: str = "Reproduction of Table 1",
) -> str:
    """table.md: Table 1's row beside lcsbench's k_max and k_max_strict (paper order and random k-subsets), the
    goals, and per k the success rate with its 95% Wilson interval, the count rate, the random-subset rate and
    the oracle's, for each experiment."""
    randoms = randoms or {}
    first = next(iter(lengthgens.values()))["protocol"]
    match = first.get("match", "point")
    rule = ("a detection matches a requested location when its centre lies within "
            f"{first.get('tolerance_cells', 1)} cell of the requested grid cell's centre along each axis (the cell "
            "rule: the model is told the cell)") if match == "cell" else (
            f"a detection matches when within {first.get('tolerance_cells', 1)} cell of the requested point")
    conditionings = sorted({str(r["protocol"].get("conditioning", "location")) for r in lengthgens.values()})
    wording = " and ".join({"location": "Location", "color": "Colour"}.get(c, c.title()) for c in conditionings)
    lines = [f"# {title} (scale `{scale}`)", "",
             f"{wording} conditioning; {first.get('samples_per_k')} samples per k, judged by "
             f"`{judge or first.get('judge')}` "
             f"(paper: 8 samples, counted by eye); {rule}, Hungarian matching. k_max: largest k with success > "
             f"{K_MAX_THRESHOLD:.0%} at every k' <= k (App. E.2); k_max_strict: > {K_MAX_STRICT_THRESHOLD:.0%}. "
             "Requests: the paper's 12 locations in its order (k = the first k) and, beside them, random k-subsets "
             "of the 12 (more crowded: see the smallest gap between requests). Count rate: the right number of "
             "objects, locations ignored. Oracle: the same judge on Blender renders of the same requests, each "
             "object at a random point of its cell; a model's k_max means something only up to where the oracle "
             f"passes (>= {ORACLE_PASS:.0%}).",
             "", "| experiment | trained on | paper (Table 1 / Fig. 4) | lcsbench k_max | k_max_strict | random "
             "k-subsets k_max | oracle k_max (strict) | oracle >= 90% up to k |", "|---|---|---|---|---|---|---|---|"]
    for exp, report in lengthgens.items():
        row, oracle = report["rows"]["model"], report["rows"].get("oracle")
        extra = extras_notation(report["protocol"])
        oracle_cells = (f"{oracle['k_max']} ({oracle['k_max_strict']})", str(passes_up_to(oracle))) if oracle \
            else ("-", "-")
        random_cell = f"{randoms[exp]['rows']['model']['k_max']}{extra}" if exp in randoms else "-"
        paper = rows[exp].paper if rows and exp in rows and rows[exp].paper else "-"
        lines.append(f"| {_title(rows, exp)} | {_counts(report['protocol'].get('trained_counts'))} "
                     f"objects, {report['protocol'].get('label_mode')} labels | {paper} | "
                     f"{row['k_max']}{extra} | {row['k_max_strict']}{extra} | {random_cell} | {oracle_cells[0]} | "
                     f"{oracle_cells[1]} |")
    lines += ["", "## Goals (pre-registered)", "", "| goal | measured | result |", "|---|---|---|"]
    for goal in goals:
        measured = ", ".join(f"{k} {_short(v)}" for k, v in goal["measured"].items()) or "-"
        lines.append(f"| {goal['goal']} | {measured} | {verdict(goal['passed'])} |")
    lines += ["", "## Per k (95% Wilson interval, successes/samples)"]
    for exp, report in lengthgens.items():
        lines += _per_k_lines(_title(rows, exp), report, randoms.get(exp), (sample_links or {}).get(exp))
    lines += ["", "## Figures", "", "![success vs k](success_vs_k.png)", "",
              "![locality radii](locality_radius.png)", "", "![Eq. 10 maps](locality_maps.png)", ""]
    return "\n".join(lines)


def _per_k_lines(title: str, report: Mapping, random_order: Mapping | None, links: Mapping[int, str] | None
                 ) -> list[str]:
    """table.md's per-k section of one experiment: success with its interval, count rate, random-subset and oracle
    rates, misses and extras, the smallest gap between requests, the links to its sample grids."""
    protocol = report["protocol"]
    model = row_rates(report["rows"]["model"])
    counted = count_rates(report["rows"]["model"], protocol)
    oracle = row_rates(report["rows"]["oracle"]) if "oracle" in report["rows"] else None
    random_rates = row_rates(random_order["rows"]["model"]) if random_order else None
    gaps = (protocol.get("crowding") or {}, (random_order["protocol"].get("crowding") or {}) if random_order else {})
    lines = ["", f"### {title}", "", f"Success rule: {protocol.get('success_rule', '-')}.", "",
             "| k | success (paper order) | count rate | success (random k-subsets) | oracle | mean missing | "
             "mean extra | smallest gap, px (paper / random) |", "|---|---|---|---|---|---|---|---|"]
    for k in model["success"]:
        gap = " / ".join(f"{g[k]:.1f}" if k in g else "-" for g in gaps)
        lines.append(f"| {k} | {_rate_cell(model, k)} | {counted[k]:.2f} | "
                     f"{_rate_cell(random_rates, k) if random_rates else '-'} | "
                     f"{_rate_cell(oracle, k) if oracle else '-'} | {model['mean_missing'][k]:.2f} | "
                     f"{model['mean_extra'][k]:.2f} | {gap} |")
    if links:
        lines += ["", "Samples with detections (green squares: requested cells, green +: requested points, "
                  "yellow o: matched, red o: extra): "
                  + " ".join(f"[k={k}]({path})" for k, path in sorted(links.items()))]
    return lines


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


def success_figure(lengthgens: Mapping[str, Mapping], randoms: Mapping[str, Mapping] | None = None,
                   title: str = "Length generalization (Table 1, App. E.2)",
                   rows: Mapping[str, Row] | None = None) -> Figure:
    """Success rate vs k for every experiment with its 95% Wilson band (the paper's order solid, random k-subsets
    dotted when given); the oracle row dashed (drawn once when the experiments' oracle rows agree, as they do
    when they judge the same renders)."""
    figure = Figure(figsize=(7.2, 4.4), layout="constrained")
    axis = figure.subplots()
    oracles: dict[tuple, list[str]] = {}
    for exp, report in lengthgens.items():
        _rate_curve(axis, report["rows"]["model"], _colour(rows, exp), "-", "o",
                    f"{_title(rows, exp)} (k_max {report['rows']['model']['k_max']})")
        if randoms and exp in randoms:
            _rate_curve(axis, randoms[exp]["rows"]["model"], _colour(rows, exp), ":", ".",
                        f"  random k-subsets (k_max {randoms[exp]['rows']['model']['k_max']})", band_alpha=0.06)
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
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7)
    return figure


def _rate_curve(axis, row: Mapping, color, style: str, marker: str, label: str, band_alpha: float = 0.18) -> None:
    ks = sorted(int(k) for k in row["per_k"])
    rates = [row["per_k"][str(k)]["success_rate"] for k in ks]
    bands = np.array([wilson_interval(row["per_k"][str(k)]["successes"], row["per_k"][str(k)]["samples"])
                      for k in ks])
    axis.plot(ks, rates, ls=style, marker=marker, ms=4, color=color, label=label)
    axis.fill_between(ks, bands[:, 0], bands[:, 1], color=color, alpha=band_alpha, lw=0)


def learning_curves_figure(series: Mapping[str, Mapping[int, float]], title: str) -> Figure:
    """Training curves of one run (train until they stop rising): the conditioning gap per noise level,
    the length-generalization success per k (LengthGenCurve) and the validation loss, against the step."""
    panels = (("cond_gap/gap@", "conditioning gap (rolled - true) / true"),
              ("lengthgen/success@", "length generalization: success per k"), ("val/loss", "validation loss"))
    figure = Figure(figsize=(12.0, 3.4), layout="constrained")
    axes = figure.subplots(1, len(panels))
    for axis, (prefix, label) in zip(axes, panels):
        tags = sorted(t for t in series if t.startswith(prefix) and (prefix != "val/loss" or t == "val/loss"))
        for tag in tags:
            steps = sorted(series[tag])
            axis.plot(steps, [series[tag][s] for s in steps], marker=".", ms=3, label=tag[len(prefix):] or tag)
        axis.set_xlabel("optimizer step")
        axis.set_title(label, fontsize=9)
        if tags:
            axis.legend(fontsize=7, title="sigma" if prefix.startswith("cond") else None, title_fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def locality_radius_figure(localities: Mapping[str, Mapping], rows: Mapping[str, Row] | None = None) -> Figure:
    """Figure 2's summary: the pixel (Eq. 9; dashed: of D - c_skip x) and conditional (Eq. 10) 90% radii against
    the noise level, one line per experiment: the mean over scenes (targets and conditioners averaged within a
    scene) with a band of one standard deviation across scenes where several were measured. The radius axis
    runs from 0 to the image size."""
    figure = Figure(figsize=(10.0, 3.8), layout="constrained")
    axes = figure.subplots(1, 2)
    size = 0
    for exp, locality in localities.items():
        sigmas = locality["sigmas"]
        size = max(size, int(locality.get("resolution") or 0))
        for axis, key, style in ((axes[0], "pixel_radius", "-"), (axes[0], "pixel_radius_without_skip", "--"),
                                 (axes[1], "conditional_radius", "-")):
            mean = locality.get(f"{key}_mean")
            if mean is None:
                continue
            values = np.array([np.nan if v is None else v for v in mean], dtype=float)
            label = _title(rows, exp) + (" (D - c_skip x)" if "without" in key else "")
            axis.plot(sigmas, values, ls=style, marker="o", ms=3, color=_colour(rows, exp), label=label)
            spread = locality.get(f"{key}_scene_std")
            if spread is not None and locality.get("scenes", 1) > 1 and style == "-":
                spread = np.array([0.0 if v is None else v for v in spread], dtype=float)
                axis.fill_between(sigmas, values - spread, values + spread, color=_colour(rows, exp), alpha=0.15,
                                  lw=0)
    first = next(iter(localities.values()))
    fraction, scenes = first.get("fraction", 0.9), first.get("scenes", 1)
    axes[0].set_title(f"pixel locality (Eq. 9): {fraction:.0%} radius", fontsize=9)
    axes[1].set_title(f"conditional locality (Eq. 10): {fraction:.0%} radius", fontsize=9)
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("sigma (noise level)")
        axis.set_ylabel("radius (pixels)")
        if size:
            axis.set_ylim(0, size)
            axis.axhline(size / 2, color="0.6", lw=0.8, ls=":")
        axis.legend(fontsize=7)
    figure.suptitle(f"Figure 2: mean over {scenes} scene(s) x {first.get('noise_draws', first.get('samples', '?'))} "
                    f"noise draws x every conditioner; band: one standard deviation across scenes"
                    + (f"; image {size} px (dotted: half of it)" if size else ""), fontsize=9)
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
        axes[row, 1].set_title(f"Eq. 9 at pixel {tuple(int(v) for v in target)}", fontsize=7)
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
            axis.set_title(f"Eq. 10, cell {tuple(int(v) for v in conditioners[j])}", fontsize=7)
        axes[row, 0].set_title(f"sample; sigma={float(m['sigmas'][top]):g}", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("Pixel (Eq. 9) and conditional (Eq. 10) maps at the highest noise level; pixels and cells are "
                    "(row, col) from the top-left", fontsize=9)
    return figure
