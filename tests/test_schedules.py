"""Pure entropy-control math against the formulas of PAPERS.md section 3 (arXiv 2602.09782) and the CE-GPPO beta
findings."""

import math

import pytest
import torch

from ce_gppo_trl.schedules import (
    ControllerState,
    controller_update,
    entropy_schedule_weights,
    knob_schedule_value,
    mix_bound,
    od_step,
    od_thresholds,
    prob_clip_lower,
    prob_clip_upper,
    schedule_lambda,
)

P = torch.linspace(0.0, 1.0, 101)


def test_upper_bound_values_and_ratio_form():
    eps = prob_clip_upper(P, alpha=-0.2, b=0.28)
    assert eps[0].item() == pytest.approx(0.28)
    assert eps[-1].item() == pytest.approx(1.28 / 1.2 - 1)
    # The ratio bound r* = 1 + eps solves r* = 1 + alpha * (r* * p_old) + b: eps_high(p) = alpha * p + b at p_new.
    ratio = 1 + eps
    torch.testing.assert_close(ratio, 1 + (-0.2) * ratio * P + 0.28)
    torch.testing.assert_close(ratio, 1.28 / (1 + 0.2 * P))


def test_lower_bound_values_and_ratio_form():
    eps = prob_clip_lower(P, alpha=-0.2, b=0.28)
    assert eps[0].item() == pytest.approx(0.28)
    assert eps[-1].item() == pytest.approx(0.1)
    ratio = 1 - eps
    torch.testing.assert_close(ratio, 1 - ((-0.2) * ratio * P + 0.28))


@pytest.mark.parametrize("alpha,b", [(-0.2, 0.28), (-0.1, 0.1), (-0.5, 0.5)])
def test_bounds_monotone_in_p(alpha, b):
    upper, lower = prob_clip_upper(P, alpha=alpha, b=b), prob_clip_lower(P, alpha=alpha, b=b)
    # Upper (A > 0): looser for low-p tokens, tighter for high-p ones; lower (A < 0): tighter for high-p tokens.
    assert (upper[1:] < upper[:-1]).all() and (lower[1:] < lower[:-1]).all()
    # alpha >= -b keeps both half-widths >= 0: the band never inverts.
    assert upper.min() >= -1e-7 and lower.min() >= -1e-7


def test_mix_bound():
    assert mix_bound(0.2, torch.ones(2), 0.0) == 0.2
    torch.testing.assert_close(mix_bound(0.2, torch.tensor([0.3, 0.1]), 0.25), torch.tensor([0.225, 0.175]))


def test_lambda_matches_paper_at_half_split():
    for k in range(0, 101, 5):
        assert schedule_lambda(k / 100) == pytest.approx(1 - 2 * k / 100)
    assert schedule_lambda(0.3, split=0.3) == 0.0
    assert schedule_lambda(0.65, split=0.3) == pytest.approx(-0.5)


def _paper_bounds(name, k, T, H, M, eps):
    """The digest's formulas, written out literally."""
    lam = 1 - 2 * k / T
    if name == "increase_decrease":
        return (lam * H + (1 - lam) * eps, eps) if k <= T / 2 else (eps, (1 + lam) * M - lam * eps)
    return (lam * eps + (1 - lam) * H, eps) if k <= T / 2 else (H, (1 + lam) * M - lam * eps)


@pytest.mark.parametrize("name", ["increase_decrease", "decrease_increase_decrease"])
@pytest.mark.parametrize("k", [0, 10, 25, 50, 51, 75, 99, 100])
def test_id_did_bounds_against_digest(name, k):
    T, eps = 100, 0.2
    H, M = prob_clip_upper(P, alpha=-0.2, b=0.28), prob_clip_lower(P, alpha=-0.2, b=0.28)
    w = entropy_schedule_weights(name, k / T)
    high, low = _paper_bounds(name, k, T, H, M, eps)
    torch.testing.assert_close(
        torch.as_tensor(mix_bound(eps, H, w.high)).expand_as(P), torch.as_tensor(high).expand_as(P)
    )
    torch.testing.assert_close(
        torch.as_tensor(mix_bound(eps, M, w.low)).expand_as(P), torch.as_tensor(low).expand_as(P)
    )
    assert w.phase == (1 if k <= 50 else 2)


def _weights(*args, **kwargs):
    weights = entropy_schedule_weights(*args, **kwargs)
    return weights.high, weights.low


def test_schedule_weights_named_values():
    assert _weights("increase_decrease", 0.0) == (1.0, 0.0)
    assert _weights("increase_decrease", 0.5) == (0.0, 0.0)
    assert _weights("increase_decrease", 0.6) == pytest.approx((0.0, 0.8))
    assert _weights("decrease_increase_decrease", 0.1) == pytest.approx((0.2, 0.0))
    assert _weights("decrease_increase_decrease", 1.0) == (1.0, 0.0)
    assert _weights("oscillatory_decay", 0.3, od_state=1) == (1.0, 0.0)
    assert _weights("oscillatory_decay", 0.3, od_state=0) == (0.0, 1.0)
    assert _weights("none", 0.3) == (0.0, 0.0)
    with pytest.raises(ValueError, match="entropy_schedule='linear'"):
        entropy_schedule_weights("linear", 0.3)


def test_od_thresholds():
    assert od_thresholds(0.0, h_init=2.0) == pytest.approx((0.4, 2.0))
    assert od_thresholds(0.25, h_init=2.0) == pytest.approx((0.4, 1.6))
    assert od_thresholds(1.0, h_init=2.0, min_ratio=0.5) == pytest.approx((1.0, 1.0))


