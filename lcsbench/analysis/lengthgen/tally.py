"""Length-generalization protocol, part 3: per-k counts, k_max and the lengthgen.json document (Appendix E.2).

`LengthGenTally` adds judged samples per k (and across processes), `summarize` gives one row of lengthgen.json,
`k_max` the paper's rule, `lengthgen_report` the document and `table_row` its Table-1 line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from lcsbench.analysis.lengthgen.protocol import SuccessRule

K_MAX_THRESHOLD = 0.25  # E.2: "succeeds ... more than 25% of the time"
K_MAX_STRICT_THRESHOLD = 0.5


# --- aggregation -------------------------------------------------------------------------------------


@dataclass
class LengthGenTally:
    """Per-k counts of a length-generalization run; counts add across batches and processes (`merge`)."""

    samples: dict[int, int] = field(default_factory=dict)
    successes: dict[int, int] = field(default_factory=dict)
    missing: dict[int, int] = field(default_factory=dict)
    extra: dict[int, int] = field(default_factory=dict)
    detected: dict[int, int] = field(default_factory=dict)
    histogram: dict[int, Counter] = field(default_factory=dict)

    def add(self, k: int, match: Mapping[str, int], rule: SuccessRule) -> bool:
        """Record one judged sample with k requested objects; returns whether it succeeded."""
        ok = rule.success(k, int(match["missing"]), int(match["extra"]))
        for table, value in ((self.samples, 1), (self.successes, int(ok)), (self.missing, match["missing"]),
                             (self.extra, match["extra"]), (self.detected, match["detected"])):
            table[k] = table.get(k, 0) + int(value)
        self.histogram.setdefault(k, Counter())[int(match["detected"])] += 1
        return ok

    def merge(self, other: LengthGenTally) -> LengthGenTally:
        for name in ("samples", "successes", "missing", "extra", "detected"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for k, value in theirs.items():
                mine[k] = mine.get(k, 0) + value
        for k, counts in other.histogram.items():
            self.histogram.setdefault(k, Counter()).update(counts)
        return self

    def summarize(self) -> dict:
        """The row of lengthgen.json: per-k rates and k_max (paper rule) / k_max_strict."""
        per_k = {}
        for k in sorted(self.samples):
            n = self.samples[k]
            per_k[str(k)] = {
                "samples": n,
                "successes": self.successes[k],
                "success_rate": self.successes[k] / n,
                "mean_missing": self.missing[k] / n,
                "mean_extra": self.extra[k] / n,
                "mean_detected": self.detected[k] / n,
                "count_histogram": {str(c): v for c, v in sorted(self.histogram[k].items())},
            }
        rates = {int(k): row["success_rate"] for k, row in per_k.items()}
        return {"k_max": k_max(rates, K_MAX_THRESHOLD), "k_max_strict": k_max(rates, K_MAX_STRICT_THRESHOLD),
                "per_k": per_k}


def k_max(success_rates: Mapping[int, float], threshold: float = K_MAX_THRESHOLD) -> int:
    """Largest k with success rate > threshold for every k' <= k, counting up from k = 1 (E.2); 0 if k=1 fails.

    A k that was not evaluated ends the run (nothing is assumed about it).
    """
    best = 0
    k = 1
    while k in success_rates and success_rates[k] > threshold:
        best = k
        k += 1
    return best


def lengthgen_report(protocol: Mapping, rows: Mapping[str, LengthGenTally]) -> dict:
    """The lengthgen.json document (package docstring) from the protocol settings and one tally per row."""
    return {"protocol": dict(protocol), "rows": {name: tally.summarize() for name, tally in rows.items()}}


def table_row(name: str, report: Mapping) -> str:
    """A Table-1-style markdown row: `| name | model k_max (strict) | oracle k_max (strict) |`."""
    rows = report["rows"]
    rule = report["protocol"]

    try:  # the extras the success rule allows, in the paper's notation ("9+(0-2)")
        extra = SuccessRule(rule["kind"], tuple(rule["trained_counts"]), rule["label_mode"]).extras_notation()
    except (KeyError, TypeError, ValueError):  # a report without (valid) training settings: no extras shown
        extra = ""

    def cell(row: Mapping) -> str:
        return f"{row['k_max']}{extra} (strict {row['k_max_strict']})"

    cells = [cell(rows[r]) if r in rows else "-" for r in ("model", "oracle")]
    return f"| {name} | {cells[0]} | {cells[1]} |"


TABLE_HEADER = "| model | k_max (paper rule, >25%) | oracle (judge on Blender renders) |\n|---|---|---|"

