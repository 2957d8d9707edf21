"""The hypothesis as a number (analysis/hypothesis.py): Spearman's rho over models with a bootstrap interval."""

import math

import numpy as np
import pytest
from PIL import Image

from lcsbench.analysis.hypothesis import (bootstrap_interval, hypothesis_figure, rank_relation, spearman_rho)
from lcsbench.analysis.plots import save_figure


def test_rho_of_monotone_relations_is_one_and_ties_share_ranks():
    assert spearman_rho([1, 2, 3, 4], [10, 20, 25, 90]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [9, 7, 5, 1]) == pytest.approx(-1.0)
    # ties: ranks x (1, 2.5, 2.5, 4) against y (1, 2, 3, 4): Pearson of the ranks
    x_ranks, y_ranks = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    expected = np.corrcoef(x_ranks, y_ranks)[0, 1]
    assert spearman_rho([1, 5, 5, 8], [1, 2, 3, 4]) == pytest.approx(expected)


def test_rho_is_undefined_for_a_constant_side_or_too_few_models():
    assert spearman_rho([1, 1, 1, 1], [1, 2, 3, 4]) is None
    assert spearman_rho([1, 2], [2, 1]) is None
    with pytest.raises(ValueError, match="same models"):
        spearman_rho([1, 2, 3], [1, 2])


def test_bootstrap_interval_brackets_rho_and_is_degenerate_for_a_perfect_relation():
    generator = np.random.default_rng(1)
    x = np.arange(12.0)
    y = -x + generator.normal(0, 3, 12)
    rho = spearman_rho(x, y)
    low, high = bootstrap_interval(x, y, draws=2000, seed=0)
    assert -1 <= low <= rho <= high <= 1
    assert high - low > 0.05  # noise widens it
    assert bootstrap_interval(x, 2 * x, draws=500) == pytest.approx((1.0, 1.0))
    assert bootstrap_interval(x, 2 * x, draws=500, seed=3) == bootstrap_interval(x, 2 * x, draws=500, seed=3)


def test_rank_relation_uses_only_models_with_both_measures(tmp_path):
    points = {"a": {"radius@10": 3.0, "k_max": 9}, "b": {"radius@10": 8.0, "k_max": 4},
              "c": {"radius@10": 12.0, "k_max": 1}, "d": {"radius@10": 14.0, "k_max": 1},
              "not_run": {"radius@10": None, "k_max": 5}}
    relation = rank_relation(points, "radius@10", draws=500)
    assert relation["models"] == ["a", "b", "c", "d"] and relation["n"] == 4
    assert relation["rho"] < -0.9
    assert relation["interval95"][0] <= relation["rho"] <= relation["interval95"][1]
    figure = hypothesis_figure(points, ["radius@10"], {"radius@10": relation},
                               apart={"patch": {"radius@10": 4.0, "k_max": 9}})
    path = save_figure(figure, tmp_path / "hypothesis.png")
    assert Image.open(path).size[0] > 300
    assert math.isfinite(relation["rho"])
