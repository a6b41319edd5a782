"""A real pretrained model learning on CPU: SmolLM2-135M-Instruct, CE-GPPO, held-out word problems, end to end.

Steps, each saved under `--out-dir` and skipped on a rerun (the study is resumable):
1. held-out accuracy and format compliance of the converted model (`builtin:smollm2-135m-instruct`) at temperature 1,
   `--samples` completions for each of the 256 held-out problems (`builtin:word-problems`, split test);
2. `ce-gppo train --config <recipe>` as a user runs it (wall time measured; `train.log` keeps its output);
3. the same evaluation of the trained model (its LoRA adapter or full weights), same seed;
4. `benchmarks/real_model.json`: start and end accuracy with standard errors (over problems), format compliance
   (the answer stated as "The answer is N", right or wrong), accuracy among formatted answers, train minutes, steps
   and the entropy curve's ends.

Example:
    ```bash
    python benchmarks/real_model.py                    # the recipe as written (about 45 minutes on 2 cores)
    python benchmarks/real_model.py --max-steps 2 --samples 1 --num-problems 8 --out-dir /tmp/rm  # a smoke run
    ```
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml"


def evaluate(model: str, num_problems: int | None, samples: int, max_new_tokens: int, seed: int) -> dict:
    """Held-out accuracy (mean over problems of the share of right samples), its standard error over problems, and
    format compliance, at temperature 1 with no top-k or top-p cut (the trainer's sampling)."""
    from transformers import AutoTokenizer

    from ce_gppo_trl.builtin_models import resolve_model
    from ce_gppo_trl.evaluation import _adapter_base, generate_completions
    from ce_gppo_trl.rewards import math_accuracy_reward
    from ce_gppo_trl.word_problems import keeps_format, make_word_problems

    data = make_word_problems("test", num_problems)
    model = resolve_model(model, None)
    tokenizer = AutoTokenizer.from_pretrained(_adapter_base(model) or model)
    prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in data["prompt"]]
    start = time.perf_counter()
    completions = generate_completions(
        model,
        prompts,
        n=samples,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        batch_size=32,
        backend="transformers",
        seed=seed,
        progress=False,
    )
    right = [
        math_accuracy_reward(row, [gold] * len(row)) for row, gold in zip(completions, data["solution"], strict=True)
    ]
    formatted = [[keeps_format(text) for text in row] for row in completions]
    per_problem = [sum(row) / len(row) for row in right]
    n = len(per_problem)
    mean = sum(per_problem) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in per_problem) / (n - 1) / n) if n > 1 else float("nan")
    n_formatted = sum(map(sum, formatted))
    right_formatted = sum(r for rr, ff in zip(right, formatted, strict=True) for r, f in zip(rr, ff, strict=True) if f)
    return {
        "n": n,
        "samples": samples,
        "accuracy": mean,
        "se": se,
        "format": n_formatted / (n * samples),
        "accuracy_when_formatted": right_formatted / n_formatted if n_formatted else None,
        "seconds": round(time.perf_counter() - start, 1),
        "examples": [row[0] for row in completions[:5]],
    }


def cached(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=2))
    return result


def train(out_dir: Path, recipe: str, extra: list[str]) -> dict:
    run_dir = out_dir / "run"
    command = ["ce-gppo", "train", "--config", recipe, "--output_dir", str(run_dir), *extra]
    start = time.perf_counter()
    with open(out_dir / "train.log", "w") as log:
        subprocess.run(command, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - start) / 60
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {"command": " ".join(command), "train_minutes": round(minutes, 2), "run_dir": str(run_dir), "log": history}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--out-dir", default=str(ROOT / "outputs" / "real_model"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "real_model.json"))
    parser.add_argument("--samples", type=int, default=2, help="completions per held-out problem")
    parser.add_argument("--num-problems", type=int, default=None, help="held-out problems (default: all 256)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's max_steps")
    parser.add_argument("--seed", type=int, default=1234)
    opts = parser.parse_args(argv)

    import yaml

    from ce_gppo_trl.word_problems import make_word_problems

    recipe = yaml.safe_load((ROOT / opts.recipe).read_text())
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = ["--max_steps", str(opts.max_steps)] if opts.max_steps else []
    length = recipe["max_completion_length"]

    def held_out(model: str) -> dict:
        return evaluate(model, opts.num_problems, opts.samples, length, opts.seed)

    start = cached(out_dir / "eval_start.json", lambda: held_out(recipe["model_name_or_path"]))
    print(f"start: accuracy {start['accuracy']:.3f} +- {start['se']:.3f}, format {start['format']:.2f}", flush=True)
    run = cached(out_dir / "train.json", lambda: train(out_dir, opts.recipe, extra))
    end = cached(out_dir / "eval_end.json", lambda: held_out(run["run_dir"]))
    print(f"end: accuracy {end['accuracy']:.3f} +- {end['se']:.3f}, format {end['format']:.2f}", flush=True)

    logged = [entry for entry in run["log"] if "entropy" in entry]
    gain = end["accuracy"] - start["accuracy"]
    report = {
        "model": "smollm2-135m-instruct",
        "task": {
            "dataset": recipe["dataset_name"],
            "train_problems": len(make_word_problems("train")),
            "heldout_problems": start["n"],
            "heldout": "256 problems whose sums (a + b, a - b) never occur in training",
            "answer": "'The answer is N', read anchored by math_accuracy (math-verify)",
            "sampling": "temperature 1, no top-k / top-p cut, as the trainer samples",
        },
        "recipe": opts.recipe,
        "overrides": extra,
        "heldout": {
            "n": start["n"],
            "samples_per_problem": opts.samples,
            "start": {k: start[k] for k in ("accuracy", "se", "format", "accuracy_when_formatted")},
            "end": {k: end[k] for k in ("accuracy", "se", "format", "accuracy_when_formatted")},
            "gain": gain,
            "gain_se": math.hypot(start["se"], end["se"]),
        },
        "train_minutes": run["train_minutes"],
        "steps": max(entry["step"] for entry in run["log"]),
        "entropy": {"start": logged[0]["entropy"], "end": logged[-1]["entropy"]} if logged else None,
        "curve": [
            {"step": e["step"], "reward": e.get("reward"), "entropy": e["entropy"], "step_time": e.get("step_time")}
            for e in logged
        ],
        "machine": {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], "benchmarks/real_model.py", *(argv or sys.argv[1:])]),
    }
    Path(opts.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["heldout"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
