"""Length-generalization protocol (analysis/lengthgen/): requests, matching, success rules, k_max."""

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
    assert not color.success(3, 0, 1) and color.success(4, 0, 0)
    exp2 = lg.SuccessRule("location", (1, 2, 3), "single")
    assert exp2.success(1, 0, 2) and not exp2.success(1, 0, 3) and exp2.success(6, 0, 2)
    assert exp2.success(6, 0, 0) and not exp2.success(6, 1, 0)
    with pytest.raises(ValueError, match="label_mode"):
        lg.SuccessRule("location", (1, 2, 3), "bogus")


# Hand-made detections: the requested objects (some dropped = missing) plus far-away or unrequested extras.
FAR = np.array([[2.0, 2.0], [61.0, 61.0], [2.0, 61.0], [61.0, 2.0]])  # far from every paper location


def judged_locations(rule, k, missing, extra):
    requested = lg.fractions_to_pixels(lg.requested_locations(k), RES)
    detected = np.vstack([requested[missing:] + 0.5, FAR[:extra]])
    match = lg.match_locations(requested, detected, CELL)
    assert (match["missing"], match["extra"]) == (missing, extra)
    return rule.success(k, match["missing"], match["extra"])


def judged_colors(rule, k, missing, extra, extra_color="yellow"):
    requested = lg.requested_colors(k)
    match = lg.match_colors(requested, requested[missing:] + [extra_color] * extra)
    assert (match["missing"], match["extra"]) == (missing, extra)
    return rule.success(k, match["missing"], match["extra"])


def test_color_all_label_is_exact_beyond_the_trained_counts():
    rule = lg.SuccessRule("color", (1, 2, 3), "all")
    for k in (2, 3, 5, 7):  # inside and beyond the trained counts 1-3
        assert judged_colors(rule, k, 0, 0)
        assert not judged_colors(rule, k, 0, 1)  # one object of an unrequested colour
        assert not judged_colors(rule, k, 1, 0)
    assert not judged_colors(rule, 5, 0, 1, extra_color="blue")  # a second object of a requested colour
    assert not judged_colors(rule, 6, 0, 2)
    assert rule.extra_range(7) == (0, 0) and rule.extras_notation() == ""


def test_random_label_allows_up_to_n_minus_one_extras_at_every_k():
    rule = lg.SuccessRule("location", (1, 2, 3), "random")
    for k in (1, 3, 4, 9):
        assert judged_locations(rule, k, 0, 0) and judged_locations(rule, k, 0, 1) and judged_locations(rule, k, 0, 2)
        assert not judged_locations(rule, k, 0, 3)
        assert not judged_locations(rule, k, 1, 0) and not judged_locations(rule, k, 1, 2)
    wider = lg.SuccessRule("color", (1, 2, 3, 4, 5), "random")
    assert judged_colors(wider, 6, 0, 4) and not judged_colors(wider, 6, 0, 5) and not judged_colors(wider, 6, 1, 4)
    assert lg.SuccessRule("location", (1,), "random").extra_range(4) == (0, 0)
    assert rule.extras_notation() == "+(0-2)"


def test_drop_one_label_needs_exactly_one_extra():
    rule = lg.SuccessRule("location", (1, 2, 3), "drop_one")
    for k in (1, 2, 4, 8):
        assert judged_locations(rule, k, 0, 1)
        assert not judged_locations(rule, k, 0, 0)  # no unlabelled object: never seen in training
        assert not judged_locations(rule, k, 0, 2)
        assert not judged_locations(rule, k, 1, 1) and not judged_locations(rule, k, 1, 2)
    color = lg.SuccessRule("color", (2, 3, 4, 5), "drop_one")
    assert judged_colors(color, 6, 0, 1) and not judged_colors(color, 6, 0, 0) and not judged_colors(color, 6, 0, 2)
    assert rule.extras_notation() == "+1"
    with pytest.raises(ValueError, match="names no object"):  # 1-object scenes: every conditioner empty
        lg.SuccessRule("location", (1,), "drop_one")


def test_rules_follow_select_objects():
    """The extras each rule allows are the unlabelled-object counts select_objects produces on the training counts."""
    from lcsbench.data.conditioning import LABEL_MODES, select_objects

    counts = (1, 2, 3)
    generator = torch.Generator().manual_seed(0)
    for mode in LABEL_MODES:
        seen = set()
        for n in counts:
            for _ in range(200):
                named = select_objects([{"i": i} for i in range(n)], mode, generator)
                if named:  # a request names at least one object
                    seen.add(n - len(named))
        fewest, most = lg.SuccessRule("location", counts, mode).extra_range(4)
        assert seen == set(range(fewest, most + 1)), mode


