"""The report's view of the whole paper: Tables 1 and 2 in its layout, Figure 5 for the colour models, and the
hypothesis (local conditional scores <=> length generalization) as rank correlations across every model.

Works on what the report stage collected (lengthgen, locality, r2 and features outputs) and the records; the
statistics and figures are analysis/'s (paper_tables, hypothesis, figure5)."""

from __future__ import annotations

from lcsbench.analysis.figure5 import FEATURE_SPACE
from lcsbench.study.records import REGISTRY
from lcsbench.study.runner import Study

# The hypothesis measured: the conditional 90% radius (Eq. 10) at two high
# noise levels, and r2 against the local score machine of the model's own labels and counts at three.
RADIUS_SIGMAS = (10.0, 40.0)
R2_SIGMAS = (1.0, 2.0, 10.0)
HYPOTHESIS_PAIRS = ("radius@10", "r2@2")  # the pre-registered pair: rho <= -0.5 and rho >= 0.5


def colour_gate(k_max: int | None, oracle: dict | None) -> tuple[int | None, int | None]:
    """A colour model's k_max counted only up to the k where the judge still reads the oracle's colours >= 90% of
    the time, and that k (None: no oracle row)."""
    if oracle is None or k_max is None:
        return k_max, None
    valid = int(oracle.get("passes_90_up_to_k") or 0)
    return min(k_max, valid), valid


def table_models(study: Study, summary: dict) -> dict[str, dict]:
    """Each trained experiment as paper_tables reads it: what it is (from its record) and its k_max."""
    from lcsbench.data.scenes import parse_counts

    models = {}
    for name in study.scale.experiments:
        record = study.record_of(name)
        if not record.trained:
            continue
        numbers = summary["experiments"].get(name, {})
        k_max, notation = numbers.get("k_max"), numbers.get("k_max_notation")
        judge_valid = None
        if record.conditioning == "color" and k_max is not None:
            gated, judge_valid = colour_gate(k_max, summary["oracle"]["per_experiment"].get(name))
            if gated != k_max:
                k_max, notation = gated, f"{gated} (judge limit; model {notation})"
        models[name] = {"kind": record.model, "conditioning": record.conditioning, "label_mode": record.label_mode,
                        "counts": parse_counts(record.counts), "paper": record.paper, "k_max": k_max,
                        "k_max_notation": notation, "k_max_strict": numbers.get("k_max_strict"),
                        "weights": str(study.weights(name)) if name in summary["experiments"] else None,
                        "judge_valid_up_to": judge_valid, "steps": numbers.get("steps")}
    return models


def paper_tables(study: Study, summary: dict) -> dict:
    from lcsbench.analysis.paper_tables import paper_tables as cells

    return cells(table_models(study, summary))


def at_sigma(sigmas: list, values: list | None, sigma: float) -> float | None:
    """values[i] where sigmas[i] == sigma (None where it was not measured)."""
    if not values:
        return None
    for s, v in zip(sigmas, values):
        if abs(float(s) - sigma) < 1e-9:
            return None if v is None else float(v)
    return None


def hypothesis_point(study: Study, name: str, numbers: dict, r2: dict | None) -> dict:
    """One model's point: k_max, the conditional 90% radius at RADIUS_SIGMAS, r2 against its local closed form
    at R2_SIGMAS."""
    point: dict = {"k_max": numbers.get("k_max")}
    locality = numbers.get("locality") or {}
    for sigma in RADIUS_SIGMAS:
        point[f"radius@{sigma:g}"] = at_sigma(locality.get("sigmas", []), locality.get("conditional_radius_mean"),
                                              sigma)
    local = [spec for spec in (r2 or {}).get("r2", {}) if spec in REGISTRY
             and REGISTRY[spec].closed_form == "local"]
    for sigma in R2_SIGMAS:
        point[f"r2@{sigma:g}"] = at_sigma(r2["sigmas"], r2["r2"][local[0]], sigma) if local else None
    point["r2_against"] = local[0] if local else None
    return point


