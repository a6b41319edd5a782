"""Run under `torchrun --nproc_per_node N`: one SGD step of the CE-GPPO loss on a tiny Llama, sharded with torch's
FSDP2 (`fully_shard`) over gloo when N > 1; rank 0 saves the full updated weights.

Usage: fsdp2_cpu_step.py MODEL_DIR OUTPUT_FILE. accelerate 1.15 does not set FSDP up on CPU (see
tests/test_launch_sharded.py); this checks that torch's FSDP2 itself runs on CPU with this library's loss. The global
batch (8 sequences, off-policy log-ratios) is the same for every N; each rank takes its contiguous share, and FSDP2
averages the per-rank gradients, so the per-rank token mean gives the global token mean.
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from ce_gppo_trl.losses import aggregate_loss, gppo_policy_loss


def token_logps(model, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(ids).logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]


def main(model_dir: str, output_file: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.randint(3, 20, (8, 10), generator=torch.Generator().manual_seed(1))
    advantages = torch.randn(8, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # pi_old: the current policy, moved by noise so that tokens leave the clip band
        drift = 0.3 * torch.randn(8, 9, generator=torch.Generator().manual_seed(3))
        old_logps = token_logps(model, ids) + drift
    if world > 1:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    logps = token_logps(model, ids[rows])
    per_token = gppo_policy_loss(
        logps - old_logps[rows], advantages[rows], epsilon_low=0.2, epsilon_high=0.2, beta1=0.5, beta2=1.0
    )
    mask = torch.ones_like(logps)
    aggregate_loss(per_token, mask, "token-mean", num_items=mask.sum()).backward()
    optimizer.step()
    weights = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.state_dict().items()
    }
    sharded = type(next(model.parameters())).__name__
    if rank == 0:
        torch.save({"weights": weights, "parameter_type": sharded}, output_file)
    # The ranks leave together: without this barrier rank 1 shut gloo down and exited while rank 0 was still
    # writing, and about 1 run in 200 on a loaded machine died of SIGABRT ("terminate called without an active
    # exception") in that teardown (tests/test_launch_sharded.py).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
