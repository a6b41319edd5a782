"""Per-token losses against hand-computed values of CE-GPPO Eq. 8 (PAPERS.md section 1) and TRL's formulas."""

import math

import pytest
import torch

from ce_gppo_trl.losses import (
    aggregate_loss,
    clip_cov_policy_loss,
    clip_cov_selection,
    dual_clip_mask,
    entropy_ratio_mask,
    gppo_policy_loss,
    gspo_token_log_ratio,
    kl_cov_policy_loss,
    kl_cov_selection,
    mix_bound,
    ppo_clip_policy_loss,
    prob_clip_lower,
    prob_clip_upper,
    sequence_log_ratio,
    token_covariance,
)

# 0.25 keeps the band edges 0.75 / 1.25 exact in binary floating point.
EPS = 0.25


def loss_and_grad(ratio, advantages, dtype=torch.float64, **kwargs):
    """Per-token loss and d loss / d log_ratio (= the factor on grad log pi) for ratios given directly."""
    log_ratio = torch.log(torch.tensor(ratio, dtype=dtype)).requires_grad_(True)
    loss = gppo_policy_loss(log_ratio, torch.tensor(advantages, dtype=dtype), **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    return loss.detach(), grad


def gppo(**overrides):
    return {"epsilon_low": EPS, "epsilon_high": EPS, "beta1": 0.5, "beta2": 1.0, **overrides}


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected_loss", "expected_grad", "region"),
    [
        # NA&LP: value -beta1 (1 - eps) A, gradient factor beta1 (1 - eps)
        (0.5, -2.0, 0.5 * 0.75 * 2.0, 0.5 * 0.75 * 2.0, "NA&LP"),
        # PA&LP: value -beta2 (1 + eps) A, gradient factor beta2 (1 + eps)
        (1.5, 2.0, -1.0 * 1.25 * 2.0, -1.0 * 1.25 * 2.0, "PA&LP"),
        # The two out-of-band regions PPO does not clip keep r * A
        (0.5, 2.0, -0.5 * 2.0, -0.5 * 2.0, "A>0, r<1-eps"),
        (1.5, -2.0, 1.5 * 2.0, 1.5 * 2.0, "A<0, r>1+eps"),
        # Inside the band
        (1.1, 1.0, -1.1, -1.1, "band"),
        (0.9, -1.0, 0.9, 0.9, "band"),
        # Band edges are inside the band (strict inequalities in Eq. 8)
        (0.75, -1.0, 0.75, 0.75, "lower edge"),
        (1.25, 1.0, -1.25, -1.25, "upper edge"),
    ],
)
def test_regions_values_and_gradients(ratio, advantage, expected_loss, expected_grad, region):
    assert torch.exp(torch.log(torch.tensor(ratio, dtype=torch.float64))).item() == ratio
    loss, grad = loss_and_grad([ratio], [advantage], **gppo())
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12), region
    assert grad.item() == pytest.approx(expected_grad, rel=1e-12), region


