"""Length-generalization protocol (analysis/lengthgen.py): requests, matching, success rules, k_max."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcsbench.analysis import lengthgen as lg
from lcsbench.data.conditioning import PAPER_LOCATIONS

RES, G = 64, 16
CELL = RES / G  # 4 pixels


def test_requests_paper_order_random_subsets_and_limits():
    assert lg.requested_locations(3) == list(PAPER_LOCATIONS[:3])
    subset = lg.requested_locations(5, "random", torch.Generator().manual_seed(1))
    assert len(set(subset)) == 5 and set(subset) <= set(PAPER_LOCATIONS)
    assert subset != lg.requested_locations(5, "random", torch.Generator().manual_seed(2))
    assert lg.requested_colors(2) == ["blue", "brown"]
    with pytest.raises(ValueError, match="k in 1..12"):
        lg.requested_locations(13)
    with pytest.raises(ValueError, match="k in 1..8"):
        lg.requested_colors(9)
    with pytest.raises(ValueError, match="generator"):
        lg.requested_locations(2, "random")


def test_matching_exact_occluded_duplicate_and_far_detections():
    requested = lg.fractions_to_pixels(PAPER_LOCATIONS[:3], RES)
    exact = lg.match_locations(requested, requested + 0.7, CELL)
    assert (exact["matched"], exact["missing"], exact["extra"]) == (3, 0, 0)
    # occluded: the third object is hidden behind another, so only two detections
    occluded = lg.match_locations(requested, requested[:2], CELL)
    assert (occluded["matched"], occluded["missing"], occluded["extra"]) == (2, 1, 0)
    # duplicate: the first object detected twice (two peaks on one object) is one match and one extra
    duplicate = lg.match_locations(requested, np.vstack([requested, requested[:1] + 1.0]), CELL)
    assert (duplicate["matched"], duplicate["missing"], duplicate["extra"]) == (3, 0, 1)
    # a detection 1.5 cells away is outside the default tolerance, inside a 2-cell one
    far = requested[:1] + np.array([[1.5 * CELL, 0.0]])
    assert lg.match_locations(requested[:1], far, CELL)["matched"] == 0
    assert lg.match_locations(requested[:1], far, CELL, tolerance_cells=2.0)["matched"] == 1
    empty = lg.match_locations(requested, np.zeros((0, 2)), CELL)
    assert (empty["matched"], empty["missing"], empty["extra"], empty["detected"]) == (0, 3, 0, 0)


def test_hungarian_beats_greedy_assignment():
    # A greedy nearest match would pair request 0 with detection 0 and leave request 1 unmatched;
    # the optimal assignment matches both within one cell.
    requested = np.array([[10.0, 10.0], [13.0, 10.0]])
    detected = np.array([[12.0, 10.0], [8.0, 10.0]])
    match = lg.match_locations(requested, detected, CELL)
    assert match["matched"] == 2 and sorted(match["pairs"]) == [(0, 1), (1, 0)]


def test_color_matching_counts_multisets():
    match = lg.match_colors(["red", "blue", "red"], ["red", "blue", "blue", "green"])
    assert (match["matched"], match["missing"], match["extra"]) == (2, 1, 2)


def test_success_rules_all_and_single_label():
    exp1 = lg.SuccessRule("location", (1, 2, 3), "all")
    assert exp1.success(2, 0, 0) and not exp1.success(2, 0, 1) and not exp1.success(5, 0, 1)
    assert exp1.success(5, 0, 0) and not exp1.success(5, 1, 0)
    color = lg.SuccessRule("color", (1, 2, 3), "all")
    assert not color.success(3, 0, 1) and color.success(4, 0, 2)
    exp2 = lg.SuccessRule("location", (1, 2, 3), "single")
    assert exp2.success(1, 0, 2) and not exp2.success(1, 0, 3) and exp2.success(6, 0, 2)
    with pytest.raises(ValueError, match="label_mode"):
        lg.SuccessRule("location", (1, 2, 3), "random")


def run_generator(draw, rule, ks=range(1, 13), samples=4):
    """Judge a synthetic generator: draw(requested_pixels) -> detected pixels, for each k."""
    tally = lg.LengthGenTally()
    for k in ks:
        requested = lg.fractions_to_pixels(lg.requested_locations(k), RES)
        for _ in range(samples):
            tally.add(k, lg.match_locations(requested, draw(requested), CELL), rule)
    return tally.summarize()


def test_generators_one_object_perfect_and_two_extras():
    rule = lg.SuccessRule("location", (1, 2, 3), "all")
    perfect = run_generator(lambda req: req + 0.5, rule)
    assert perfect["k_max"] == 12 and perfect["k_max_strict"] == 12
    one = run_generator(lambda req: req[:1], rule)
    assert one["k_max"] == 1 and one["per_k"]["4"]["mean_missing"] == 3.0
    corners = np.array([[2.0, 2.0], [61.0, 61.0]])  # two objects far from every paper location
    with_extras = lambda req: np.vstack([req, corners])  # noqa: E731
    assert run_generator(with_extras, rule)["k_max"] == 0  # extras never allowed for all-label location
    single = run_generator(with_extras, lg.SuccessRule("location", (1, 2, 3), "single"))
    assert single["k_max"] == 12 and single["per_k"]["7"]["mean_extra"] == 2.0
    assert run_generator(with_extras, lg.SuccessRule("location", (1, 2), "single"))["k_max"] == 0


def test_k_max_rule_thresholds_and_gaps():
    assert lg.k_max({1: 1.0, 2: 0.3, 3: 0.2, 4: 1.0}) == 2
    assert lg.k_max({1: 1.0, 2: 0.3, 3: 0.6}, lg.K_MAX_STRICT_THRESHOLD) == 1
    assert lg.k_max({1: 0.25}) == 0  # "more than 25%"
    assert lg.k_max({1: 1.0, 3: 1.0}) == 1  # k=2 not evaluated


def test_tally_merge_histogram_and_report_json(tmp_path):
    rule = lg.SuccessRule("location", (1, 2, 3), "all")
    a, b = lg.LengthGenTally(), lg.LengthGenTally()
    a.add(2, {"matched": 2, "missing": 0, "extra": 0, "detected": 2}, rule)
    b.add(2, {"matched": 1, "missing": 1, "extra": 1, "detected": 2}, rule)
    b.add(2, {"matched": 1, "missing": 1, "extra": 0, "detected": 1}, rule)
    row = a.merge(b).summarize()["per_k"]["2"]
    assert row["samples"] == 3 and row["successes"] == 1 and row["count_histogram"] == {"1": 1, "2": 2}
    assert row["mean_missing"] == pytest.approx(2 / 3) and row["mean_extra"] == pytest.approx(1 / 3)
    report = lg.lengthgen_report({"kind": "location", "label_mode": "all", "trained_counts": [1, 2, 3]},
                                 {"model": a, "oracle": a})
    path = tmp_path / "lengthgen.json"
    path.write_text(json.dumps(report))
    loaded = json.loads(path.read_text())
    assert set(loaded["rows"]) == {"model", "oracle"} and loaded["rows"]["model"]["k_max"] == 0
    assert lg.table_row("exp1", loaded) == "| exp1 | 0 (strict 0) | 0 (strict 0) |"
