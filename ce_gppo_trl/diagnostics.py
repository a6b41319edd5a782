"""Entropy diagnostics: why entropy moves, from tensors the loss already has (pure, element-wise, no host syncs).

Tokens fall in four quadrants (arXiv 2602.09782, section 3 of `PAPERS.md`) by surprisal `-log p` against the entropy
`H` of their own next-token distribution and by the sign of the advantage:

| quadrant | condition | first-order effect of its gradient on entropy |
|---|---|---|
| E1 | `-log p < H`, `A > 0` | down |
| E2 | `-log p > H`, `A > 0` | up |
| E3 | `-log p < H`, `A < 0` | up |
| E4 | `-log p > H`, `A < 0` | down |

A gradient step that raises `log pi(a|s)` by `g` changes the entropy of that softmax by `-g * p * (log p + H)` to
first order (`dH/dz_a = -p_a (log p_a + H)` for the logit `z_a`); summed over tokens this is the predicted entropy
change `-eta * Cov(log pi, pi * A)` of CE-GPPO's analysis. `g` is each token's gradient weight: `F * A` times the
aggregation weight, with `F` the loss's gradient factor (CE-GPPO: `beta1 * (1 - eps_low)` in NA&LP,
`beta2 * (1 + eps_high)` in PA&LP, `r` elsewhere). The trainer reads `g = -d loss / d log p` off its loss with
autograd, so it is exact for every loss type, mask, ERC and dual clip.

This is the tabular softmax picture (each token's own logit stepped on its own): a direction per quadrant, not a
forecast of the entropy change of a network trained with Adam, whose weights are shared by every token (Pearson r
0.16 with the realised change in benchmarks/RESULTS.md section 4). `ce_gppo_trl.attribution` measures the change
through the optimizer's real update (`entropy_attribution_steps`).

`entropy_dynamics_sums` returns one vector of sums (reduce it across processes in one call) and
`entropy_dynamics_metrics` turns the reduced vector into the logged fractions.

Example:
    >>> import torch
    >>> logps = torch.log(torch.tensor([[0.9, 0.05, 0.9, 0.05]]))
    >>> sums = entropy_dynamics_sums(
    ...     logps, torch.full((1, 4), 1.0), torch.tensor([[1.0, 1.0, -1.0, -1.0]]),
    ...     torch.tensor([[1.0, 1.0, -1.0, -1.0]]), torch.ones(1, 4))
    >>> entropy_dynamics_metrics(sums)["E2_token_frac"]
    0.25
"""

from __future__ import annotations

import torch

QUADRANTS = ("E1", "E2", "E3", "E4")
CLIP_REGIONS = ("clip_low", "clip_high")
# The token groups of the entropy attribution (`ce_gppo_trl.attribution.attribution_groups`), in precedence order (a
# token is in the first group whose mask holds): tokens whose policy gradient ERC or the dual clip removed, the
# clipped regions NA&LP / PA&LP, then the quadrants of the unclipped tokens. Here, beside the quadrants, so that the
# metrics registry (`ce_gppo_trl.metrics`) names them without importing the attribution and transformers with it.
TOKEN_GROUPS = ("erc_masked", "dual_clip", "clip_low", "clip_high", *QUADRANTS)


def entropy_quadrants(logps: torch.Tensor, entropies: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Masks of E1..E4 stacked as `(4, *shape)`; tokens with `A == 0` (or `-log p == H`) are in none.

    Example:
        >>> q = entropy_quadrants(torch.log(torch.tensor([0.9, 0.05])), torch.ones(2), torch.tensor([1.0, -1.0]))
        >>> q.int().tolist()
        [[1, 0], [0, 0], [0, 0], [0, 1]]
    """
    surprisal = -logps
    low, high = surprisal < entropies, surprisal > entropies
    positive, negative = advantages > 0, advantages < 0
    return torch.stack(torch.broadcast_tensors(low & positive, high & positive, low & negative, high & negative))


def predicted_entropy_change(logps: torch.Tensor, entropies: torch.Tensor, grad_weight: torch.Tensor) -> torch.Tensor:
    """Per-token first-order entropy change `-g * p * (log p + H)` for a unit step on `log p` of size `g`.

    Example:
        >>> predicted_entropy_change(torch.log(torch.tensor([0.5])), torch.tensor([1.0]), torch.tensor([1.0]))
        tensor([-0.1534])
    """
    return -grad_weight * logps.exp() * (logps + entropies)


def entropy_dynamics_sums(
    logps: torch.Tensor,
    entropies: torch.Tensor,
    advantages: torch.Tensor,
    grad_weight: torch.Tensor,
    mask: torch.Tensor,
    clip_low: torch.Tensor | None = None,
    clip_high: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sums behind the `entropy_dynamics/*` metrics, as one float vector to reduce across processes.

    Layout: for E1..E4 then `clip_low`, `clip_high` (NA&LP / PA&LP masks, optional): token count, `|g|` mass,
    predicted entropy change; then the totals: token count, `|g|` mass, predicted change.

    Args:
        logps: current `log pi(a|s)` per token, `(B, T)`.
        entropies: entropy of each token's next-token distribution, `(B, T)`.
        advantages: `(B, 1)` or `(B, T)`.
        grad_weight: `-d loss / d log p` per token, `(B, T)`.
        mask: completion-token mask, `(B, T)`.
        clip_low, clip_high: the clipped-region masks, or `None` for loss types without clipping.
    """
    logps, entropies, grad_weight = logps.detach(), entropies.detach(), grad_weight.detach()
    mask = mask.to(logps.dtype)
    clipped = [
        torch.zeros_like(logps, dtype=torch.bool) if m is None else m.expand_as(logps) for m in (clip_low, clip_high)
    ]
    regions = torch.cat([entropy_quadrants(logps, entropies, advantages), torch.stack(clipped)]).to(logps.dtype) * mask
    weight = grad_weight.abs()
    delta = predicted_entropy_change(logps, entropies, grad_weight)
    per_region = torch.stack([regions, regions * weight, regions * delta], dim=1).flatten(2).sum(-1)
    totals = torch.stack([mask.sum(), (weight * mask).sum(), (delta * mask).sum()])
    return torch.cat([per_region.flatten(), totals]).float()


def entropy_dynamics_metrics(sums: torch.Tensor) -> dict[str, float]:
    """Turn (reduced) `entropy_dynamics_sums` into metrics: per region `<name>_token_frac` (share of completion
    tokens), `<name>_grad_frac` (share of `|g|`), `<name>_predicted_delta`; and the total `predicted_delta`.

    Example:
        >>> entropy_dynamics_metrics(torch.tensor([1.0, 2, 0.5] + [0.0] * 15 + [4, 4, 0.5]))["E1_grad_frac"]
        0.5
    """
    values = sums.tolist()
    num_tokens, weight, delta = values[-3:]
    metrics: dict[str, float] = {}
    for i, name in enumerate(QUADRANTS + CLIP_REGIONS):
        count, region_weight, region_delta = values[3 * i : 3 * i + 3]
        metrics[f"{name}_token_frac"] = count / max(num_tokens, 1.0)
        metrics[f"{name}_grad_frac"] = region_weight / weight if weight > 0 else 0.0
        metrics[f"{name}_predicted_delta"] = region_delta
    metrics["predicted_delta"] = delta
    return metrics
