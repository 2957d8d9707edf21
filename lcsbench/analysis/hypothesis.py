"""The paper's central claim measured as a relation across many models (Sections 3-4): a model whose conditional
score is local (Eq. 10's 90% radius small, r2 against the local score machine high) length-generalizes (Table 1's
k_max high).

Spearman's rank correlation between a locality measure and k_max over a set of models, with a percentile
bootstrap interval over the models (resampled with replacement), and a scatter figure with one labelled point
per model. Pure functions on plain numbers; the study collects them from each model's locality.json, r2.json and
lengthgen.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import spearmanr

BOOTSTRAP_DRAWS = 10_000
LEVEL = 0.95


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (ties take their average rank); None where it is undefined (fewer than 3 pairs, or one
    side constant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"rho pairs two measures of the same models: got {len(x)} and {len(y)} values")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def bootstrap_interval(
    x: Sequence[float],
    y: Sequence[float],
    draws: int = BOOTSTRAP_DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of Spearman's rho over the models: `draws` resamples of the pairs with
    replacement; resamples where rho is undefined (a constant side) are dropped. None if too few remain."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    generator = np.random.default_rng(seed)
    rhos = []
    for _ in range(draws):
        pick = generator.integers(0, len(x), len(x))
        rho = spearman_rho(x[pick], y[pick])
        if rho is not None and np.isfinite(rho):
            rhos.append(rho)
    if len(rhos) < draws // 2:
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(rhos, [tail, 1 - tail])
    return float(low), float(high)


def rank_relation(
    points: Mapping[str, Mapping[str, float | None]],  # {model: {measure: value}}
    measure: str,  # e.g. "radius@10"
    outcome: str = "k_max",
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict:
    """rho(measure, outcome) over the models that have both, its bootstrap interval and the models it used."""
    used = sorted(name for name, values in points.items()
                  if values.get(measure) is not None and values.get(outcome) is not None)
    x = [float(points[name][measure]) for name in used]
    y = [float(points[name][outcome]) for name in used]
    rho = spearman_rho(x, y)
    interval = bootstrap_interval(x, y, draws=draws, seed=seed) if rho is not None else None
    return {"measure": measure, "outcome": outcome, "rho": rho,
            "interval95": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
            "n": len(used), "models": used, "bootstrap_draws": draws}


def hypothesis_figure(
    points: Mapping[str, Mapping[str, float | None]],  # the models whose rho is computed
    measures: Sequence[str],  # one panel each, e.g. ("radius@10", "r2@2")
    relations: Mapping[str, Mapping],  # measure -> rank_relation's dict (its rho in the panel title)
    apart: Mapping[str, Mapping[str, float | None]] | None = None,  # drawn but not in rho (patch-local models)
    outcome: str = "k_max",
    labels: Mapping[str, str] | None = None,  # axis label per measure
) -> Figure:
    """One scatter per measure: outcome against the measure, one labelled point per model; the models drawn
    apart are hollow squares (their radius is fixed by construction, so they stay out of rho)."""
    figure = Figure(figsize=(5.2 * len(measures), 4.4))
    for i, measure in enumerate(measures):
        axis = figure.add_subplot(1, len(measures), i + 1)
        for group, style in ((points, {"marker": "o", "color": "tab:blue"}),
                             (apart or {}, {"marker": "s", "facecolors": "none", "edgecolors": "tab:red"})):
            for name, values in group.items():
                if values.get(measure) is None or values.get(outcome) is None:
                    continue
                axis.scatter([values[measure]], [values[outcome]], s=36, **style)
                axis.annotate(name, (values[measure], values[outcome]), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
        relation = relations.get(measure, {})
        rho, interval = relation.get("rho"), relation.get("interval95")
        title = "rho undefined" if rho is None else f"Spearman rho {rho:+.2f}"
        if interval:
            title += f" [{interval[0]:+.2f}, {interval[1]:+.2f}]"
        axis.set_title(f"{title} (n = {relation.get('n', 0)})", fontsize=9)
        axis.set_xlabel((labels or {}).get(measure, measure))
        axis.set_ylabel(outcome)
        axis.grid(alpha=0.3)
    if apart:
        figure.text(0.01, 0.01, "hollow squares: patch-local models, drawn apart (radius fixed by construction)",
                    fontsize=7)
    figure.tight_layout()
    return figure