def hypothesis(study: Study, summary: dict, r2s: dict) -> dict:
    """rho(radius at sigma 10 and 40, k_max) and rho(r2 at sigma 1, 2, 10, k_max) over the global location models,
    with bootstrap intervals; the patch-local models' points beside them, outside rho."""
    from lcsbench.analysis.hypothesis import rank_relation

    points, apart = {}, {}
    for name, numbers in summary["experiments"].items():
        record = study.record_of(name)
        if record.conditioning != "location":
            continue
        point = hypothesis_point(study, name, numbers, r2s.get(name))
        (points if record.model == "global" else apart)[name] = point
    measures = [f"radius@{s:g}" for s in RADIUS_SIGMAS] + [f"r2@{s:g}" for s in R2_SIGMAS]
    relations = {measure: rank_relation(points, measure) for measure in measures}
    return {"points": points, "patch_local": apart, "relations": relations, "pre_registered": list(HYPOTHESIS_PAIRS)}


def figure5(features: dict[str, dict]) -> dict[str, dict]:
    """{colour model: {layer: {...}}} from each colour model's features.json (analysis/figure5.py's summary)."""
    from lcsbench.analysis.figure5 import figure5_summary

    return {name: figure5_summary(document) for name, document in features.items()}


def figures(tables: dict, hypothesis_numbers: dict, features: dict[str, dict]) -> dict:
    """The figures of the paper's layout that have data: Table 1's trend (Figure 8), Figures 5 and 11, the
    hypothesis scatter."""
    from lcsbench.analysis import figure5 as f5
    from lcsbench.analysis.hypothesis import hypothesis_figure
    from lcsbench.analysis.paper_tables import TABLE1_COLUMNS, trend_figure

    drawn = {}
    if any(cell.get("k_max") is not None for row in tables["table1"].values() for cell in row.values()):
        drawn["table1_trend"] = trend_figure(tables["table1"], TABLE1_COLUMNS,
                                             "k_max against the objects seen in training (Figure 8's trend)")
    if features:
        drawn["figure5"] = f5.figure5(features, parts=("encoder",), title="Figure 5: colour, encoder MCScale layers")
        drawn["figure11"] = f5.figure5(features, parts=("encoder", "decoder"),
                                       title="Figure 11: colour, every MCScale layer")
    if len(hypothesis_numbers["points"]) >= 3:
        drawn["hypothesis"] = hypothesis_figure(
            hypothesis_numbers["points"], HYPOTHESIS_PAIRS, hypothesis_numbers["relations"],
            apart=hypothesis_numbers["patch_local"],
            labels={"radius@10": "conditional 90% radius at sigma 10 (px)",
                    "r2@2": "r2 against the local score machine at sigma 2"})
    return drawn


def markdown(tables: dict, hypothesis_numbers: dict, figure5_numbers: dict) -> str:
    """table.md's sections for the paper's two tables, the hypothesis and Figure 5."""
    from lcsbench.analysis.paper_tables import ROWS, TABLE1_COLUMNS, TABLE2_COLUMNS, table_markdown

    lines = ["", "## The paper's tables", ""]
    lines += table_markdown(tables["table1"], TABLE1_COLUMNS, ROWS, "Table 1: location (Exp 1-3) and colour")
    lines += [""] + table_markdown(tables["table2"], TABLE2_COLUMNS, ROWS[2:], "Table 2: label modes, global model")
    lines += ["", "## The hypothesis across models", "",
              "Spearman's rho between a locality measure and k_max over the global location models (95% percentile "
              "bootstrap interval over the models); the patch-local models are drawn apart (their radius is fixed "
              "by construction).", "", "| measure | rho | 95% interval | models |", "|---|---|---|---|"]
    for measure, relation in hypothesis_numbers["relations"].items():
        rho, interval = relation["rho"], relation["interval95"]
        lines.append(f"| {measure} | {'-' if rho is None else f'{rho:+.2f}'} | "
                     f"{'-' if not interval else f'[{interval[0]:+.2f}, {interval[1]:+.2f}]'} | {relation['n']} |")
    if figure5_numbers:
        lines += ["", "## Figure 5: colour disentanglement (mean |off-diagonal cosine|, chance level beside it)", "",
                  "| model | feature-space | chance | encoder layers below chance |", "|---|---|---|---|"]
        for name, layers in figure5_numbers.items():
            space = layers["feature-space"]
            below = [layer for layer, row in layers.items() if row["part"] == "encoder" and row["below_chance"]]
            lines.append(f"| {name} | {fmt(space['mean_abs_off_diagonal'])} | {fmt(space['chance'])} | "
                         f"{len(below)} of {sum(row['part'] == 'encoder' for row in layers.values())} |")
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --- the goals across experiments, pre-registered for the whole paper (records hold the per-model bounds) -------


