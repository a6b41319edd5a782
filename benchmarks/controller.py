"""Does the closed-loop entropy controller hold the entropy asked for, above and below the uncontrolled run?

A family of plants (model + reward), each trained by CE-GPPO (0.5, 1) off-policy (4 updates per rollout batch):

- `toy`: the quickstart (`configs/quickstart.yaml`): the toy Llama of `ce_gppo_trl.toy.build_toy_model` (SFT-warm-
  started on single-digit addition), binary math-verify reward, lr 2e-4. Held-out accuracy: avg@4 at T = 0.6 on 20
  fixed problems never trained on.
- `qwen2-format`: not the toy. A random-init Qwen2 (2 layers, width 64, tied embeddings) with the toy's character
  tokenizer, rewarded for format and length (`format_reward`: completions of exactly 4 digits then EOS score 1,
  partial credit for digits), lr 5e-3. Held-out "accuracy": the mean reward of 64 completions at T = 0.6 on held-out
  prompts.
- `llama-digits`: a random-init Llama (3 layers, width 96, untied), rewarded for the share of digits among the
  completion's characters (`digit_reward`), lr 3e-3. Held-out: the mean reward of 64 completions at T = 0.6.
- `qwen2-copy`: kept out of the choice of the controller's defaults, run only with them. A random-init Qwen2 (1 layer,
  width 128, 8 heads, tied), rewarded for copying the prompt (`copy_reward`: the share of the prompt's characters
  repeated in place), lr 3e-3. Held-out: the mean reward of 64 completions at T = 0.6.

Arms per plant and seed: `uncontrolled`; the controller with a constant target `--above` x and `--below` x the
uncontrolled run's entropy at mid-run (mean of the 5 steps around `max_steps / 2`, seed-averaged), and with a falling
target (`--falling` start and end ratios of the uncontrolled run's first-step entropy); TRL's adaptive entropy bonus
(`use_adaptive_entropy`, `entropy_target` = the "above" target) on TRL's `grpo` loss with the same clip widths.
The score is the mean |H - target| / target over the second half of the run (steps > max_steps / 2).

    python benchmarks/controller.py --plant toy --seeds 3 --out-dir outputs/controller
    python benchmarks/controller.py --plant toy --arms uncontrolled --seeds 1 --steps 20   # a quick look
    python benchmarks/controller.py --plant qwen2-copy --arms uncontrolled above below trl_bonus_above --steps 40

Runs already saved under `--out-dir` are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _study import cpu_config  # noqa: E402 - the sibling helper: the config every CPU study trains with

ARMS = ("uncontrolled", "above", "below", "falling", "trl_bonus_above")
CE_GPPO = {"loss_type": "ce_gppo", "ce_gppo_beta1": 0.5, "ce_gppo_beta2": 1.0, "epsilon": 0.2, "epsilon_high": 0.2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plant", choices=("toy", *PLANTS), default="toy")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: 80 (toy), 60 (qwen2-format)")
    parser.add_argument("--above", type=float, default=1.3)
    parser.add_argument("--below", type=float, default=0.7)
    parser.add_argument("--falling", type=float, nargs=2, default=(0.9, 0.5), metavar=("START", "END"))
    parser.add_argument("--controller", default="{}", help="JSON of extra controller config fields")
    parser.add_argument("--extra", default="{}", help="JSON of extra config fields for every arm (probes)")
    parser.add_argument("--tag", default="", help="suffix of the run names (probes)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--toy-dir", default=os.path.join("outputs", "toy"))
    parser.add_argument("--out-dir", default=os.path.join("outputs", "controller"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)  # what each worker process is started with
    if opts.steps is None:
        opts.steps = 80 if opts.plant == "toy" else 60
    return opts


# Plants.


def digit_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """The share of digits among the completion's characters (0 for an empty completion)."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


