"""Train with CE-GPPO from a YAML recipe; the script for `accelerate launch` (same code as `ce-gppo train`).

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/train_ce_gppo.py \
        --config configs/DeepSeek-R1-Distill-Qwen-1.5B/ce_gppo.yaml [--field value ...]
    accelerate launch --cpu --num_processes 2 examples/train_ce_gppo.py --config configs/quickstart.yaml
"""

from ce_gppo_trl.cli import make_parser, train

if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    train(script_args, training_args, model_args)