def k_max_of(summary: dict, name: str) -> int | None:
    return (summary["experiments"].get(name) or {}).get("k_max")


def whole_paper_goals(study: Study, summary: dict) -> list[dict]:
    """Trend, labels, colour, Figure 5 and the hypothesis: each measured once every model it needs is evaluated."""
    from lcsbench.analysis import report as rp

    present = list(summary["experiments"])
    k = lambda name: k_max_of(summary, name)  # noqa: E731 - read at measure time
    goals = [
        rp.goal("trend_exp1", "Trend: Exp 1's k_max at 1-5 objects >= 5 and >= its k_max at 1-3",
                ["exp1", "exp1_1to5"], present,
                lambda: ({"exp1": k("exp1"), "exp1_1to5": k("exp1_1to5")}, k("exp1_1to5") >= max(5, k("exp1")))),
        rp.goal("labels_restore", "Labels: at 1-5 objects the random-number and drop-one models reach k_max >= 4 "
                "while Exp 2 stays at k_max <= 2", ["random_1to5", "drop_one_1to5", "exp2_1to5"], present,
                lambda: ({n: k(n) for n in ("random_1to5", "drop_one_1to5", "exp2_1to5")},
                         k("random_1to5") >= 4 and k("drop_one_1to5") >= 4 and k("exp2_1to5") <= 2)),
        rp.goal("colour_trend", "Colour: k_max 1 on 1 object, >= 4 at 1-5 objects, non-decreasing with the "
                "training count", ["color_1", "color_1to3", "color_1to5"], present,
                lambda: ({n: k(n) for n in ("color_1", "color_1to3", "color_1to5")},
                         k("color_1") == 1 and k("color_1to5") >= 4 and k("color_1") <= k("color_1to3") <= k(
                             "color_1to5"))),
        rp.goal("figure5_disentangled", "Figure 5: the 1-5 colour model has an encoder layer below its chance level "
                "and its feature-space layers are more disentangled than the 1-object colour model's",
                ["color_1", "color_1to5"], [n for n in summary.get("figure5", {})],
                lambda: figure5_check(summary["figure5"])),
    ]
    needs = [n for n in study.scale.experiments if study.record_of(n).trained
             and study.record_of(n).model == "global" and study.record_of(n).conditioning == "location"]
    goals.append(rp.goal(
        "hypothesis", "Hypothesis: over the global location models rho(conditional radius at sigma 10, k_max) <= "
        "-0.5 and rho(r2 at sigma 2, k_max) >= 0.5", needs, present, lambda: hypothesis_check(summary["hypothesis"])))
    return goals


def figure5_check(numbers: dict) -> tuple[dict, bool | None]:
    wide, one = numbers["color_1to5"], numbers["color_1"]
    below = [layer for layer, row in wide.items() if row["part"] == "encoder" and row["below_chance"]]
    space_wide, space_one = wide[FEATURE_SPACE]["mean_abs_off_diagonal"], one[FEATURE_SPACE]["mean_abs_off_diagonal"]
    measured = {"encoder_layers_below_chance": below, "feature_space": {"color_1to5": space_wide, "color_1": space_one}}
    if space_wide is None or space_one is None:
        return measured, None
    return measured, bool(below) and space_wide < space_one


def hypothesis_check(numbers: dict) -> tuple[dict, bool | None]:
    radius, r2 = numbers["relations"]["radius@10"], numbers["relations"]["r2@2"]
    measured = {"radius@10": {k: radius[k] for k in ("rho", "interval95", "n")},
                "r2@2": {k: r2[k] for k in ("rho", "interval95", "n")}}
    if radius["rho"] is None or r2["rho"] is None:
        return measured, None
    return measured, radius["rho"] <= -0.5 and r2["rho"] >= 0.5