def copy_reward(completions: list[str], prompts: list[str], **kwargs: Any) -> list[float]:
    """The share of the prompt's characters that the completion repeats at the same position."""
    pairs = zip(prompts, completions, strict=True)
    return [sum(a == b for a, b in zip(p, c, strict=False)) / len(p) for p, c in pairs]


def format_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """1 for exactly four digits, else the share of the first four characters that are digits, minus 0.25 per extra
    character."""
    rewards = []
    for completion in completions:
        digits = sum(ch.isdigit() for ch in completion[:4]) / 4
        rewards.append(1.0 if len(completion) == 4 and digits == 1 else digits - 0.25 * max(len(completion) - 4, 0))
    return rewards


# The random-init plants: model type, shape, reward, learning rate, batch size, completion length.
PLANTS: dict[str, dict[str, Any]] = {
    "qwen2-format": dict(
        model_type="qwen2",
        shape=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        kv_heads=2,
        tied=True,
        reward=format_reward,
        learning_rate=5e-3,
        batch=32,
        length=8,
    ),
    "llama-digits": dict(
        model_type="llama",
        shape=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4),
        kv_heads=4,
        tied=False,
        reward=digit_reward,
        learning_rate=3e-3,
        batch=32,
        length=6,
    ),
    "qwen2-copy": dict(
        model_type="qwen2",
        shape=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=8),
        kv_heads=4,
        tied=True,
        reward=copy_reward,
        learning_rate=3e-3,
        batch=32,
        length=8,
    ),
}


def build_plant_model(path: str, plant: str, seed: int = 0) -> str:
    from ce_gppo_trl.toy import save_random_model

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    spec = PLANTS[plant]
    return save_random_model(
        path,
        spec["model_type"],
        seed=seed,
        num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=64,
        tie_word_embeddings=spec["tied"],
        **spec["shape"],
    )


def score_completions(opts: argparse.Namespace, prompts: list[str], texts: list[str]) -> float:
    reward = PLANTS[opts.plant]["reward"]
    return statistics.fmean(reward(texts, prompts=prompts))