def test_describe_says_each_rule_in_words():
    assert "no other object" in lg.SuccessRule("color", (1, 2, 3), "all").describe()
    assert "of its colour" in lg.SuccessRule("color", (1, 2, 3), "all").describe()
    assert "0-2 extra" in lg.SuccessRule("location", (1, 2, 3), "single").describe()
    assert "0-4 extra" in lg.SuccessRule("location", (1, 2, 3, 4, 5), "random").describe()
    assert "exactly 1 extra" in lg.SuccessRule("location", (1, 2, 3), "drop_one").describe()


def test_lengthgen_command_accepts_every_label_mode(capsys):
    from lcsbench.commands import lengthgen as command
    from lcsbench.data.conditioning import LABEL_MODES

    with pytest.raises(SystemExit):
        command.main(["--help"])
    assert "{" + ",".join(LABEL_MODES) + "}" in capsys.readouterr().out


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
    for mode, cell in (("single", "0+(0-2)"), ("random", "0+(0-2)"), ("drop_one", "0+1")):
        report["protocol"]["label_mode"] = mode
        assert lg.table_row("m", report) == f"| m | {cell} (strict 0) | {cell} (strict 0) |"


def test_cell_rule_measures_from_the_requested_cell_on_each_axis():
    # 0.25 x 16 = 4.0 lies on a cell edge: the model is told cell 4 (centre at 4.5 cells), so an object drawn
    # correctly near the cell's far corner is 1.34 cells from the point but 0.45 cells from the cell's centre.
    request = {"k": 1, "locations": [(0.25, 0.25)]}
    centre = lg.cell_centres_pixels(request["locations"], G, RES)
    assert centre.tolist() == [[4.5 * CELL, 4.5 * CELL]]
    inside_far_corner = {"centres": np.array([[4.95 * CELL, 4.95 * CELL]])}
    assert lg.judge_request(request, inside_far_corner, RES, G, match="point")["matched"] == 0  # 1.34 cells
    assert lg.judge_request(request, inside_far_corner, RES, G, match="cell")["matched"] == 1
    # per axis: one cell along x and along y from the cell centre matches, a hair more does not
    diagonal = {"centres": centre + CELL}
    assert lg.judge_request(request, diagonal, RES, G, match="cell")["matched"] == 1
    assert lg.judge_request(request, {"centres": centre + [1.01 * CELL, 0]}, RES, G, match="cell")["matched"] == 0
    with pytest.raises(ValueError, match="cell, point"):
        lg.judge_request(request, diagonal, RES, G, match="circle")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_nan_tolerance_is_refused(bad):
    with pytest.raises(ValueError, match="positive number of grid cells"):
        lg.match_locations(np.zeros((1, 2)), np.zeros((1, 2)), CELL, tolerance_cells=bad)


def test_oracle_places_objects_inside_their_cells_under_the_cell_rule():
    request = {"k": 12, "locations": list(PAPER_LOCATIONS)}
    exact = lg.oracle_scene(request, RES)
    assert [o["pixel"] for o in exact] == lg.fractions_to_pixels(PAPER_LOCATIONS, RES).tolist()
    jittered = lg.oracle_scene(request, RES, G, torch.Generator().manual_seed(0))
    points = np.array([o["pixel"] for o in jittered])
    from lcsbench.data.conditioning import location_cell

    assert [location_cell(x / RES, y / RES, G) for x, y in points] == \
           [location_cell(x, y, G) for x, y in PAPER_LOCATIONS]
    assert not np.allclose(points, lg.fractions_to_pixels(PAPER_LOCATIONS, RES))


def test_crowding_is_the_mean_smallest_gap_per_k():
    requests = [{"k": 2, "locations": [(0.1, 0.1), (0.1, 0.6)]}, {"k": 2, "locations": [(0.1, 0.1), (0.6, 0.1)]},
                {"k": 1, "locations": [(0.5, 0.5)]}]
    assert lg.crowding(requests, 100) == {"2": 50.0}


def test_saved_samples_of_another_shape_are_sampled_again(tmp_path):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    lg.save_samples(tmp_path / "samples.npz", images, {"steps": 2})
    assert lg.load_samples(tmp_path / "samples.npz", {"steps": 2}, shape=(3, 8, 8, 3)).shape == (3, 8, 8, 3)
    assert lg.load_samples(tmp_path / "samples.npz", {"steps": 2}, shape=(2, 8, 8, 3)) is None  # more than asked
    assert lg.load_samples(tmp_path / "samples.npz", {"steps": 2}, shape=(3, 16, 16, 3)) is None
    lg.save_samples(tmp_path / "floats.npz", images.astype(np.float32), {"steps": 2})
    assert lg.load_samples(tmp_path / "floats.npz", {"steps": 2}, shape=(3, 8, 8, 3)) is None
