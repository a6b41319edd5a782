"""The closed-loop entropy controller's law (`ce_gppo_trl.controller`) on hand-computed steps."""

import pytest

from ce_gppo_trl.controller import ControllerState, controller_update

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
