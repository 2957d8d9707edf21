"""The pre-registered goals, built from the records (each experiment's predicted k_max bound) and the study's
claims across experiments (Figure 2's pair, the closed forms against the trained models, the time budget)."""

from __future__ import annotations

from collections.abc import Mapping

from lcsbench.analysis import report as rp
from lcsbench.study.records import Experiment

CONDITIONER_LEAST = 0.5  # a failure to length-generalize counts only where k = 1 succeeds this often
FIGURE2_PAIR = ("exp1", "exp2")  # Figure 2: all labels (conditionally local) against one label (not)
CLOSENESS_PAIRS = (("exp1", "exp2"), ("exp3", "exp2"))  # generalizes vs fails: which is nearer its local machine
STUDY_HOURS_GOAL = 16.0  # the whole paper's cpu study (render, fits, evaluations, report) within 16 busy hours


def record_goals(records: list[Experiment], experiments: Mapping[str, Mapping]) -> list[dict]:
    """Per trained experiment with a predicted bound: the bound on k_max; a predicted failure needs the model to
    have learned its conditioner first (a goal of its own where the record says so)."""
    present = list(experiments)
    goals = []
    for record in records:
        if record.k_max_at_least is None and record.k_max_at_most is None:
            continue
        summary = experiments.get(record.name)
        if record.learned_first:
            goals.append(rp.goal(f"{record.name}_learned_its_conditioner",
                                 f"{record.title}: counts only if its k = 1 success is >= {CONDITIONER_LEAST:.0%}",
                                 [record.name], present, lambda s=summary: rp.learned_conditioner(s)))
        kind = "length_generalizes" if record.k_max_at_least is not None else "fails"
        goals.append(rp.goal(
            f"{record.name}_{kind}", f"{record.title}: {record.prediction} (the paper: {record.paper})",
            [record.name], present,
            lambda s=summary, r=record: rp.k_max_bound(s, r.k_max_at_least, r.k_max_at_most,
                                                        CONDITIONER_LEAST if r.learned_first else None)))
    return goals


def goal_checks(records: list[Experiment], experiments: Mapping[str, Mapping],
                localities: Mapping[str, Mapping] | None = None,
                timings: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Every pre-registered goal of the study: the records' bounds, Figure 2's pair, the time budget (only where
    timings were recorded)."""
    goals = record_goals(records, experiments)
    lower, higher = FIGURE2_PAIR
    if any(r.name == lower for r in records) and any(r.name == higher for r in records):
        goals.append(rp.goal(
            "figure2_conditional_locality", f"Figure 2: {lower}'s conditional 90% radius at sigma >= "
            f"{rp.FIGURE2_MIN_SIGMA:g} below {higher}'s by more than the spread across scenes", [lower, higher],
            list(experiments), lambda: rp.radius_below(localities or {}, lower, higher)))
    if timings is not None:
        goals.append(rp.goal("study_time", f"the whole study within {STUDY_HOURS_GOAL:g} hours of 2 cores (busy time "
                                           f"of the commands timings.json records; measured once every model is "
                                           f"evaluated)", [r.name for r in records], list(experiments),
                             lambda: rp.hours_within(timings, STUDY_HOURS_GOAL)))
    return goals


def local_machine_of(records: Mapping[str, Experiment], name: str) -> str | None:
    """The local score machine of a trained model's labels and object counts, if the study has it."""
    model = records[name]
    return next((r.name for r in records.values() if r.closed_form == "local" and r.label_mode == model.label_mode
                 and r.counts == model.counts), None)


def closed_form_predictions(records: Mapping[str, Experiment], closed: Mapping[str, Mapping],
                            r2s: Mapping[str, Mapping]) -> list[dict]:
    """The theory's predictions: each closed form's k_max bound (its record), and the models that length-generalize
    nearer to their labels' local machine at high noise than the one that fails (CLOSENESS_PAIRS)."""
    checks = []
    for mode, kinds in closed.items():
        for kind, summary in kinds.items():
            record = records[summary["name"]]
            bound = f"k_max > {record.k_max_at_least - 1}" if record.k_max_at_least is not None else \
                f"k_max <= {record.k_max_at_most}"
            checks.append({"prediction": f"{'local score machine' if kind == 'local' else 'empirical denoiser'}, "
                                         f"{mode} labels: {bound}", "measured": {"k_max": summary["k_max"]},
                           "passed": rp.k_max_bound(summary, record.k_max_at_least, record.k_max_at_most)[1]})
    local_of = {name: machine for name in records if records[name].trained
                if (machine := local_machine_of(records, name)) is not None}
    for better, worse in CLOSENESS_PAIRS:
        if better in records and worse in records:
            checks.append(rp.closer_to_local(r2s, better, worse, local_of))
    return checks
