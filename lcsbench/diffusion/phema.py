"""Power-function EMA and post-hoc reconstruction (Karras et al. 2024, Sec. 3.1 and Appendix C).

A power-function EMA with exponent gamma averages the training trajectory with the profile
`p(tau) = (gamma + 1) / t * (tau / t)^gamma` on [0, t]; its width relative to t is
`sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))` (Eq. 123). Tracked in discrete steps as
`theta_ema <- beta theta_ema + (1 - beta) theta` with `beta = (1 - 1/t)^(gamma + 1)` after step t (t >= 1).

Snapshots of a few EMAs at several times span a space of profiles; any other profile (a different sigma_rel or
an earlier time) is approximated by a least-squares combination of them (Alg. 3): solve `A x = b` with A the
Gram matrix of snapshot profiles and b their inner products with the target, then normalise x to sum to 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

MAX_SIGMA_REL = float(np.sqrt(1 / 12))  # the limit gamma -> 0 (a uniform average), 0.2887


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative std of the power-function profile with exponent gamma (Eq. 123)."""
    g = float(gamma)
    return float(np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent gamma of the profile with relative std sigma_rel (Eq. 126, Alg. 2).

    gamma is the largest real root of `g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2) = 0`.
    """
    s = float(sigma_rel)
    if not 0 < s < MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}) (the widest power-function profile), "
                         f"got {sigma_rel}")
    inv = s**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    real = roots[np.abs(roots.imag) < 1e-6].real
    return float(real.max())


def power_ema_beta(step: int, gamma: float) -> float:
    """Decay of the power-function EMA after optimizer step `step` (1-based): `(1 - 1/step)^(gamma + 1)`.

    beta = 0 on the first step, so the EMA starts equal to the network.
    """
    if step < 1:
        raise ValueError(f"EMA steps count from 1, got {step}")
    return float((1 - 1 / step) ** (gamma + 1))


def profile_inner_products(
    t_a: Sequence[float] | np.ndarray,  # times of profiles a
    gamma_a: Sequence[float] | np.ndarray,  # exponents of profiles a
    t_b: Sequence[float] | np.ndarray,  # times of profiles b
    gamma_b: Sequence[float] | np.ndarray,  # exponents of profiles b
) -> np.ndarray:
    """`[len(a), len(b)]` matrix of integrals of p_a(tau) p_b(tau) over tau (Eq. 151)."""
    ta = np.asarray(t_a, dtype=np.float64).reshape(-1, 1)
    ga = np.asarray(gamma_a, dtype=np.float64).reshape(-1, 1)
    tb = np.asarray(t_b, dtype=np.float64).reshape(1, -1)
    gb = np.asarray(gamma_b, dtype=np.float64).reshape(1, -1)
    # Both profiles are non-zero on [0, min(ta, tb)]; the integral of the product of the two power laws there:
    # (ga+1)(gb+1)/(ga+gb+1) * min^(ga+gb+1) / (ta^(ga+1) tb^(gb+1)), written with ratios to stay finite.
    ratio = np.where(ta < tb, ta / tb, tb / ta)
    exponent = np.where(ta < tb, gb, ga)
    return (ga + 1) * (gb + 1) / (ga + gb + 1) * ratio**exponent / np.maximum(ta, tb)


def solve_posthoc_coefficients(
    in_times: Sequence[float],  # snapshot times (steps or images; any unit, used consistently)
    in_gammas: Sequence[float],  # exponent of each snapshot's EMA
    out_times: Sequence[float],  # target times
    out_gammas: Sequence[float],  # target exponents
) -> np.ndarray:
    """`[num_in, num_out]` coefficients; column j combines the snapshots into target j and sums to 1 (Alg. 3)."""
    in_times, in_gammas = np.asarray(in_times, np.float64), np.asarray(in_gammas, np.float64)
    out_times, out_gammas = np.asarray(out_times, np.float64), np.asarray(out_gammas, np.float64)
    if in_times.shape != in_gammas.shape or out_times.shape != out_gammas.shape:
        raise ValueError("each time needs its gamma: in_times/in_gammas and out_times/out_gammas differ in length")
    if in_times.size == 0 or np.any(in_times <= 0) or np.any(out_times <= 0):
        raise ValueError("post-hoc EMA needs at least one snapshot and positive times")
    gram = profile_inner_products(in_times, in_gammas, in_times, in_gammas)
    target = profile_inner_products(in_times, in_gammas, out_times, out_gammas)
    coefficients, *_ = np.linalg.lstsq(gram, target, rcond=None)
    return coefficients / coefficients.sum(axis=0, keepdims=True)


def weighted_state_sum(
    state_dicts: Iterable[Mapping[str, torch.Tensor]],  # snapshot weights, one per coefficient
    coefficients: Sequence[float],  # one column of solve_posthoc_coefficients
) -> dict[str, torch.Tensor]:
    """`sum_i c_i theta_i` accumulated in float32 for floating tensors; other tensors copied from the first."""
    result: dict[str, torch.Tensor] = {}
    count = 0
    for state, coefficient in zip(state_dicts, coefficients, strict=True):
        for key, value in state.items():
            if not torch.is_floating_point(value):
                result.setdefault(key, value.clone())
                continue
            term = value.to(torch.float32) * float(coefficient)
            result[key] = result[key] + term if key in result else term
        count += 1
    if count == 0:
        raise ValueError("no snapshots to combine")
    return result


# --- reading a tracked EMA out of the training state -----------------------------------------------------------


def tracked_index(sigma_rels: Sequence[float], sigma_rel: float | None) -> int:
    """Position of `sigma_rel` among the tracked widths (None: the first tracked)."""
    if sigma_rel is None:
        return 0
    for i, tracked in enumerate(sigma_rels):
        if abs(float(tracked) - sigma_rel) < 1e-9:
            return i
    raise ValueError(f"sigma_rel {sigma_rel} was not tracked (tracked: {[float(s) for s in sigma_rels]}): reconstruct "
                     f"it from the run's snapshots with `python -m lcsbench reconstruct-ema --sigma-rel {sigma_rel}`")


def ema_net_state(ema_state: Mapping, net: torch.nn.Module, sigma_rel: float | None = None
                  ) -> dict[str, torch.Tensor]:
    """A full state_dict of `net` with the parameters of one tracked EMA.

    `ema_state` is the power-function EMA's training state (`{"sigma_rels": [...], "averages": [{name: tensor}]}`,
    the PowerFunctionEMA callback's `state_dict()`); buffers come from `net`.
    """
    index = tracked_index(ema_state["sigma_rels"], sigma_rel)
    averages = ema_state["averages"]
    if averages is None:
        raise ValueError("the EMA has not been initialised yet (no training step was taken)")
    state = net.state_dict()
    missing = sorted(set(averages[index]) - set(state))
    if missing:
        raise ValueError(f"the EMA holds parameters {missing[:3]} that this network lacks: it was tracked for "
                         f"another architecture")
    for name, value in averages[index].items():
        state[name] = value.to(device=state[name].device, dtype=state[name].dtype)
    return state
