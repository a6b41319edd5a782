"""Entropy diagnostics on hand-made tensors: quadrants, shares, the first-order entropy change, and the gradient
weights the trainer reads off the loss with autograd (checked against the CE-GPPO table)."""

import pytest
import torch

from ce_gppo_trl.diagnostics import (
    entropy_dynamics_metrics,
    entropy_dynamics_sums,
    entropy_quadrants,
    predicted_entropy_change,
)
from ce_gppo_trl.losses import clip_regions, gppo_policy_loss


def test_quadrants():
    # surprisal -log p vs H = 1.0: p = 0.9 -> 0.105 < 1 (low surprisal), p = 0.05 -> 3.0 > 1.
    logps = torch.log(torch.tensor([[0.9, 0.05, 0.9, 0.05, 0.9]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0]])
    quadrants = entropy_quadrants(logps, torch.ones(1, 5), advantages)
    assert quadrants.int().squeeze(1).tolist() == [
        [1, 0, 0, 0, 0],  # E1: likely token, A > 0 -> entropy down
        [0, 1, 0, 0, 0],  # E2: unlikely token, A > 0 -> up
        [0, 0, 1, 0, 0],  # E3: likely token, A < 0 -> up
        [0, 0, 0, 1, 0],  # E4: unlikely token, A < 0 -> down
    ]


def test_predicted_change_sign_matches_quadrants():
    logps = torch.log(torch.tensor([0.9, 0.05, 0.9, 0.05]))
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    delta = predicted_entropy_change(logps, torch.ones(4), advantages)
    assert torch.sign(delta).tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert delta[0].item() == pytest.approx(-0.9 * (torch.log(torch.tensor(0.9)).item() + 1.0))


def test_sums_and_metrics():
    logps = torch.log(torch.tensor([[0.9, 0.05, 0.9, 0.05], [0.9, 0.9, 0.05, 0.05]]))
    entropies = torch.ones(2, 4)
    advantages = torch.tensor([[1.0], [-1.0]])
    grad_weight = torch.tensor([[2.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -3.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    clip_high = torch.tensor([[False, True, False, False], [False, False, False, False]])
    sums = entropy_dynamics_sums(logps, entropies, advantages, grad_weight, mask, None, clip_high)
    metrics = entropy_dynamics_metrics(sums)
    # 7 tokens; E1 = row 0 cols 0, 2; E2 = row 0 col 1; E3 = row 1 cols 0, 1; E4 = row 1 cols 2, 3.
    assert [metrics[f"E{i}_token_frac"] for i in range(1, 5)] == pytest.approx([2 / 7, 1 / 7, 2 / 7, 2 / 7])
    # |g| mass 2 + 1 + 1 + 1 + 1 + 3 + 3 = 12.
    assert [metrics[f"E{i}_grad_frac"] for i in range(1, 5)] == pytest.approx([3 / 12, 1 / 12, 2 / 12, 6 / 12])
    assert metrics["clip_high_token_frac"] == pytest.approx(1 / 7) and metrics["clip_high_grad_frac"] == 1 / 12
    assert metrics["clip_low_token_frac"] == 0.0
    expected = (predicted_entropy_change(logps, entropies, grad_weight) * mask).sum().item()
    assert metrics["predicted_delta"] == pytest.approx(expected)
    assert sum(metrics[f"E{i}_predicted_delta"] for i in range(1, 5)) == pytest.approx(expected)


def test_autograd_gradient_weight_is_the_ce_gppo_factor():
    """g = -d loss / d log p equals F * A with F from the CE-GPPO table (what the trainer logs)."""
    old_logps = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5]]))
    ratio = torch.tensor([[0.5, 1.5, 1.0, 0.5, 1.5]])
    logps = (old_logps + ratio.log()).requires_grad_()
    advantages = torch.tensor([[-1.0, 1.0, 1.0, 1.0, -1.0]])
    eps_low, eps_high = torch.full((1, 5), 0.2), torch.tensor([[0.2, 0.3, 0.2, 0.2, 0.2]])
    loss = gppo_policy_loss(
        logps - old_logps, advantages, epsilon_low=eps_low, epsilon_high=eps_high, beta1=0.5, beta2=1.0
    )
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    # NA&LP: beta1 * (1 - eps_low) = 0.4; PA&LP with per-token eps_high 0.3: 1.0 * 1.3; elsewhere: r.
    factors = torch.tensor([[0.4, 1.3, 1.0, 0.5, 1.5]])
    torch.testing.assert_close(-grad, factors * advantages)
    is_low, is_high = clip_regions(ratio, advantages, eps_low, eps_high)
    assert is_low.tolist() == [[True, False, False, False, False]]
    assert is_high.tolist() == [[False, True, False, False, False]]