def plant_setup(opts: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Model dir, reward, datasets and the plant's training fields."""
    from ce_gppo_trl.rewards import math_accuracy_reward
    from ce_gppo_trl.toy import make_arithmetic_dataset

    if opts.plant == "toy":
        held_out = make_arithmetic_dataset(20, seed=10_000)
        excluded = set(held_out["prompt"])
        train = make_arithmetic_dataset(4096, seed=seed).filter(lambda row: row["prompt"] not in excluded)
        fields = dict(per_device_train_batch_size=64, num_generations=8, max_completion_length=6, learning_rate=2e-4)
        return dict(model=opts.toy_dir, reward=math_accuracy_reward, train=train, held_out=held_out, fields=fields)
    spec = PLANTS[opts.plant]
    model = build_plant_model(os.path.join(opts.out_dir, f"{opts.plant}-model"), opts.plant)
    train = make_arithmetic_dataset(4096, seed=seed, max_operand=99)
    held_out = make_arithmetic_dataset(64, seed=10_000, max_operand=99)
    fields = dict(
        per_device_train_batch_size=spec["batch"],
        num_generations=8,
        max_completion_length=spec["length"],
        learning_rate=spec["learning_rate"],
    )
    return dict(model=model, reward=spec["reward"], train=train, held_out=held_out, fields=fields)


def held_out_score(opts: argparse.Namespace, model: Any, tokenizer: Any, held_out: Any, seed: int) -> float:
    import torch

    from ce_gppo_trl.toy import evaluate_arithmetic

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if opts.plant == "toy":
            return statistics.fmean(evaluate_arithmetic(model, tokenizer, held_out, temperature=0.6) for _ in range(4))
        inputs = tokenizer(list(held_out["prompt"]), return_tensors="pt", padding=True)
        model.eval()
        output = model.generate(
            **inputs,
            max_new_tokens=PLANTS[opts.plant]["length"],
            do_sample=True,
            temperature=0.6,
            top_k=0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return score_completions(opts, list(held_out["prompt"]), texts)


# Arms.


def arm_fields(opts: argparse.Namespace, arm: str, reference: dict[str, float] | None) -> tuple[str, dict]:
    """(trainer kind, config fields) of `arm`; `reference` holds the uncontrolled run's mid-run and start entropy."""
    if arm == "uncontrolled":
        return "ours", dict(CE_GPPO)
    assert reference is not None
    controller = {"entropy_controller": True, **json.loads(opts.controller)}
    if arm == "above":
        return "ours", {**CE_GPPO, **controller, "entropy_controller_target": opts.above * reference["mid"]}
    if arm == "below":
        return "ours", {**CE_GPPO, **controller, "entropy_controller_target": opts.below * reference["mid"]}
    if arm == "falling":
        start, end = (ratio * reference["start"] for ratio in opts.falling)
        return "ours", {
            **CE_GPPO,
            **controller,
            "entropy_controller_target": start,
            "entropy_controller_target_final": end,
        }
    bonus = {"use_adaptive_entropy": True, "entropy_target": opts.above * reference["mid"]}
    return "trl", {"loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.2, **bonus}


def target_curve(opts: argparse.Namespace, arm: str, fields: dict[str, Any], steps: int) -> list[float] | None:
    if arm == "uncontrolled":
        return None
    if arm == "trl_bonus_above":
        return [fields["entropy_target"]] * steps
    start, end = fields["entropy_controller_target"], fields.get("entropy_controller_target_final")
    return [start if end is None else start + (end - start) * k / steps for k in range(steps)]


def run_one(opts: argparse.Namespace, arm: str, seed: int, reference: dict[str, float] | None) -> dict[str, Any]:
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from ce_gppo_trl import CEGPPOTrainer

    setup = plant_setup(opts, seed)
    kind, fields = arm_fields(opts, arm, reference)
    fields = {**fields, **json.loads(opts.extra)}
    args = cpu_config(
        kind,
        os.path.join(opts.out_dir, "trainer", f"{opts.plant}-{arm}{opts.tag}-{seed}"),
        seed=seed,
        steps_per_generation=4,
        lr_scheduler_type="constant",
        max_steps=opts.steps,
        **{**setup["fields"], **fields},
    )
    tokenizer = AutoTokenizer.from_pretrained(setup["model"])
    trainer_class = GRPOTrainer if kind == "trl" else CEGPPOTrainer
    trainer = trainer_class(
        model=setup["model"],
        reward_funcs=setup["reward"],
        args=args,
        train_dataset=setup["train"],
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "entropy" in log]
    keys = ("entropy", "reward", "entropy_control/output", "entropy_control/saturated")
    curves = {key: [log.get(key) for log in logs] for key in keys}
    score = held_out_score(opts, trainer.model, tokenizer, setup["held_out"], seed)
    target = target_curve(opts, arm, fields, opts.steps)
    return {"arm": arm, "seed": seed, "fields": fields, "curves": curves, "target": target, "held_out": score}


def run_path(opts: argparse.Namespace, arm: str, seed: int) -> str:
    return os.path.join(opts.out_dir, "runs", f"{opts.plant}-{arm}{opts.tag}-{seed}.json")


def worker(opts: argparse.Namespace) -> None:
    arm, seed, reference = opts.worker[0], int(opts.worker[1]), json.loads(opts.worker[2])
    result = run_one(opts, arm, seed, reference or None)
    path = run_path(opts, arm, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f)


def run_all(opts: argparse.Namespace, arms: list[str], reference: dict[str, float] | None) -> None:
    """Run the missing (arm, seed) pairs, `--jobs` at a time, each in its own process with one torch thread."""
    todo = [(arm, seed) for arm in arms for seed in range(opts.seeds) if not os.path.exists(run_path(opts, arm, seed))]
    argv = [a for a in opts.argv if a != "--report-only"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[subprocess.Popen] = []
    while todo or running:
        while todo and len(running) < opts.jobs:
            arm, seed = todo.pop(0)
            command = [sys.executable, __file__, *argv, "--worker", arm, str(seed), json.dumps(reference or {})]
            running.append(subprocess.Popen(command, env=env))
        running[0].wait()
        if running[0].returncode:
            raise RuntimeError(f"worker failed: {running[0].args}")
        running.pop(0)


# Report.


def load(opts: argparse.Namespace, arm: str) -> list[dict[str, Any]]:
    runs = []
    for seed in range(opts.seeds):
        path = run_path(opts, arm, seed)
        if os.path.exists(path):
            with open(path) as f:
                runs.append(json.load(f))
    return runs


def reference_of(opts: argparse.Namespace) -> dict[str, float]:
    runs = load(opts, "uncontrolled")
    mid = opts.steps // 2
    return {
        "mid": statistics.fmean(statistics.fmean(r["curves"]["entropy"][mid - 3 : mid + 2]) for r in runs),
        "start": statistics.fmean(r["curves"]["entropy"][0] for r in runs),
    }


def tracking_error(entropy: list[float], target: list[float], steps: int) -> float:
    tail = range(steps // 2, steps)
    return statistics.fmean(abs(entropy[k] - target[k]) / target[k] for k in tail)


def report(opts: argparse.Namespace, reference: dict[str, float]) -> str:
    lines = [
        f"Plant `{opts.plant}`, {opts.steps} steps, uncontrolled entropy at mid-run {reference['mid']:.3f} nats "
        f"(start {reference['start']:.3f}).",
        "",
        "| arm | target (nats) | mean abs(H - target) / target, 2nd half, per seed | mean | <= 10% on every seed "
        "| uncontrolled vs this target | entropy end | steps saturated | held-out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    uncontrolled = load(opts, "uncontrolled")
    for arm in opts.arms:
        if arm == "uncontrolled":
            continue
        runs = load(opts, arm)
        if not runs:
            continue
        errors = [tracking_error(r["curves"]["entropy"], r["target"], opts.steps) for r in runs]
        baseline = [
            tracking_error(u["curves"]["entropy"], r["target"], opts.steps)
            for u, r in zip(uncontrolled, runs, strict=False)
        ]
        target = runs[0]["target"]
        target_text = f"{target[0]:.3f}" if target[0] == target[-1] else f"{target[0]:.3f} -> {target[-1]:.3f}"
        saturated = [sum(bool(s) for s in r["curves"]["entropy_control/saturated"] if s is not None) for r in runs]
        lines.append(
            f"| {arm} | {target_text} | {', '.join(f'{e:.1%}' for e in errors)} | {statistics.fmean(errors):.1%} "
            f"| {'yes' if max(errors) <= 0.10 else 'no'} | {statistics.fmean(baseline):.1%} "
            f"| {statistics.fmean(r['curves']['entropy'][-1] for r in runs):.3f} "
            f"| {', '.join(map(str, saturated))} | {statistics.fmean(r['held_out'] for r in runs):.3f} |"
        )
    end = statistics.fmean(u["curves"]["entropy"][-1] for u in uncontrolled)
    held_out = statistics.fmean(u["held_out"] for u in uncontrolled)
    lines.append(f"| uncontrolled | - | - | - | - | - | {end:.3f} | - | {held_out:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker:
        worker(opts)
        return 0
    if opts.plant == "toy" and not os.path.exists(os.path.join(opts.toy_dir, "config.json")):
        from ce_gppo_trl.toy import build_toy_model

        build_toy_model(opts.toy_dir)
    if not opts.report_only:
        run_all(opts, ["uncontrolled"], None)
    reference = reference_of(opts)
    others = [arm for arm in opts.arms if arm != "uncontrolled"]
    if others and not opts.report_only:
        run_all(opts, others, reference)
    print(report(opts, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
