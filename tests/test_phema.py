"""Power-function EMA (EDM2 Sec. 3.1, App. C): sigma_rel <-> gamma, discrete tracking, post-hoc reconstruction."""

import numpy as np
import pytest
import torch

from lcsbench.diffusion.phema import (
    gamma_to_sigma_rel,
    power_ema_beta,
    profile_inner_products,
    sigma_rel_to_gamma,
    solve_posthoc_coefficients,
    weighted_state_sum,
)


def test_sigma_rel_gamma_round_trip_matches_edm2():
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for s in [0.01, 0.05, 0.075, 0.10, 0.2, 0.28]:
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-9)
    for bad in [0.0, 0.3, -0.1]:
        with pytest.raises(ValueError, match="sigma_rel must lie in"):
            sigma_rel_to_gamma(bad)


def track(trajectory: np.ndarray, gamma: float) -> np.ndarray:
    ema = np.zeros_like(trajectory[0])
    for step, theta in enumerate(trajectory, start=1):
        beta = power_ema_beta(step, gamma)
        ema = beta * ema + (1 - beta) * theta
    return ema


def test_discrete_power_ema_follows_the_continuous_profile():
    # For theta(t) = t, the profile mean is E[tau] = (gamma + 1) / (gamma + 2) * t.
    steps = 5000
    gamma = sigma_rel_to_gamma(0.10)
    assert power_ema_beta(1, gamma) == 0.0
    ema = track(np.arange(1, steps + 1, dtype=np.float64)[:, None], gamma)
    assert ema[0] == pytest.approx((gamma + 1) / (gamma + 2) * steps, rel=1e-3)


def test_profile_inner_products_match_numerical_integration():
    tau = np.linspace(0, 300, 600_001)

    def profile(t, g):
        return np.where(tau <= t, (g + 1) / t * (tau / t) ** g, 0.0)

    for (ta, ga), (tb, gb) in [((100, 7.0), (300, 17.0)), ((300, 2.0), (120, 5.0)), ((200, 6.9), (200, 6.9))]:
        numeric = np.trapezoid(profile(ta, ga) * profile(tb, gb), tau)
        assert profile_inner_products([ta], [ga], [tb], [gb])[0, 0] == pytest.approx(numeric, rel=1e-3)


def test_posthoc_reconstruction_reproduces_a_tracked_profile():
    rng = np.random.default_rng(0)
    steps, every = 4000, 200
    trajectory = np.cumsum(rng.normal(size=(steps, 32)), axis=0)  # a random-walk "training run"
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    emas = [np.zeros(32), np.zeros(32)]
    snapshots, times, snap_gammas = [], [], []
    target_gamma = sigma_rel_to_gamma(0.075)
    truth = np.zeros(32)
    for step, theta in enumerate(trajectory, start=1):
        for i, g in enumerate(gammas):
            beta = power_ema_beta(step, g)
            emas[i] = beta * emas[i] + (1 - beta) * theta
        beta = power_ema_beta(step, target_gamma)
        truth = beta * truth + (1 - beta) * theta
        if step % every == 0:
            for i, g in enumerate(gammas):
                snapshots.append({"w": torch.tensor(emas[i], dtype=torch.float16)})
                times.append(step)
                snap_gammas.append(g)
    coefficients = solve_posthoc_coefficients(times, snap_gammas, [steps], [target_gamma])
    assert coefficients.shape == (len(snapshots), 1)
    assert coefficients.sum() == pytest.approx(1.0, abs=1e-9)
    reconstructed = weighted_state_sum(snapshots, coefficients[:, 0])["w"].numpy()
    spread = np.abs(emas[0] - emas[1]).mean()  # how different the two tracked profiles are
    error = np.abs(reconstructed - truth).mean()
    assert error < 0.1 * spread, (error, spread)


def test_posthoc_of_a_snapshot_profile_selects_that_snapshot():
    times = [100, 100, 200, 200, 300, 300]
    gammas = [16.97, 6.94] * 3
    coefficients = solve_posthoc_coefficients(times, gammas, [200], [6.94])[:, 0]
    assert coefficients[3] == pytest.approx(1.0, abs=1e-6)
    assert np.abs(np.delete(coefficients, 3)).max() < 1e-6
    with pytest.raises(ValueError, match="needs at least one snapshot"):
        solve_posthoc_coefficients([], [], [100], [6.94])


def test_weighted_state_sum_copies_integer_buffers():
    states = [{"w": torch.ones(3, dtype=torch.float16), "n": torch.tensor(5)},
              {"w": torch.full((3,), 3.0, dtype=torch.float16), "n": torch.tensor(5)}]
    result = weighted_state_sum(states, [0.25, 0.75])
    assert result["w"].dtype == torch.float32 and torch.allclose(result["w"], torch.full((3,), 2.5))
    assert result["n"].item() == 5
