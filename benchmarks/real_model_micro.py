"""The papers' claims on a real pretrained model: paired micro-experiments on SmolLM2-135M-Instruct (issue 19).

Along a DAPO run of the real-model recipe (`configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml`: LoRA r 16 on every
linear layer, lr 3e-4, 8 samples per prompt, 4 updates per rollout batch, 24 tokens, `builtin:word-problems`), at
each of `--batches` rollout batches the weights, Adam state and rollout batch are frozen, and from them the batch's
updates are applied once per arm:

- beta1 in {0, 0.5, 1} at beta2 = 1, and beta2 in {0.5, 1, 1.5} at beta1 = 0.5 (CE-GPPO, the recipe's eps 0.2 / 0.2);
- DAPO (eps 0.2 / 0.28, no gradient outside the band) without and with ERC (0.95, 1.05);
- beta1 in {0, 1} again at the learning rate divided by `--lr-factor` (10: a decade apart), the step-size question.

Every arm's updates go through the trainer's own `compute_loss` (`benchmarks.harness.micro`): an arm is a second
`CEGPPOTrainer` over the same model object, its config the run's command line plus the arm's fields
(`benchmarks.harness.arms.MICRO_ARMS`). The realised change of the mean next-token entropy on a probe set (held-out
prompts, completions sampled once per batch from the frozen policy, teacher-forced) is the measurement; paired
differences between arms (same weights, same batch, same probe) carry no batch-to-batch spread. The first update of a
rollout batch is on-policy (ratio 1, no token clipped, no ERC mask), so it is the same for every arm at a learning
rate: it is applied once (the DAPO run's own first update at the recipe's rate, one update at the smaller rate) and the
arms differ from the second update on. ERC's old entropies are the frozen policy's, as the captured scoring pass gives
them in training. The run also logs the library's entropy attribution on its own updates
(`entropy_attribution_steps=1`: `grad_theta H . delta_theta` against the realised change of the update's micro-batch
entropy), the diagnostic's check on the real model.

The same engine runs on the toy testbed of `regime.py` (`--plant toy`, its 64 x 8 rollouts, 8 updates, lr 2e-4), so
the two scales stand side by side; `--quick` is a tiny toy run for CI (about a minute).

    python -m benchmarks.real_model_micro                       # real model, 10 batches (~80 min on 1 thread)
    python -m benchmarks.real_model_micro --plant toy --batches 20
    python -m benchmarks.real_model_micro --report-only         # tables, JSON and RESULTS.md from saved batches

Each finished batch is saved under `--out-dir/batches`; the DAPO run checkpoints at every rollout batch, so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from . import regime
from .harness import grid, micro, stats
from .harness.arms import DAPO_OWN_LOSS, ERC, MICRO_ARMS, SMALL_LR_ARMS
from .harness.results import write_results
from .harness.stats import FAILS, HOLDS, UNRESOLVED

HERE = os.path.dirname(os.path.abspath(__file__))
ERC_BAND = (ERC["erc_low"], ERC["erc_high"])
ARM_NAMES = [*MICRO_ARMS, *(f"small_lr/{name}" for name in SMALL_LR_ARMS)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plant", choices=("real", "toy"), default="real")
    parser.add_argument("--quick", action="store_true", help="a tiny toy run for CI (implies --plant toy)")
    parser.add_argument("--batches", type=int, help="rollout batches with micro-experiments (real 10, toy 20)")
    parser.add_argument("--prompts-per-rollout", type=int, help="real: 4 (32 completions), toy: 64")
    parser.add_argument("--probe-prompts", type=int, help="held-out probe prompts, one completion each (real 16)")
    parser.add_argument("--lr-factor", type=float, default=10.0, help="the small learning rate is lr / this")
    parser.add_argument("--no-diagnostics", action="store_true", help="skip grad_theta H . delta_theta per update")
    parser.add_argument("--learning-rate", type=float, help="the run's rate (default: the recipe's / regime.py's)")
    parser.add_argument("--model-dir", help="toy: the testbed model (built once; default regime.py's)")
    parser.add_argument("--out-dir", help="saved batches and the DAPO run's checkpoints")
    parser.add_argument("--json", help="default benchmarks/real_model_micro.json (toy: toy_micro.json; '' skips)")
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"), help="'' to skip")
    parser.add_argument("--extra", default="{}", help="JSON of more `ce-gppo train` fields (run and arms)")
    parser.add_argument("--report-only", action="store_true", help="run nothing: report the saved batches")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.plant = "toy"
    real = opts.plant == "real"
    defaults = {
        "batches": 10 if real else (2 if opts.quick else 20),
        "prompts_per_rollout": 4 if real else (16 if opts.quick else 64),
        "probe_prompts": 16 if real else 64,
        "out_dir": os.path.join("outputs", f"micro-{opts.plant}{'-quick' if opts.quick else ''}"),
        "json": os.path.join(HERE, "real_model_micro.json" if real else "toy_micro.json"),
    }
    for name, value in defaults.items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    if opts.batches < 1:
        parser.error(f"--batches {opts.batches}: expected >= 1")
    if opts.lr_factor <= 1:
        parser.error(f"--lr-factor {opts.lr_factor}: expected > 1 (the second learning rate is lr / factor)")
    return opts


# The plants: the fields of the DAPO run (this library's loss path), and the probe prompts.


def run_setup(opts: argparse.Namespace) -> tuple[Any, dict[str, Any], str | None, list]:
    """(plant, the DAPO run's fields, the plant's model directory, the probe prompts)."""
    fields: dict[str, Any] = dict(DAPO_OWN_LOSS)
    if not opts.no_diagnostics:
        # The entropy attribution on every update (grad_theta H . delta_theta against the realised change of the
        # update's own micro-batch) and the tabular entropy_dynamics/predicted_delta beside it.
        fields.update(entropy_attribution_steps=1, entropy_diagnostics=True)
    if opts.plant == "real":
        from ce_gppo_trl.word_problems import make_word_problems

        fields.update(
            per_device_train_batch_size=opts.prompts_per_rollout * 8 // 4,
            max_steps=opts.batches * 4,
            save_steps=4,
            save_total_limit=1,
            logging_steps=1,
            disable_tqdm=True,
        )
        probe = list(make_word_problems("test", opts.probe_prompts)["prompt"])
        plant, model_dir = "smollm2", None
    else:
        ropts = regime.parse_args(["--quick"] if opts.quick else [])
        ropts.prompts_per_rollout = opts.prompts_per_rollout
        ropts.model_dir = opts.model_dir or ropts.model_dir
        spg = ropts.steps_per_generation
        fields.update(regime.run_fields(ropts))
        fields.update(max_steps=opts.batches * spg, save_strategy="steps", save_steps=spg, save_total_limit=1)
        plant, model_dir = regime.testbed_plant(ropts), ropts.model_dir
        probe = list(plant.data(0)[1]["prompt"][: opts.probe_prompts])
    if opts.learning_rate is not None:
        fields["learning_rate"] = opts.learning_rate
    fields.update(json.loads(opts.extra))
    return plant, fields, model_dir, probe


# The micro engine.


def batch_path(opts: argparse.Namespace, index: int) -> str:
    return os.path.join(opts.out_dir, "batches", f"{index:03d}.json")


def micro_experiment(
    trainer: Any,
    arms: dict[str, Any],
    probe_prompts: list[str],
    snapshot: micro.Frozen,
    opts: argparse.Namespace,
    index: int,
) -> dict[str, Any]:
    """Every arm from the frozen state of this rollout batch; called after the run's own first update of the batch
    (the shared on-policy update at the run's rate), and restores the run's state afterwards."""
    import torch

    first = micro.freeze(trainer)  # after the shared first update at the run's rate
    batches = [dict(b) for b in trainer._buffered_inputs]  # the rollout batch TRL buffered for this batch's updates
    micro.restore(trainer, snapshot)
    temperature = trainer.args.temperature
    for b in batches:
        b["old_entropies"] = micro.token_entropies(trainer.model, b, temperature)  # the frozen policy's
    probe = micro.probe_batch(
        trainer.model, trainer.processing_class, probe_prompts, trainer.args.max_completion_length, 10_000 + index
    )
    before = micro.mean_entropy(trainer.model, probe, temperature)
    advantages = torch.cat([b["advantages"] for b in batches])
    step_lr = micro.inner_optimizer(trainer).param_groups[0]["lr"]
    record: dict[str, Any] = {
        "index": index,
        "step": trainer.state.global_step,
        "probe_entropy_before": before,
        "train_entropy": trainer._metrics["train"]["entropy"][-1],
        "frac_zero_advantage": float((advantages == 0).float().mean()),
        "lr": trainer.args.learning_rate,  # nominal (the step's own rate is scaled during a warm-up)
        "step_lr": step_lr,
        "delta": {},
        "clipped": {},
    }
    # The shared first update at the small rate (beta1 = 0's config: on-policy, every arm's first update is this).
    small = arms["beta1=0"]
    micro.restore(trainer, snapshot, small)
    with micro.scaled_lr(small, 1 / opts.lr_factor):
        micro.update(small, batches[0])
    first_small = micro.freeze(small)
    with torch.random.fork_rng():
        for name in ARM_NAMES:
            slow = name.startswith("small_lr/")
            arm = arms[name.removeprefix("small_lr/")]
            micro.restore(trainer, first_small if slow else first, arm)
            outs, bins = [], []
            with micro.scaled_lr(arm, 1 / opts.lr_factor if slow else 1.0):
                for b in batches[1:]:
                    if arm.args.erc_enabled:
                        bins.append(
                            micro.erc_masked_by_entropy_bin(trainer.model, b, ERC_BAND, temperature=temperature)
                        )
                    outs.append(micro.update(arm, b))
            record["delta"][name] = micro.mean_entropy(trainer.model, probe, temperature) - before
            record["clipped"][name] = sum(o["clipped"] for o in outs) / len(outs)
            if bins:
                record["erc_masked"] = sum(o["erc_masked"] for o in outs) / len(outs)
                record["erc_masked_by_entropy_bin"] = [sum(col) / len(col) for col in zip(*bins, strict=True)]
    micro.restore(trainer, first)
    return record


def run(opts: argparse.Namespace) -> None:
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    os.makedirs(os.path.join(opts.out_dir, "batches"), exist_ok=True)
    if all(os.path.exists(batch_path(opts, index)) for index in range(opts.batches)):
        return  # every batch is saved: nothing to run
    diagnostics_path = os.path.join(opts.out_dir, "diagnostics.jsonl")
    plant, fields, model_dir, prompts = run_setup(opts)
    run_dir = os.path.join(opts.out_dir, "run")
    common = {"seed": 0, "model_dir": model_dir}
    trainer = grid.build(plant, fields, output_dir=run_dir, **common)
    if trainer.args.num_generations != 8 or (plant == "smollm2" and trainer.args.steps_per_generation != 4):
        raise ValueError("the recipe's rollout changed: update run_setup's batch arithmetic")
    tokenizer = trainer.processing_class
    if plant == "smollm2":
        prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    arms: dict[str, Any] = {}

    def arm_trainers() -> dict[str, Any]:
        if not arms:
            for name, arm in MICRO_ARMS.items():
                overrides = {**fields, **micro.NO_DIAGNOSTICS, **arm.fields}
                args = grid.parse(plant, overrides, output_dir=os.path.join(opts.out_dir, "arm"), **common)[1]
                arms[name] = micro.arm_trainer(trainer, args)
        return arms

    class Micro(TrainerCallback):
        snapshot: micro.Frozen | None = None
        started = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            spg = args.steps_per_generation
            index = state.global_step // spg
            if state.global_step % spg == 0 and not os.path.exists(batch_path(opts, index)):
                self.snapshot = micro.freeze(trainer)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            spg = args.steps_per_generation
            logged = {key: values[-1] for key, values in trainer._metrics["train"].items() if values}
            if "entropy_attribution/predicted" in logged:
                row = {
                    "step": state.global_step,
                    "realised_delta": logged["entropy_attribution/realised"],
                    "predicted_param_space": logged["entropy_attribution/predicted"],
                    "predicted_tabular": logged["entropy_dynamics/predicted_delta"],
                }
                with open(diagnostics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if self.snapshot is not None and state.global_step % spg == 1:
                index = state.global_step // spg
                start = time.perf_counter()
                record = micro_experiment(trainer, arm_trainers(), prompts, self.snapshot, opts, index)
                record["seconds"] = time.perf_counter() - start
                with open(batch_path(opts, index) + ".tmp", "w") as f:
                    json.dump(record, f)
                os.replace(batch_path(opts, index) + ".tmp", batch_path(opts, index))
                self.snapshot = None
                print(
                    f"batch {index}: step {state.global_step}, probe entropy {record['probe_entropy_before']:.3f}, "
                    f"micro {record['seconds']:.0f}s, {time.perf_counter() - self.started:.0f}s since start; "
                    + ", ".join(f"{k} {v:+.4f}" for k, v in record["delta"].items()),
                    flush=True,
                )

    trainer.add_callback(Micro())
    grid.quiet(trainer)
    last = get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    trainer.train(resume_from_checkpoint=last)


# The report.


def paired(batches: list[dict], high: str, low: str, absolute: bool = False) -> list[float]:
    """Per batch, arm `high`'s probe-entropy change minus arm `low`'s."""
    return stats.paired_differences([b["delta"][high] for b in batches], [b["delta"][low] for b in batches], absolute)


def summarize(opts: argparse.Namespace) -> dict[str, Any]:
    folder = os.path.join(opts.out_dir, "batches")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
    batches = []
    for name in names:
        with open(os.path.join(folder, name)) as f:
            batches.append(json.load(f))
    if not batches:
        raise SystemExit(f"no saved batches under {folder}: run the study first")

    def stat(values: list[float]) -> list[float]:
        return [round(v, 6) for v in stats.mean_se(values)]

    signs = stats.sign_counts
    arms = {name: [b["delta"][name] for b in batches] for name in ARM_NAMES}
    lr = batches[0]["lr"]
    small = lr / opts.lr_factor
    summary: dict[str, Any] = {
        "model": "smollm2-135m-instruct" if opts.plant == "real" else "toy-testbed",
        "batches": len(batches),
        "micro": {
            "beta1": {f"{b:.1f}": stat(arms[f"beta1={b:g}"]) for b in (0.0, 0.5, 1.0)},
            "beta2": {"0.5": stat(arms["beta2=0.5"]), "1.0": stat(arms["beta1=0.5"]), "1.5": stat(arms["beta2=1.5"])},
            "erc": {"off": stat(arms["dapo"]), "on": stat(arms["dapo+erc"])},
        },
        "lr": {
            f"{lr:g}": {"beta1_1_minus_0": stat(paired(batches, "beta1=1", "beta1=0"))},
            f"{small:g}": {"beta1_1_minus_0": stat(paired(batches, "small_lr/beta1=1", "small_lr/beta1=0"))},
        },
        "erc_masked_frac": round(sum(b["erc_masked"] for b in batches) / len(batches), 4),
        "paired": {
            "beta1_1_minus_0": stat(paired(batches, "beta1=1", "beta1=0")),
            "beta2_1.5_minus_0.5": stat(paired(batches, "beta2=1.5", "beta2=0.5")),
            "erc_on_minus_off": stat(paired(batches, "dapo+erc", "dapo")),
            "erc_abs_on_minus_off": stat(paired(batches, "dapo+erc", "dapo", absolute=True)),
        },
        "paired_signs": {
            "beta1_1_minus_0": signs(paired(batches, "beta1=1", "beta1=0")),
            "beta2_1.5_minus_0.5": signs(paired(batches, "beta2=1.5", "beta2=0.5")),
            "erc_on_minus_off": signs(paired(batches, "dapo+erc", "dapo")),
            "erc_abs_on_minus_off": signs(paired(batches, "dapo+erc", "dapo", absolute=True)),
            "small_lr_beta1_1_minus_0": signs(paired(batches, "small_lr/beta1=1", "small_lr/beta1=0")),
        },
        "small_lr_beta1": {f"{b:.1f}": stat(arms[f"small_lr/beta1={b:g}"]) for b in (0.0, 1.0)},
        "arms": {name: stat(values) for name, values in arms.items()},
        "clipped": {name: round(sum(b["clipped"][name] for b in batches) / len(batches), 4) for name in ARM_NAMES},
        "erc_masked_by_entropy_quintile": [
            round(sum(col) / len(col), 4)
            for col in zip(*(b["erc_masked_by_entropy_bin"] for b in batches), strict=True)
        ],
        "per_batch": [
            {
                key: b[key]
                for key in ("index", "step", "probe_entropy_before", "train_entropy", "frac_zero_advantage", "seconds")
            }
            for b in batches
        ],
        "learning_rates": [lr, small],
        "micro_seconds": round(sum(b["seconds"] for b in batches)),
    }
    diagnostics = os.path.join(opts.out_dir, "diagnostics.jsonl")
    if os.path.exists(diagnostics):
        with open(diagnostics) as f:
            rows = [json.loads(line) for line in f]
        if len(rows) > 2:
            r, slope, _ = stats.pearson_slope(
                [x["predicted_param_space"] for x in rows], [x["realised_delta"] for x in rows]
            )
            summary["diagnostics"] = {
                "updates": len(rows),
                "param_space_r": round(r, 3),
                "param_space_slope": round(slope, 3),
            }
            r, slope, _ = stats.pearson_slope(
                [x.get("predicted_tabular", x.get("predicted_recomputed")) for x in rows],
                [x["realised_delta"] for x in rows],
            )
            summary["diagnostics"].update({"tabular_r": round(r, 3), "tabular_slope": round(slope, 5)})
    return summary


def claims(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    p = s["paired"]
    lrs = list(s["lr"])
    out = [
        (
            "larger beta1 -> entropy down (CE-GPPO)",
            stats.verdict(p["beta1_1_minus_0"], -1),
            fmt(p["beta1_1_minus_0"], "beta1 1 - 0") + count(s, "beta1_1_minus_0"),
        ),
        (
            "larger beta2 -> entropy up (CE-GPPO)",
            stats.verdict(p["beta2_1.5_minus_0.5"], 1),
            fmt(p["beta2_1.5_minus_0.5"], "beta2 1.5 - 0.5") + count(s, "beta2_1.5_minus_0.5"),
        ),
        (
            "ERC keeps entropy from falling (DAPO + ERC above DAPO)",
            stats.verdict(p["erc_on_minus_off"], 1),
            fmt(p["erc_on_minus_off"], "ERC on - off") + count(s, "erc_on_minus_off"),
        ),
        (
            "ERC damps the entropy change (|change| smaller with ERC)",
            stats.verdict(p["erc_abs_on_minus_off"], -1),
            fmt(p["erc_abs_on_minus_off"], "|on| - |off|") + count(s, "erc_abs_on_minus_off"),
        ),
    ]
    signs = [stats.sign_of(s["lr"][lr]["beta1_1_minus_0"]) for lr in lrs]
    same = (
        "the same sign"
        if signs[0] == signs[1] != 0
        else ("opposite signs" if signs[0] * signs[1] < 0 else "not resolved at one rate")
    )
    out.append(
        (
            "the beta1 effect keeps its sign at a learning rate a decade smaller",
            HOLDS if signs[0] == signs[1] != 0 else (FAILS if signs[0] * signs[1] < 0 else UNRESOLVED),
            "; ".join(
                fmt(s["lr"][lr]["beta1_1_minus_0"], f"lr {lr}") + count(s, name)
                for lr, name in zip(lrs, ("beta1_1_minus_0", "small_lr_beta1_1_minus_0"), strict=True)
            )
            + f" ({same})",
        )
    )
    return out


def count(s: dict[str, Any], name: str) -> str:
    below, above = s["paired_signs"][name]
    return f" (below 0 in {below}, above 0 in {above} of {s['batches']} batches)"


def fmt(pair: list[float], label: str) -> str:
    return f"{label}: {pair[0]:+.4f} ± {pair[1]:.4f} nats"


def table(s: dict[str, Any]) -> str:
    lines = [
        f"Model `{s['model']}`, {s['batches']} rollout batches, learning rates {s['learning_rates'][0]:g} and "
        f"{s['learning_rates'][1]:g}; probe-entropy change per arm (mean ± SE over batches), clipped per update:",
        "",
        "| arm | probe entropy change | clipped |",
        "|---|---|---|",
    ]
    for name, (mean, se) in s["arms"].items():
        lines.append(f"| {name} | {mean:+.4f} ± {se:.4f} | {s['clipped'][name]:.3f} |")
    quint = ", ".join(f"{x:.2f}" for x in s["erc_masked_by_entropy_quintile"])
    lines += [
        "",
        f"ERC (0.95, 1.05) masks {s['erc_masked_frac']:.3f} of completion tokens per off-policy update; by quintile "
        f"of the old entropy (lowest first): {quint}.",
    ]
    if "diagnostics" in s:
        d = s["diagnostics"]
        lines.append(
            f"Diagnostics on {d['updates']} updates of the DAPO run: grad_theta H . delta_theta against the "
            f"realised change of the micro-batch's entropy r {d['param_space_r']}, slope {d['param_space_slope']}; "
            f"the tabular logit-space sum r {d['tabular_r']}."
        )
    lines += ["", "Verdicts (2 standard errors):", ""]
    lines += [f"- **{v}**: {claim}. {detail}." for claim, v, detail in claims(s)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    start = time.perf_counter()
    if not opts.report_only:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        run(opts)
    summary = summarize(opts)
    run_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    summary["command"] = "python -m benchmarks.real_model_micro " + " ".join(run_argv)
    summary["wall_seconds_this_call"] = round(time.perf_counter() - start)
    report = table(summary)
    print(report)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(summary, f, indent=1)
    if opts.results_md and not opts.quick:
        marker = f"<!-- micro-{opts.plant}:"
        write_results(opts.results_md, report, marker + "start -->", marker + "end -->")
    return summary


if __name__ == "__main__":
    main()