def test_zero_advantage_gives_zero_loss_and_gradient_everywhere():
    loss, grad = loss_and_grad([0.1, 0.75, 1.0, 1.25, 3.0], [0.0] * 5, **gppo())
    assert torch.equal(loss, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(grad, torch.zeros(5, dtype=torch.float64))


def test_gppo_is_beta_one_and_values_are_the_clipped_bound():
    loss, grad = loss_and_grad([0.5, 1.5], [-1.0, 1.0], **gppo(beta1=1.0, beta2=1.0))
    # GPPO keeps PPO's clipped value in the forward pass with gradient factor (1 -/+ eps)
    torch.testing.assert_close(loss, torch.tensor([0.75, -1.25], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([0.75, -1.25], dtype=torch.float64))


def test_zero_betas_give_exactly_the_ppo_clip_gradients():
    ratios = torch.tensor([0.3, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 4.0] * 2, dtype=torch.float64)
    advantages = torch.tensor([1.0] * 9 + [-1.0] * 9, dtype=torch.float64)
    log_ratio = torch.log(ratios).requires_grad_(True)
    gppo_loss = gppo_policy_loss(log_ratio, advantages, **gppo(beta1=0.0, beta2=0.0))
    (gppo_grad,) = torch.autograd.grad(gppo_loss.sum(), log_ratio)
    ppo_loss = ppo_clip_policy_loss(log_ratio, advantages, epsilon_low=EPS, epsilon_high=EPS)
    (ppo_grad,) = torch.autograd.grad(ppo_loss.sum(), log_ratio)
    assert torch.equal(gppo_grad, ppo_grad)
    # Values differ only where PPO clips: there PPO's value is the constant (1 -/+ eps) A, CE-GPPO's is 0
    clipped = ((ratios < 1 - EPS) & (advantages < 0)) | ((ratios > 1 + EPS) & (advantages > 0))
    assert clipped.sum() == 4
    torch.testing.assert_close(gppo_loss[~clipped], ppo_loss[~clipped])
    assert torch.equal(gppo_loss[clipped], torch.zeros(4, dtype=torch.float64))


def test_beta_scales_only_their_own_region():
    _, grad = loss_and_grad([0.5, 1.5, 1.0], [-1.0, 1.0, 1.0], **gppo(beta1=0.3, beta2=2.0))
    torch.testing.assert_close(grad, torch.tensor([0.3 * 0.75, -2.0 * 1.25, -1.0], dtype=torch.float64))


def test_dual_clip_caps_negative_advantage_loss():
    loss, grad = loss_and_grad([5.0, 20.0, 20.0], [-1.0, -1.0, 1.0], **gppo(clip_ratio_c=10.0))
    # r=5 < c: r * |A| with its gradient; r=20 > c, A<0: capped at c * |A|, no gradient; A>0 untouched (PA&LP)
    torch.testing.assert_close(loss, torch.tensor([5.0, 10.0, -1.25], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([5.0, 0.0, -1.25], dtype=torch.float64))
    mask = dual_clip_mask(torch.tensor([5.0, 20.0, 20.0]), torch.tensor([-1.0, -1.0, 1.0]), 10.0)
    assert mask.tolist() == [False, True, False]


def test_per_token_epsilon_tensors():
    ratios = [0.7, 0.7, 1.3, 1.3]
    advantages = [-1.0, -1.0, 1.0, 1.0]
    eps_low = torch.tensor([0.25, 0.5], dtype=torch.float64).repeat(2)
    eps_high = torch.tensor([0.25, 0.5], dtype=torch.float64).repeat(2)
    loss, grad = loss_and_grad(ratios, advantages, **gppo(epsilon_low=eps_low, epsilon_high=eps_high))
    # Token 0: 0.7 < 0.75 -> NA&LP; token 1: 0.7 > 0.5 -> in band; token 2: 1.3 > 1.25 -> PA&LP; token 3: in band
    expected_grad = torch.tensor([0.5 * 0.75, 0.7, -1.25, -1.3], dtype=torch.float64)
    torch.testing.assert_close(grad, expected_grad)
    torch.testing.assert_close(loss, expected_grad)


def test_gradcheck_float64():
    """Autograd against finite differences wherever the forward value carries the gradient.

    In NA&LP / PA&LP the value is the constant beta (1 -/+ eps) A while the gradient is preserved through sg(r), so
    finite differences in log_ratio see 0 there by design: those tokens enter as constants (their gradient is pinned
    by the region tests above), and the check covers log_ratio elsewhere and the per-token epsilons everywhere.
    """
    torch.manual_seed(0)
    log_ratio = (torch.rand(64, dtype=torch.float64) - 0.5) * 1.5
    for edge in (math.log(0.8), math.log(1.28)):  # stay away from the kinks at the band edges
        log_ratio = torch.where((log_ratio - edge).abs() < 1e-3, log_ratio + 2e-3, log_ratio)
    advantages = torch.randn(64, dtype=torch.float64)
    ratio = log_ratio.exp()
    clipped = ((ratio < 0.8) & (advantages < 0)) | ((ratio > 1.28) & (advantages > 0))
    assert 0 < clipped.sum() < 64
    eps_low = torch.full((64,), 0.2, dtype=torch.float64)
    eps_high = torch.full((64,), 0.28, dtype=torch.float64)

    def fn(free, eps_low, eps_high):
        x = torch.where(clipped, log_ratio, free)
        return gppo_policy_loss(
            x, advantages, epsilon_low=eps_low, epsilon_high=eps_high, beta1=0.75, beta2=1.0, clip_ratio_c=3.0
        )

    inputs = (log_ratio.clone().requires_grad_(True), eps_low.requires_grad_(True), eps_high.requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_log_ratios_are_finite(dtype):
    log_ratio = torch.tensor([200.0, -200.0, 200.0, -200.0, 200.0, -200.0], dtype=dtype, requires_grad=True)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 0.0], dtype=dtype)
    for clip_ratio_c in (None, 10.0):
        loss = gppo_policy_loss(log_ratio, advantages, **gppo(clip_ratio_c=clip_ratio_c))
        (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        # PA&LP and NA&LP keep their bounded gradient whatever the drift
        assert grad[0].item() == pytest.approx(-1.25)
        assert grad[3].item() == pytest.approx(0.5 * 0.75)


def test_aggregation_modes():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate_loss(loss, mask, "token-mean", num_items=8).item() == pytest.approx(10 / 8)
    assert aggregate_loss(loss, mask, "token-mean-local").item() == pytest.approx(10 / 4)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm", max_completion_length=5).item() == pytest.approx(1)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx(5)
    with pytest.raises(ValueError, match="unknown mode 'foo'"):
        aggregate_loss(loss, mask, "foo")


def test_entropy_ratio_mask_band():
    old = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0])
    new = torch.tensor([1.0, 0.95, 1.05, 0.96, 1.04, 0.0, 0.1, 1.0])
    keep = entropy_ratio_mask(new, old, 0.95, 1.05)
    # Open band: the edges themselves are masked; zero entropy on both sides gives ratio 1; 0 -> 0.1 explodes
    assert keep.tolist() == [True, False, False, True, True, True, False, False]


# Clip-Cov and KL-Cov (arXiv 2505.22617, PAPERS.md section 4), against the equations and against verl.


def cov_batch():
    """Two sequences of 4 tokens, the last one padded; A = +1 / -1.

    mean A over the 7 loss tokens = (4 - 3) / 7; log p chosen so that mean log p = -1: cov by hand below.
    """
    logps = torch.tensor([[-0.2, -1.0, -2.6, -0.2], [-0.5, -1.5, -1.0, -9.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    return logps, advantages, mask


def test_token_covariance_is_centred_over_the_loss_tokens():
    logps, advantages, mask = cov_batch()
    cov = token_covariance(advantages, logps, mask)
    mean_a = 1 / 7
    expected = [
        [(1 - mean_a) * 0.8, 0.0, (1 - mean_a) * -1.6, (1 - mean_a) * 0.8],
        [(-1 - mean_a) * 0.5, (-1 - mean_a) * -0.5, 0.0, -math.inf],
    ]
    torch.testing.assert_close(cov, torch.tensor(expected, dtype=torch.float64))


def test_clip_cov_selects_random_candidates_inside_the_band_not_clipped_by_ppo():
    logps, advantages, mask = cov_batch()
    # cov = [0.686, 0, -1.371, 0.686 | -0.571, 0.571, 0, pad]; band (0.5, 1) holds tokens (0,0), (0,3), (1,1).
    # Token (0,3) has r = 1.5 > 1 + eps with A > 0: clipped by PPO, so not a candidate.
    log_ratio = torch.log(torch.tensor([[1.0, 1.0, 1.0, 1.5], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64))
    knobs = {"mask": mask, "per_token_logps": logps, "epsilon_low": EPS, "epsilon_high": EPS}
    band = {"clip_cov_lb": 0.5, "clip_cov_ub": 1.0}
    candidates = {(0, 0), (1, 1)}
    seen = set()
    for seed in range(20):
        # 7 tokens x 0.2 = 1.4 -> one token, a different one for different draws
        generator = torch.Generator().manual_seed(seed)
        selected = clip_cov_selection(log_ratio, advantages, **knobs, **band, clip_cov_ratio=0.2, generator=generator)
        chosen = {tuple(index) for index in selected.nonzero().tolist()}
        assert len(chosen) == 1 and chosen <= candidates
        seen |= chosen
    assert seen == candidates
    # The count floors at 1 (verl's max(int(ratio * N), 1)), and is capped by the candidates: 7 x 0.5 = 3 > 2
    assert clip_cov_selection(log_ratio, advantages, **knobs, **band, clip_cov_ratio=2e-4).sum() == 1
    many = clip_cov_selection(log_ratio, advantages, **knobs, **band, clip_cov_ratio=0.5)
    assert {tuple(index) for index in many.nonzero().tolist()} == candidates
    # An empty band selects nothing
    assert (
        clip_cov_selection(log_ratio, advantages, **knobs, clip_cov_lb=1.0, clip_cov_ub=5.0, clip_cov_ratio=0.5).sum()
        == 0
    )


def test_clip_cov_values_and_gradients_are_ppo_but_zero_on_selected_tokens():
    logps, advantages, mask = cov_batch()
    ratios = torch.tensor([[1.1, 0.9, 1.5, 0.5], [0.9, 1.2, 0.5, 1.0]], dtype=torch.float64)
    log_ratio = torch.log(ratios).requires_grad_(True)
    selected = torch.tensor([[True, False, False, False], [False, True, False, False]])
    loss = clip_cov_policy_loss(
        log_ratio,
        advantages,
        mask=mask,
        per_token_logps=logps,
        epsilon_low=EPS,
        epsilon_high=EPS,
        clip_cov_ratio=0.2,
        clip_cov_lb=1.0,
        clip_cov_ub=5.0,
        selected=selected,
    )
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    # PPO: A > 0: -min(r, clip(r)) A; A < 0: max(r, clip(r)) |A|; gradient -A r where the value is r * A, else 0
    expected_loss = [[0.0, -0.9, -1.25, -0.5], [0.9, 0.0, 0.75, 1.0]]
    expected_grad = [[0.0, -0.9, 0.0, -0.5], [0.9, 0.0, 0.0, 1.0]]
    torch.testing.assert_close(loss.detach(), torch.tensor(expected_loss, dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64))


def test_kl_cov_values_gradients_and_top_k_selection():
    logps, advantages, mask = cov_batch()
    # cov = [0.686, 0, -1.371, 0.686 | -0.571, 0.571, 0, pad]: 7 x 0.3 = 2.1 -> the top 2 are (0,0) and (0,3)
    knobs = {"mask": mask, "per_token_logps": logps}
    selected = kl_cov_selection(torch.zeros(2, 4), advantages, **knobs, kl_cov_ratio=0.3)
    assert selected.nonzero().tolist() == [[0, 0], [0, 3]]
    assert kl_cov_selection(torch.zeros(2, 4), advantages, **knobs, kl_cov_ratio=2e-4).nonzero().tolist() == [[0, 0]]
    assert kl_cov_selection(torch.zeros(2, 4), advantages, **knobs, kl_cov_ratio=0.5).sum() == 3

    ratios = torch.tensor([[0.5, 2.0, 3.0, 2.0], [1.5, 0.8, 1.0, 1.0]], dtype=torch.float64)
    log_ratio = torch.log(ratios).requires_grad_(True)
    loss = kl_cov_policy_loss(log_ratio, advantages, **knobs, kl_cov_ratio=0.3, ppo_kl_coef=0.5)
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    # -r A everywhere (no clipping), + 0.5 |log r| on the two selected tokens; gradient -r A + 0.5 sign(log r)
    surrogate = -ratios * advantages
    penalty = torch.zeros_like(ratios)
    penalty[0, 0], penalty[0, 3] = 0.5 * math.log(2.0), 0.5 * math.log(2.0)
    torch.testing.assert_close(loss.detach(), surrogate + penalty)
    sign = torch.zeros_like(ratios)
    sign[0, 0], sign[0, 3] = -0.5, 0.5
    torch.testing.assert_close(grad, surrogate + sign)


def test_cov_losses_select_nothing_without_loss_tokens():
    logps, advantages, _ = cov_batch()
    mask = torch.zeros(2, 4, dtype=torch.long)
    knobs = {"mask": mask, "per_token_logps": logps}
    assert kl_cov_selection(torch.zeros(2, 4), advantages, **knobs, kl_cov_ratio=0.5).sum() == 0
    clip = clip_cov_selection(
        torch.zeros(2, 4),
        advantages,
        **knobs,
        epsilon_low=EPS,
        epsilon_high=EPS,
        clip_cov_ratio=0.5,
        clip_cov_lb=-10.0,
        clip_cov_ub=10.0,
    )
    assert clip.sum() == 0


def verl_clip_cov(old_log_prob, log_prob, advantages, response_mask, cliprange, ratio, lb, ub):
    """verl's compute_policy_loss_clip_cov (core_algos.py at b178a3c), per-token part, with config lookups inlined."""

    def masked_mean(x, m):
        return (x * m).sum() / m.sum()

    negative_approx_kl = log_prob - old_log_prob
    ratio_t = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio_t
    corr = torch.ones_like(advantages)
    pg_losses2 = -advantages * torch.clamp(ratio_t, 1 - cliprange, 1 + cliprange)
    clip_by_origin = (pg_losses2 > pg_losses1) & (response_mask > 0)
    cov_all = (advantages - masked_mean(advantages, response_mask)) * (
        log_prob - masked_mean(log_prob.detach(), response_mask)
    )
    cov_all[response_mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf
    clip_num = max(int(ratio * response_mask.sum().item()), 1)
    top_k_idx = torch.nonzero((cov_all < ub) & (cov_all > lb) & (response_mask > 0))
    if len(top_k_idx) > 0:
        perm = torch.randperm(len(top_k_idx))
        top_k_idx = top_k_idx[perm[: min(clip_num, len(top_k_idx))]]
    corr[top_k_idx[:, 0], top_k_idx[:, 1]] = 0
    return torch.maximum(pg_losses1, pg_losses2) * corr


def verl_kl_cov(old_log_prob, log_prob, advantages, response_mask, kl_cov_ratio, ppo_kl_coef):
    """verl's compute_policy_loss_kl_cov (core_algos.py at b178a3c), per-token part."""
    negative_approx_kl = log_prob - old_log_prob
    abs_kl = negative_approx_kl.abs()
    ratio = torch.exp(negative_approx_kl)
    pg_losses = -advantages * ratio
    pg_losses_kl = -advantages * ratio + ppo_kl_coef * abs_kl
    all_valid = response_mask > 0
    all_valid_idx = torch.nonzero(all_valid.reshape(-1), as_tuple=True)[0]
    all_valid_adv = advantages[all_valid].detach().reshape(-1).cpu()
    all_valid_logp = log_prob[all_valid].detach().reshape(-1).cpu()
    cov_lst_all = (all_valid_adv - all_valid_adv.mean()) * (all_valid_logp - all_valid_logp.mean())
    k_percent_nums = max(1, int(len(cov_lst_all) * kl_cov_ratio))
    large_cov_idxs = all_valid_idx[torch.topk(cov_lst_all, k_percent_nums, largest=True).indices]
    rows, cols = large_cov_idxs // advantages.shape[1], large_cov_idxs % advantages.shape[1]
    pg_losses[rows, cols] = pg_losses_kl[rows, cols]
    return pg_losses


def random_rollout(seed, batch=16, length=24):
    """Per-token log-probs of a random policy, a drifted old policy, group-normalised advantages, ragged masks."""
    generator = torch.Generator().manual_seed(seed)
    log_prob = torch.log_softmax(torch.randn(batch, length, 8, generator=generator, dtype=torch.float64), -1)[..., 0]
    old_log_prob = log_prob + 0.3 * torch.randn(batch, length, generator=generator, dtype=torch.float64)
    rewards = torch.randint(0, 2, (batch,), generator=generator).double()
    advantages = ((rewards - rewards.mean()) / rewards.std().clamp(min=1e-4)).unsqueeze(1)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    return old_log_prob, log_prob, advantages, mask


@pytest.mark.parametrize("seed", range(4))
def test_clip_cov_and_kl_cov_match_verl(seed):
    old_log_prob, log_prob, advantages, mask = random_rollout(seed)
    log_prob = log_prob.requires_grad_(True)
    per_token_advantages = advantages.expand_as(log_prob).clone()  # verl's advantages are per token
    # A ratio of 0.05 selects several tokens; the band (0.2, 3) holds a good share of them at this spread.
    torch.manual_seed(seed)
    expected = verl_clip_cov(old_log_prob, log_prob, per_token_advantages, mask, 0.2, 0.05, 0.2, 3.0)
    torch.manual_seed(seed)
    knobs = {"mask": mask, "per_token_logps": log_prob}
    clip_cov = clip_cov_policy_loss(
        log_prob - old_log_prob,
        advantages,
        **knobs,
        epsilon_low=0.2,
        epsilon_high=0.2,
        clip_cov_ratio=0.05,
        clip_cov_lb=0.2,
        clip_cov_ub=3.0,
    )
    # About 11 of about 66 candidates are detached: only the same random draw as verl's gives the same loss.
    assert (clip_cov.detach()[mask.bool()] == 0).sum() == max(int(0.05 * mask.sum()), 1) >= 10
    torch.testing.assert_close(clip_cov * mask, expected * mask)
    grads = [torch.autograd.grad((x * mask).sum(), log_prob)[0] for x in (clip_cov, expected)]
    torch.testing.assert_close(grads[0], grads[1])

    expected = verl_kl_cov(old_log_prob, log_prob, per_token_advantages, mask, 0.02, 1.0)
    kl_cov = kl_cov_policy_loss(log_prob - old_log_prob, advantages, **knobs, kl_cov_ratio=0.02, ppo_kl_coef=1.0)
    torch.testing.assert_close(kl_cov * mask, expected * mask)
    grads = [torch.autograd.grad((x * mask).sum(), log_prob)[0] for x in (kl_cov, expected)]
    torch.testing.assert_close(grads[0], grads[1])
    selected = kl_cov_selection(log_prob - old_log_prob, advantages, **knobs, kl_cov_ratio=0.02)
    assert selected.sum() == max(1, int(mask.sum() * 0.02))


# Sequence level (GSPO): three sequences, lengths 2, 3 and 1 (padding after), chosen so that the sequence ratio
# s_i = exp(mean_t log r_{i,t}) is 0.5 (NA&LP with A < 0), 1.5 (PA&LP with A > 0) and 1.1 (inside the band).
SEQ_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
SEQ_ADV = torch.tensor([[-2.0], [2.0], [1.0]], dtype=torch.float64)
SEQ_RATIO = torch.tensor([0.5, 1.5, 1.1], dtype=torch.float64)


def sequence_log_ratios():
    # Per-token log-ratios that average to log s_i over each sequence's tokens (and junk on the padding).
    spread = torch.tensor([[0.3, -0.3, 7.0], [0.2, 0.1, -0.3], [0.0, -5.0, 3.0]], dtype=torch.float64)
    return (torch.log(SEQ_RATIO).unsqueeze(1) + spread).requires_grad_(True)


def test_sequence_level_ce_gppo_matches_eq8_with_the_sequence_ratio():
    log_ratio = sequence_log_ratios()
    torch.testing.assert_close(sequence_log_ratio(log_ratio, SEQ_MASK).exp().squeeze(1), SEQ_RATIO)
    per_token = gppo_policy_loss(gspo_token_log_ratio(log_ratio, SEQ_MASK), SEQ_ADV, **gppo())
    n_tokens = SEQ_MASK.sum()
    loss = aggregate_loss(per_token, SEQ_MASK, "token-mean", num_items=n_tokens)
    (grad,) = torch.autograd.grad(loss, log_ratio)
    # Eq. 8 with s for r: values J = beta1 (1 - eps) A, beta2 (1 + eps) A, s A; factors F = 0.375, 1.25, 1.1
    value = torch.tensor([0.5 * 0.75 * -2.0, 1.0 * 1.25 * 2.0, 1.1 * 1.0], dtype=torch.float64)
    factor = torch.tensor([0.5 * 0.75, 1.0 * 1.25, 1.1], dtype=torch.float64)
    lengths = SEQ_MASK.sum(-1)
    torch.testing.assert_close(loss, -(lengths * value).sum() / n_tokens)
    # d loss / d log pi_{i,t} = -F_i A_i / N on every token of sequence i, 0 on padding
    expected_grad = -(factor.unsqueeze(1) * SEQ_ADV) / n_tokens * SEQ_MASK
    torch.testing.assert_close(grad, expected_grad)


def test_gspo_token_form_equals_the_sequence_form_in_value_and_gradient():
    """TRL's (B, 1) GSPO form, broadcast over tokens, and the per-token form give the same loss and gradient."""
    results = []
    for form in (sequence_log_ratio, gspo_token_log_ratio):
        log_ratio = sequence_log_ratios()
        per_token = gppo_policy_loss(form(log_ratio, SEQ_MASK), SEQ_ADV, **gppo(), clip_ratio_c=3.0, delta=2.0)
        loss = aggregate_loss(per_token, SEQ_MASK, "token-mean", num_items=SEQ_MASK.sum())
        results.append((loss, *torch.autograd.grad(loss, log_ratio)))
    torch.testing.assert_close(results[0], results[1])


def test_token_mask_on_the_gspo_token_form_removes_only_that_tokens_term():
    """What ERC does at sequence level: a detached token keeps its value but loses exactly -F_i A_i / N."""
    log_ratio = sequence_log_ratios()
    per_token = gppo_policy_loss(gspo_token_log_ratio(log_ratio, SEQ_MASK), SEQ_ADV, **gppo())
    keep = torch.tensor([[True, False, True], [True, True, False], [False, True, True]])
    masked = torch.where(keep, per_token, per_token.detach())
    loss = aggregate_loss(masked, SEQ_MASK, "token-mean", num_items=SEQ_MASK.sum())
    (grad,) = torch.autograd.grad(loss, log_ratio)
    factor = torch.tensor([[0.5 * 0.75], [1.25], [1.1]], dtype=torch.float64)
    torch.testing.assert_close(grad, -(factor * SEQ_ADV) / SEQ_MASK.sum() * SEQ_MASK * keep)


@pytest.mark.parametrize(
    ("ratio", "advantage", "delta", "expected_loss", "expected_grad"),
    [
        (3.0, -1.0, 2.0, 2.0, 0.0),  # A < 0 beyond delta: capped at delta * A, no gradient (the dual clip at delta)
        (1.5, -1.0, 2.0, 1.5, 1.5),  # A < 0 below delta: r * A as without delta
        (1.5, 2.0, 1.2, -1.25 * 2.0, -1.25 * 2.0),  # PA&LP keeps Eq. 8 (delta only caps the r * A term)
        (1.2, 1.0, 1.1, -1.1, 0.0),  # in band above delta (delta < 1 + eps): TRL's min(delta, r) * A
        (1.15, -1.0, 1.1, 1.15, 1.15),  # A < 0 in band: TRL's min(min(r, delta) A, clip(r) A) = r A
        (0.5, -2.0, 1.1, 0.5 * 0.75 * 2.0, 0.5 * 0.75 * 2.0),  # NA&LP unchanged
    ],
)
def test_delta_caps_the_unclipped_ratio_as_trl(ratio, advantage, delta, expected_loss, expected_grad):
    loss, grad = loss_and_grad([ratio], [advantage], **gppo(), delta=delta)
    assert loss.item() == pytest.approx(expected_loss)
    assert grad.item() == pytest.approx(expected_grad)


def test_delta_with_zero_betas_has_trl_dapo_delta_gradients():
    ratios = torch.tensor([0.3, 0.7, 0.9, 1.05, 1.15, 1.3, 1.8, 3.0], dtype=torch.float64).repeat(2)
    advantages = torch.tensor([1.0] * 8 + [-1.0] * 8, dtype=torch.float64)
    grads = []
    for fn, kwargs in ((gppo_policy_loss, gppo(beta1=0.0, beta2=0.0)), (ppo_clip_policy_loss, gppo())):
        log_ratio = ratios.log().requires_grad_(True)
        grads.append(torch.autograd.grad(fn(log_ratio, advantages, **kwargs, delta=1.1).sum(), log_ratio)[0])
    torch.testing.assert_close(grads[0], grads[1])
    assert (grads[1] == 0).sum() >= 8  # the cap and the clip both act somewhere


# Probability-dependent clip bounds against the formulas of PAPERS.md section 3 (arXiv 2602.09782).

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
