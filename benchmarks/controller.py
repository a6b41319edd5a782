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

Each run is built as `ce-gppo train` builds it (`benchmarks.harness.grid.build`: the quickstart recipe, the plant's
fields, this study's budget, the arm's fields, then `--extra`); the TRL bonus arm runs TRL's own `grpo` loss and
bonus inside `CEGPPOTrainer`. Precision: float32 (`bf16: false`, the recipes'), as the issue-31 figures of RESULTS
section 17 were run; `--extra '{"bf16": true}'` trains in bf16 autocast on the CPU, the precision of the figures of
sections 7 and 13.

    python -m benchmarks.controller --plant toy --seeds 3 --out-dir outputs/controller
    python -m benchmarks.controller --plant toy --arms uncontrolled --seeds 1 --steps 20   # a quick look
    python -m benchmarks.controller --plant qwen2-copy --arms uncontrolled above below trl_bonus_above --steps 40

The plants are `benchmarks.harness.plants.PLANTS` (`toy`, `qwen2-format`, `llama-digits`, `qwen2-copy`).

Runs already saved under `--out-dir` are reused.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
from typing import Any

from .harness import grid, heldout
from .harness.arms import CONTROLLER_BASE as CE_GPPO
from .harness.plants import PLANTS, RANDOM_SPECS

ARMS = ("uncontrolled", "above", "below", "falling", "trl_bonus_above", "above_pi", "below_pi")
"""`above` / `below` / `falling`: the controller with its defaults (the measured-gain law since issue 31);
`*_pi`: the same targets under the fixed-gain PI law (`entropy_controller_law: pi`, the ablation)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plant", choices=("toy", *RANDOM_SPECS), default="toy")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: 80 (toy), 60 (qwen2-format)")
    parser.add_argument("--above", type=float, default=1.3)
    parser.add_argument("--below", type=float, default=0.7)
    parser.add_argument("--falling", type=float, nargs=2, default=(0.9, 0.5), metavar=("START", "END"))
    parser.add_argument("--controller", default="{}", help="JSON of extra controller config fields")
    parser.add_argument("--extra", default="{}", help="JSON of extra config fields for every arm (probes)")
    parser.add_argument("--tag", default="", help="suffix of the run names (probes)")
    parser.add_argument(
        "--lr-scale", type=float, default=1.0, help="multiply the plant's learning rate (runs tagged -lr<scale>)"
    )
    parser.add_argument("--summary", nargs="+", metavar="PLANT", help="report every saved plant x lr-scale of these")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each); 1: this process")
    parser.add_argument("--toy-dir", default=os.path.join("outputs", "toy"))
    parser.add_argument("--out-dir", default=os.path.join("outputs", "controller"))
    parser.add_argument("--report-only", action="store_true")
    opts = parser.parse_args(argv)
    if opts.lr_scale != 1.0:
        opts.tag += f"-lr{opts.lr_scale:g}"
    if opts.steps is None:
        opts.steps = 80 if opts.plant == "toy" else 60
    return opts


# Plants.


def model_dir(opts: argparse.Namespace) -> str:
    return opts.toy_dir if opts.plant == "toy" else os.path.join(opts.out_dir, f"{opts.plant}-model")


def held_out_score(opts: argparse.Namespace, model: Any, tokenizer: Any, held_out: Any, seed: int) -> float:
    """The toy's avg@4 accuracy, or a random-init plant's mean reward of one completion per prompt, at T = 0.6."""
    toy = opts.plant == "toy"
    sampling = {"k": 4, "max_new_tokens": 8} if toy else {"k": 1, "max_new_tokens": RANDOM_SPECS[opts.plant]["length"]}
    score = PLANTS[opts.plant].score
    return heldout.evaluate(model, tokenizer, held_out, score, temperature=0.6, seed=seed, **sampling)["avg"]


# Arms.


def arm_fields(opts: argparse.Namespace, arm: str, reference: dict[str, float] | None) -> dict[str, Any]:
    """The config fields of `arm`; `reference` holds the uncontrolled run's mid-run and start entropy."""
    if arm == "uncontrolled":
        return dict(CE_GPPO)
    assert reference is not None
    controller = {"entropy_controller": True, **json.loads(opts.controller)}
    if arm == "above":
        return {**CE_GPPO, **controller, "entropy_controller_target": opts.above * reference["mid"]}
    if arm == "below":
        return {**CE_GPPO, **controller, "entropy_controller_target": opts.below * reference["mid"]}
    if arm in ("above_pi", "below_pi"):
        ratio = opts.above if arm == "above_pi" else opts.below
        law = {"entropy_controller_law": "pi"}
        return {**CE_GPPO, **controller, **law, "entropy_controller_target": ratio * reference["mid"]}
    if arm == "falling":
        start, end = (ratio * reference["start"] for ratio in opts.falling)
        return {
            **CE_GPPO,
            **controller,
            "entropy_controller_target": start,
            "entropy_controller_target_final": end,
        }
    bonus = {"use_adaptive_entropy": True, "entropy_target": opts.above * reference["mid"]}
    return {"loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.2, **bonus}


def target_curve(opts: argparse.Namespace, arm: str, fields: dict[str, Any], steps: int) -> list[float] | None:
    if arm == "uncontrolled":
        return None
    if arm == "trl_bonus_above":
        return [fields["entropy_target"]] * steps
    start, end = fields["entropy_controller_target"], fields.get("entropy_controller_target_final")
    return [start if end is None else start + (end - start) * k / steps for k in range(steps)]


def run_one(opts: argparse.Namespace, arm: str, seed: int, reference: dict[str, float] | None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    plant = PLANTS[opts.plant]
    train, held_out = plant.data(seed)
    fields = {**arm_fields(opts, arm, reference), **json.loads(opts.extra)}
    study = {"bf16": False, "steps_per_generation": 4, "lr_scheduler_type": "constant", "max_steps": opts.steps}
    study["learning_rate"] = plant.fields["learning_rate"] * opts.lr_scale
    output_dir = os.path.join(opts.out_dir, "trainer", f"{opts.plant}-{arm}{opts.tag}-{seed}")
    run = {"seed": seed, "output_dir": output_dir, "model_dir": model_dir(opts), "train_dataset": train}
    trainer = grid.build(plant, {**study, **fields}, **run)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "entropy" in log]
    keys = ("entropy", "reward", "entropy_control/output", "entropy_control/saturated", "entropy_control/gain")
    keys += (
        "entropy_control/drift",
        "entropy_control/scale",
        "entropy_control/lag",
        "entropy_control/predicted_change",
    )
    curves = {key: [log.get(key) for log in logs] for key in keys}
    tokenizer = AutoTokenizer.from_pretrained(model_dir(opts))
    score = held_out_score(opts, trainer.model, tokenizer, held_out, seed)
    target = target_curve(opts, arm, fields, opts.steps)
    return {"arm": arm, "seed": seed, "fields": fields, "curves": curves, "target": target, "held_out": score}


def job_path(out_dir: str, job: grid.Job) -> str:
    return os.path.join(out_dir, "runs", f"{job.plant}-{job.arm}{job.tag}-{job.seed}.json")


def run_path(opts: argparse.Namespace, arm: str, seed: int) -> str:
    return job_path(opts.out_dir, grid.Job(opts.plant, arm, seed, opts.tag))


def run_job(opts: argparse.Namespace, reference: dict[str, float] | None, job: grid.Job) -> dict[str, Any]:
    return run_one(opts, job.arm, job.seed, reference)


def run_all(opts: argparse.Namespace, arms: list[str], reference: dict[str, float] | None) -> None:
    """Run the missing (arm, seed) pairs, `--jobs` at a time, each with one torch thread."""
    jobs = [grid.Job(opts.plant, arm, seed, opts.tag) for arm in arms for seed in range(opts.seeds)]
    run = functools.partial(run_job, opts, reference)
    grid.run_grid(jobs, run, out_dir=opts.out_dir, workers=opts.jobs, path_of=job_path)


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


def settling_step(entropy: list[float], target: list[float], band: float = 0.10) -> int | None:
    """The first step from which |H - target| / target stays within `band` to the end (None: never)."""
    inside = [abs(h - t) / t <= band for h, t in zip(entropy, target, strict=True)]
    for k in range(len(inside)):
        if all(inside[k:]):
            return k
    return None


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _cell(cells: dict[str, Any], arm: str) -> str:
    if arm not in cells:
        return "-"
    errors, _, settle = cells[arm]
    steps = [k for k in settle if k is not None]
    settled = f", settles {statistics.median(steps):.0f}" if len(steps) == len(settle) else ", unsettled"
    return f"{statistics.fmean(errors):.1%} (max {max(errors):.1%}{settled})"


def summary(opts: argparse.Namespace) -> str:
    """Issue 31's table over every saved plant x learning rate: mean and p95 tracking error (2nd half) of the
    default law, the PI ablation, TRL's adaptive bonus (above only) and the uncontrolled run against the same
    targets; settling steps; and the measured gain, median per run, whose spread across plants is the point."""
    import math

    from ce_gppo_trl.toy import build_tokenizer

    # Every plant speaks the toy tokenizer: no entropy can exceed ln(V). A target above it is out of reach by
    # construction; those runs are shown (the saturation flag's test) and left out of the pooled errors.
    ceiling = math.log(len(build_tokenizer()))
    rows, pooled, gains, unreachable = [], {}, [], []
    runs_dir = os.path.join(opts.out_dir, "runs")
    for plant in opts.summary:
        tags = sorted(
            {
                name[len(plant) + len("-uncontrolled") : name.rindex("-")]
                for name in os.listdir(runs_dir)
                if name.startswith(f"{plant}-uncontrolled")
            }
        )
        for tag in tags:
            view = argparse.Namespace(**{**vars(opts), "plant": plant, "tag": tag})
            uncontrolled = load(view, "uncontrolled")
            if not uncontrolled:
                continue
            view.steps = len(uncontrolled[0]["curves"]["entropy"])
            cells = {}
            for arm in ("above", "below", "above_pi", "below_pi", "trl_bonus_above"):
                runs = load(view, arm)
                if not runs:
                    continue
                if max(runs[0]["target"]) > ceiling:
                    flags = [r["curves"].get("entropy_control/saturated") or [] for r in runs]
                    first = [f.index(1.0) if 1.0 in f else None for f in flags]
                    unreachable.append(
                        f"{plant}{tag} {arm} (target {runs[0]['target'][0]:.2f}): saturated from step {first}"
                    )
                    continue
                errors = [tracking_error(r["curves"]["entropy"], r["target"], view.steps) for r in runs]
                flagged = [any(r["curves"].get("entropy_control/saturated") or []) for r in runs]
                free = [
                    tracking_error(u["curves"]["entropy"], r["target"], view.steps)
                    for u, r in zip(uncontrolled, runs, strict=False)
                ]
                settle = [settling_step(r["curves"]["entropy"], r["target"]) for r in runs]
                cells[arm] = (errors, free, settle)
                side = "above" if arm.startswith("above") or arm.endswith("above") else "below"
                # Pooled within the decade around each plant's own learning rate, and apart at x0.1 / x10.
                side += ", lr x0.3-x3" if tag in ("", "-lr0.3", "-lr3") else f", lr x{tag.removeprefix('-lr')}"
                law = "trl" if arm.startswith("trl") else "pi" if arm.endswith("_pi") else "measured"
                pooled.setdefault((law, side), []).extend(errors)
                if law == "measured":
                    reachable = [e for e, f in zip(errors, flagged, strict=True) if not f]
                    pooled.setdefault(("measured, not flagged out of reach", side), []).extend(reachable)
                if law == "measured":
                    pooled.setdefault(("uncontrolled", side), []).extend(free)
                for r in runs:
                    measured = [g for g in r["curves"].get("entropy_control/gain") or [] if g is not None]
                    if measured and law == "measured":
                        gains.append((plant, tag, statistics.median(measured)))

            free_above = statistics.fmean(cells["above"][1]) if "above" in cells else float("nan")
            free_below = statistics.fmean(cells["below"][1]) if "below" in cells else float("nan")
            lr = tag.removeprefix("-lr") or "1"
            rows.append(
                f"| {plant} | x{lr} | {_cell(cells, 'above')} | {_cell(cells, 'above_pi')} "
                f"| {_cell(cells, 'trl_bonus_above')} | {free_above:.1%} | {_cell(cells, 'below')} "
                f"| {_cell(cells, 'below_pi')} | {free_below:.1%} |"
            )
    lines = [
        "| plant | lr | above: measured (default) | above: PI | above: TRL adaptive | above: uncontrolled "
        "| below: measured (default) | below: PI | below: uncontrolled |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| law | side | runs | median error | mean error | p95 error |",
        "|---|---|---|---|---|---|",
    ]
    for (law, side), errors in sorted(pooled.items()):
        if not errors:
            continue
        lines.append(
            f"| {law} | {side} | {len(errors)} | {statistics.median(errors):.1%} | {statistics.fmean(errors):.1%} "
            f"| {quantile(errors, 0.95):.1%} |"
        )
    if unreachable:
        lines += ["", f"Targets above ln(V) = {ceiling:.3f} nats (out of reach by construction):", *unreachable]
    if gains:
        low, high = min(gains, key=lambda g: g[2]), max(gains, key=lambda g: g[2])
        lines += [
            "",
            f"Measured gain b (median per run): {low[2]:.3g} ({low[0]}{low[1]}) to {high[2]:.3g} "
            f"({high[0]}{high[1]}), a {high[2] / low[2]:.0f}x spread over {len(gains)} runs.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.summary:
        print(summary(opts))
        return 0
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
