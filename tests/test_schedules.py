"""Pure entropy-control math against the formulas of PAPERS.md section 3 (arXiv 2602.09782) and the CE-GPPO beta
findings."""

import math

import pytest
import torch

from ce_gppo_trl.losses import mix_bound, prob_clip_lower, prob_clip_upper
from ce_gppo_trl.schedules import (
    knob_schedule_value,
    od_step,
    od_thresholds,
    prob_clip_schedule_weights,
    schedule_lambda,
)

P = torch.linspace(0.0, 1.0, 101)


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
    w = prob_clip_schedule_weights(name, k / T)
    high, low = _paper_bounds(name, k, T, H, M, eps)
    torch.testing.assert_close(
        torch.as_tensor(mix_bound(eps, H, w.high)).expand_as(P), torch.as_tensor(high).expand_as(P)
    )
    torch.testing.assert_close(
        torch.as_tensor(mix_bound(eps, M, w.low)).expand_as(P), torch.as_tensor(low).expand_as(P)
    )
    assert w.phase == (1 if k <= 50 else 2)


def _weights(*args, **kwargs):
    weights = prob_clip_schedule_weights(*args, **kwargs)
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
    with pytest.raises(ValueError, match="prob_clip_schedule='linear'"):
        prob_clip_schedule_weights("linear", 0.3)


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
