"""Train with CE-GPPO from a YAML recipe; the script for `accelerate launch` (same code as `ce-gppo train`).

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/train_ce_gppo.py \
        --config configs/DeepSeek-R1-Distill-Qwen-1.5B/ce_gppo.yaml [--field value ...]

On CPU, two processes of DDP over gloo (`--multi_gpu` starts torchrun; the recipe's `use_cpu: true` makes it CPU
DDP; `--cpu` would start ONE process in accelerate 1.15, whatever --num_processes says):

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/train_ce_gppo.py --config configs/quickstart.yaml

Without --config it runs the quickstart. A missing optional dependency exits with status 1 and one line.
"""

import sys

from ce_gppo_trl.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
