"""Token-mean per micro-batch (the authors' verl) against token-mean over the whole update (this library, TRL's dapo).

In the authors' runs (`use_dynamic_bsz=True`, Ulysses `sp_size=4` on 16 nodes x 8 GPUs: 32 data-parallel ranks) each
optimizer update of 128 sequences gives every rank 4 sequences, packed into micro-batches of at most
`ppo_max_token_len_per_gpu x sp = 20480` prompt + response tokens by a balanced partition. Each micro-batch's loss is
its own token mean, weighted by its share of the rank's sequences (`len(micro) / 4`), and ranks are averaged. A
sequence of L_i response tokens in micro-batch m thus gets gradient weight `(n_m / 128) x L_i / T_m` (T_m = response
tokens of m); under the whole-update token mean it gets `L_i / sum_j L_j`; under a per-sequence mean (TRL micro-batch
of one sequence) `1 / 128`.

The script draws response lengths (log-normal, capped at 16k like the recipes) and prints, over seeds: the total-
variation distance between the sequence weights (the share of gradient weight that moves between sequences), the
weight carried by the longest quarter of sequences, and the cosine between the updates sum_i w_i u_i for random
per-sequence directions u_i.

    python benchmarks/normalisation.py                       # the recipes' setting
    python benchmarks/normalisation.py --median-length 2000  # shorter responses: more sequences per micro-batch
"""

from __future__ import annotations

import argparse
import math

import torch


def balanced_micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """verl's `rearrange_micro_batches`: ceil(total / max_tokens) micro-batches balanced by token count (greedy
    longest-first here; verl uses Karmarkar-Karp), every sequence in one."""
    count = max(1, math.ceil(sum(lengths) / max_tokens))
    bins: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        target = loads.index(min(loads))
        bins[target].append(index)
        loads[target] += lengths[index]
    return [b for b in bins if b]


def sequence_weights(
    response: torch.Tensor, prompt: torch.Tensor, ranks: int, max_tokens: int
) -> dict[str, torch.Tensor]:
    """Gradient weight of each sequence of one update under the three aggregations (each sums to 1)."""
    n = len(response)
    per_rank = n // ranks
    authors = torch.zeros(n, dtype=torch.float64)
    for rank in range(ranks):
        rows = list(range(rank * per_rank, (rank + 1) * per_rank))
        tokens = [int(prompt[i] + response[i]) for i in rows]
        for micro in balanced_micro_batches(tokens, max_tokens):
            members = [rows[i] for i in micro]
            total = float(response[members].sum())
            for i in members:
                authors[i] = (len(members) / per_rank) * float(response[i]) / total / ranks
    return {
        "authors": authors,
        "update_token_mean": response.double() / response.sum(),
        "sequence_mean": torch.full((n,), 1.0 / n, dtype=torch.float64),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--sequences", type=int, default=128, help="sequences per optimizer update (16 prompts x 8)")
    parser.add_argument("--ranks", type=int, default=32, help="data-parallel ranks (128 GPUs / sp 4)")
    parser.add_argument("--max-tokens", type=int, default=20480, help="micro-batch token budget per rank")
    parser.add_argument("--median-length", type=float, default=5000.0)
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal spread of response lengths")
    parser.add_argument("--cap", type=int, default=16384)
    args = parser.parse_args(argv)

    results: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(args.sequences, generator=generator, dtype=torch.float64)
        response = (args.median_length * torch.exp(args.sigma * noise)).clamp(16, args.cap).round().long()
        prompt = torch.randint(80, 400, (args.sequences,), generator=generator)
        weights = sequence_weights(response, prompt, args.ranks, args.max_tokens)
        directions = torch.randn(args.sequences, 256, generator=generator, dtype=torch.float64)
        long = response >= response.double().quantile(0.75)
        for name, w in weights.items():
            results.setdefault(f"{name}/long_quarter_weight", []).append(float(w[long].sum()))
            if name == "authors":
                continue
            results.setdefault(f"{name}/tv_to_authors", []).append(float(0.5 * (w - weights["authors"]).abs().sum()))
            update, reference = w @ directions, weights["authors"] @ directions
            results.setdefault(f"{name}/cosine_to_authors", []).append(
                float(torch.cosine_similarity(update, reference, 0))
            )
    summary = {}
    print(f"| quantity ({args.seeds} updates of {args.sequences} sequences) | mean | min | max |")
    print("|---|---|---|---|")
    for key, values in results.items():
        t = torch.tensor(values)
        summary[key] = {"mean": t.mean().item(), "min": t.min().item(), "max": t.max().item()}
        print(f"| {key} | {t.mean():.3f} | {t.min():.3f} | {t.max():.3f} |")
    return summary


if __name__ == "__main__":
    main()