def test_od_transitions_on_scripted_entropy():
    # H_init = 1.0, T = 10, min ratio 0.2: tau_low = 0.2, tau_high(k) = 0.2 + 0.8 * (1 - k/10).
    entropies = [1.0, 0.7, 0.3, 0.2, 0.5, 0.55, 0.45, 0.3, 0.15, 0.3]
    state, states = 0, []
    for k, h in enumerate(entropies):
        state = od_step(state, h, k / 10, h_init=1.0)
        states.append(state)
    # k=0: 1.0 vs tau_high 1.0 -> keep 0; 0.7 and 0.3 within the band -> 0; 0.2 <= tau_low -> 1; 0.5 and 0.55 below
    # tau_high (0.68, 0.6) -> stay 1; k=6: 0.45 <= 0.52 -> 1; k=7: 0.3 <= 0.44 -> 1; 0.15 -> 1; k=9: 0.3 > 0.28 -> 0.
    assert states == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]


def test_knob_schedules():
    assert knob_schedule_value("constant", 7, None, initial=0.5) == 0.5
    assert knob_schedule_value("linear", 25, 100, initial=1.0, final=0.0) == pytest.approx(0.75)
    assert knob_schedule_value("linear", 200, 100, initial=1.0, final=0.0) == pytest.approx(0.0)
    assert knob_schedule_value("cosine", 0, 100, initial=1.0, final=0.2) == pytest.approx(1.0)
    assert knob_schedule_value("cosine", 25, 100, initial=1.0, final=0.2) == pytest.approx(
        0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2
    )
    assert knob_schedule_value("cosine", 100, 100, initial=1.0, final=0.2) == pytest.approx(0.2)
    # CE-GPPO: beta1 switched from 0 to 0.5 at step 585.
    values = [knob_schedule_value("step", k, None, initial=0.0, steps=[585], values=[0.5]) for k in (584, 585, 900)]
    assert values == [0.0, 0.5, 0.5]
    assert knob_schedule_value("step", 15, None, initial=1.0, steps=[10, 20], values=[0.5, 0.25]) == 0.5
    with pytest.raises(ValueError, match="max_steps=-1"):
        knob_schedule_value("linear", 3, -1, initial=1.0, final=0.0)
    with pytest.raises(ValueError, match="schedule='exp'"):
        knob_schedule_value("exp", 3, 10, initial=1.0)


LAW = dict(kp=1.0, ki=0.1, max_rate=0.2)


def test_controller_update_is_pi_on_the_relative_error_and_limits_rate():
    # u = kp * e + ki * sum(e) with e = (target - H) / target, moved by at most max_rate per step.
    state, error = controller_update(ControllerState(), target=1.5, entropy=1.2, **{**LAW, "max_rate": 2.0})
    assert error == pytest.approx(0.2) and state.output == pytest.approx(1.0 * 0.2 + 0.1 * 0.2)
    state, _ = controller_update(state, target=1.5, entropy=1.35, **{**LAW, "max_rate": 2.0})
    assert state.integral == pytest.approx(0.3) and state.output == pytest.approx(0.1 + 0.1 * 0.3)
    # The same relative error at another entropy scale gives the same command: the law is scale-free.
    scaled, _ = controller_update(ControllerState(), target=15.0, entropy=12.0, **{**LAW, "max_rate": 2.0})
    assert scaled.output == pytest.approx(0.22)
    # Rate limit: a 50% error asks for u = 0.55 but the first step moves by 0.2 only.
    limited, _ = controller_update(ControllerState(), target=2.0, entropy=1.0, **LAW)
    assert limited.output == pytest.approx(0.2)
    # Above the target the command is negative (the penalty side).
    lower, error = controller_update(ControllerState(), target=1.0, entropy=1.1, **LAW)
    assert error == pytest.approx(-0.1) and lower.output == pytest.approx(-0.11)


def test_controller_update_anti_windup_and_saturation_count():
    # Entropy stuck at half the target whatever the command: u at its limit, the integral frozen, saturation counted.
    state, counts = ControllerState(), []
    for _ in range(30):
        state, _ = controller_update(state, target=2.0, entropy=1.0, **LAW)
        counts.append(state.saturated_steps)
    # u = 0.5 + 0.1 * I with I growing by 0.5 per step: 0.95 (within SATURATION_MARGIN of the limit) at step 9, 1 at
    # step 10, where I = 5 and the integral stops (frozen at the limit).
    assert state.output == 1.0 and state.integral == pytest.approx(5.0)
    assert counts[7] == 0 and counts[8] == 1 and counts[-1] == 22
    # Off the limit, the count and the remembered error reset.
    state, _ = controller_update(state, target=2.0, entropy=2.1, **LAW)
    assert state.saturated_steps == 0 and state.limit_error is None


def test_controller_update_p_term_reads_the_extrapolated_entropy():
    # Slope: half the last change plus half the previous slope (SLOPE_WEIGHT 0.5): 0.5 * (0.8 - 1.0) = -0.1. With
    # horizon 4 the P term reads the entropy 4 steps ahead, 0.8 - 0.4 = 0.4: e_ahead = (1.0 - 0.4) / 1.0 = 0.6.
    law = {**LAW, "ki": 0.0, "max_rate": 2.0, "horizon": 4.0}
    state, _ = controller_update(ControllerState(), target=1.0, entropy=1.0, **law)
    assert state.output == 0.0 and state.slope == 0.0
    state, error = controller_update(state, target=1.0, entropy=0.8, **law)
    assert state.slope == pytest.approx(-0.1) and error == pytest.approx(0.2) and state.output == pytest.approx(0.6)
    # Entropy already moving towards the target fast enough: the command lets go before it arrives.
    state, error = controller_update(ControllerState(entropy=1.6, slope=-0.1), target=1.0, entropy=1.4, **law)
    assert error < 0 and state.output == pytest.approx((1.0 - (1.4 - 4 * 0.15)) / 1.0)
