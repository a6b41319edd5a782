"""The study harness (`benchmarks.harness`) and the benchmark studies, run for real at a toy size: they must produce
their figures, tables, plots and JSON (gpu_check: its CPU smoke run)."""

import functools
import importlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.harness import grid, heldout, micro, stats

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TINY_RUN = {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4, "steps_per_generation": 2}
TINY_RUN |= {"max_completion_length": 4, "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True}


def load(name):
    """A study as `python -m benchmarks.<name>` imports it; gpu_check and overhead, run as scripts, by path."""
    if name in ("gpu_check", "overhead"):
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(f"benchmarks.{name}")


# The harness.


def test_stats_mean_se_paired_differences_and_verdicts_by_hand():
    # mean 2, sd 1 -> se 1 / sqrt(3)
    assert stats.mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1 / math.sqrt(3)))
    mean, se = stats.mean_se([5.0])
    assert mean == 5.0 and math.isnan(se)
    assert all(math.isnan(x) for x in stats.mean_se([]))
    # Paired: the batches share a spread of 10 that the differences do not carry.
    high, low = [10.3, 20.2, 30.4, 40.1], [10.0, 20.0, 30.0, 40.0]
    diffs = stats.paired_differences(high, low)
    assert diffs == pytest.approx([0.3, 0.2, 0.4, 0.1])
    assert stats.paired(high, low) == pytest.approx((0.25, math.sqrt(0.05 / 3) / 2))
    assert stats.paired([-2.0, 1.0], [1.0, -1.0], absolute=True) == pytest.approx((0.5, 0.5))
    assert stats.sign_counts([-1.0, 0.0, 2.0, 3.0]) == [1, 2]
    assert stats.verdict(stats.paired(high, low), expected_sign=1) == stats.HOLDS  # 0.25 > 2 x 0.0645
    assert stats.verdict(stats.paired(high, low), expected_sign=-1) == stats.FAILS
    assert stats.verdict((0.1, 0.05), expected_sign=1) == stats.UNRESOLVED  # exactly 2 SE: not beyond
    assert stats.verdict((0.1, float("nan")), expected_sign=1) == stats.UNRESOLVED
    assert stats.combine([stats.HOLDS, stats.UNRESOLVED]) == stats.UNRESOLVED
    assert stats.combine([stats.HOLDS, stats.FAILS]) == stats.FAILS
    r, slope, intercept = stats.pearson_slope([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    assert (r, slope, intercept) == pytest.approx((1.0, 2.0, 1.0))
    assert stats.cell((0.5, 0.25), 2) == "0.50 ± 0.25" and stats.cell((0.5, float("nan"))) == "0.500"


def fake_run(calls, job):
    calls.append(job.name)
    return {"arm": job.arm, "seed": job.seed, "value": 10 * job.seed + len(job.arm)}


def test_grid_saves_each_run_and_a_restart_skips_the_finished_ones(tmp_path):
    jobs = [grid.Job("toy", arm, seed) for seed in range(2) for arm in ("DAPO", "CE-GPPO (0.5, 1)")]
    calls = []
    ran = grid.run_grid(jobs[:3], functools.partial(fake_run, calls), out_dir=str(tmp_path))
    assert ran == jobs[:3] and calls == [job.name for job in jobs[:3]]
    assert (tmp_path / "runs" / "toy-ce-gppo-0-5-1-seed0.json").is_file()
    # A restart of the whole grid runs only the job that was not saved.
    calls.clear()
    assert grid.run_grid(jobs, functools.partial(fake_run, calls), out_dir=str(tmp_path)) == [jobs[3]]
    assert calls == ["toy-ce-gppo-0-5-1-seed1"]
    runs = grid.load_runs(jobs, str(tmp_path))
    assert [(r["arm"], r["seed"], r["value"]) for r in runs] == [
        ("DAPO", 0, 4),
        ("CE-GPPO (0.5, 1)", 0, 16),
        ("DAPO", 1, 14),
        ("CE-GPPO (0.5, 1)", 1, 26),
    ]
    assert len(grid.load_runs([*jobs, grid.Job("toy", "GRPO", 0)], str(tmp_path), missing_ok=True)) == 4


def test_grid_trains_arms_x_seeds_on_the_toy_through_build_trainer(tiny_model_dir, tmp_path):
    from ce_gppo_trl import CEGPPOTrainer

    fields = {**TINY_RUN, "model_name_or_path": tiny_model_dir}
    # The command line the grid builds is the one a user types: the arm's fields reach the trainer's config.
    trainer = grid.build("quickstart", {**fields, **grid.ARMS["GPPO (1, 1)"].fields}, seed=3, output_dir=str(tmp_path))
    assert isinstance(trainer, CEGPPOTrainer)
    assert (trainer.args.ce_gppo_beta1, trainer.args.clip_ratio_c, trainer.args.seed) == (1.0, 10.0, 3)
    jobs = [grid.Job("quickstart", arm, seed) for arm in ("GPPO (1, 1)", "DAPO + ERC") for seed in (0, 1)]
    run = functools.partial(grid.train_curves, str(tmp_path), fields)
    assert len(grid.run_grid(jobs, run, out_dir=str(tmp_path))) == 4
    runs = grid.load_runs(jobs, str(tmp_path))
    for r in runs:
        assert len(r["entropy"]) == 2 and all(h > 0 for h in r["entropy"]) and len(r["clip_region"]) == 2
    # Seeds differ, and a rerun changes nothing: every run is saved and skipped.
    assert runs[0]["entropy"] != runs[1]["entropy"]
    assert grid.run_grid(jobs, run, out_dir=str(tmp_path)) == []


# (name, fields): a constant rate, a warm-up whose rate grows with every update of the rollout batch, and LoRA.
SCHEDULES = [
    ("constant", {}),
    ("warmup", {"lr_scheduler_type": "linear", "warmup_steps": 3, "steps_per_generation": 3, "max_steps": 3}),
    (
        "lora",
        {
            "use_peft": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "lora_target_modules": ["q_proj", "v_proj"],
        },
    ),
]


@pytest.mark.parametrize(("schedule", "overrides"), SCHEDULES, ids=[name for name, _ in SCHEDULES])
def test_micro_update_is_the_trainers_own_step(tiny_model_dir, tmp_path, schedule, overrides):
    from transformers import TrainerCallback

    fields = {**TINY_RUN, "model_name_or_path": tiny_model_dir, "ce_gppo_beta1": 1.0, "learning_rate": 1e-2}
    # The share of digits: a reward that differs within a group on the random tiny model, so the updates move it.
    fields |= {"reward_funcs": "benchmarks.harness.plants.digit_reward", **overrides}
    trainer = grid.quiet(grid.build("quickstart", fields, seed=0, output_dir=str(tmp_path / "run")))
    last = fields["max_steps"]
    seen = {}

    class Capture(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:  # the second, off-policy update of the rollout batch, and those after it
                seen["frozen"], seen["batches"] = micro.freeze(trainer), [dict(b) for b in trainer._buffered_inputs]

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == last:
                seen["after"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    trainer.add_callback(Capture())
    trainer.train()
    args = grid.parse("quickstart", {**fields, **micro.NO_DIAGNOSTICS}, seed=0, output_dir=str(tmp_path / "arm"))[1]
    arm = micro.arm_trainer(trainer, args)
    micro.restore(trainer, seen["frozen"], arm)
    outs = [micro.update(arm, batch) for batch in seen["batches"][1:last]]
    # compute_loss + backward + clipping + the optimizer and scheduler steps reproduce the training loop's updates
    # exactly (in a warm-up, each update at its own rate: 1/3 then 2/3 of the peak here)
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, seen["after"][name], rtol=0, atol=0)
    moved = max(float((seen["after"][k] - v).abs().max()) for k, v in seen["frozen"].model.items())
    assert moved > 1e-4  # the updates did change the weights
    for out in outs:
        assert math.isfinite(out["loss"]) and 0 <= out["clipped"] <= 1 and math.isnan(out["erc_masked"])


def test_probe_mask_counts_up_to_the_first_eos_also_when_pad_is_eos():
    # generate fills finished rows with the pad token; SmolLM2's pad is its EOS (2), the toy's is not (EOS 2, pad 0)
    sampled = torch.tensor([[5, 6, 2, 2, 2], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(micro.completion_mask(sampled, eos=2, pad=2), expected)
    toy = torch.tensor([[5, 6, 2, 0, 0], [5, 0, 7, 8, 9], [2, 0, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(micro.completion_mask(toy, eos=2, pad=0), expected)  # a pad sampled before EOS not counted


def test_heldout_scores_by_hand_and_sampling_in_its_own_stream(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ce_gppo_trl.toy import make_arithmetic_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    right, wrong = (tokenizer.encode(f"\\boxed{{{n}}}", add_special_tokens=False) for n in (7, 8))
    rows = {"solution": ["7", "7", "7"], "prompt": ["3 + 4 =", "3 + 4 =", "3 + 4 ="]}
    # the toy's rule: exactly \boxed{solution} then EOS; the testbed's: the boxed answer, EOS or not
    assert heldout.exact_boxed(tokenizer, [right + [eos, eos], right, wrong + [eos]], rows) == [1.0, 0.0, 0.0]
    assert heldout.boxed_answer(tokenizer, [right + [eos], right, wrong], rows) == [1.0, 1.0, 0.0]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    data = make_arithmetic_dataset(5, seed=1)
    lengths = heldout.reward_score(lambda completions, prompts: [len(c) / 8 for c in completions])
    sampling = {"temperature": 1.0, "seed": 3, "max_new_tokens": 8}
    torch.manual_seed(0)
    numbers = heldout.evaluate(model, tokenizer, data, lengths, k=3, **sampling)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # training's stream untouched
    # Sweeps of the whole set, by hand: the k = 3 samples of each prompt, their mean and their best.
    with torch.random.fork_rng():
        torch.manual_seed(3)
        inputs = tokenizer(list(data["prompt"]), return_tensors="pt", padding=True)
        sweeps = [
            model.generate(
                **inputs,
                max_new_tokens=8,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
            for _ in range(3)
        ]
    texts = [
        tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True) for out in sweeps
    ]
    scores = torch.tensor([[len(t) / 8 for t in sweep] for sweep in texts], dtype=torch.float64)
    assert numbers["avg"] == pytest.approx(scores.mean().item()) and 0 < numbers["avg"] <= numbers["pass"]
    assert numbers["pass"] == pytest.approx(scores.max(0).values.mean().item())
    # One sample per prompt: both orders draw the same completions.
    one = heldout.evaluate(model, tokenizer, data, lengths, k=1, **sampling)
    assert one == heldout.evaluate(model, tokenizer, data, lengths, k=1, grouped=True, **sampling)


def test_overhead_prints_ratios_and_equal_forward_counts(tmp_path, capsys):
    overhead = load("overhead")
    argv = ["--pairs", "1", "--model-config", "toy-256", "--steps", "2", "--batch-size", "4"]
    argv += ["--num-generations", "2", "--steps-per-generation", "2", "--completion-length", "4"]
    summary = overhead.main([*argv, "--json", str(tmp_path / "overhead.json")])
    out = capsys.readouterr().out
    assert "| wall time of train() (s) |" in out and "| model forwards outside generate |" in out
    for arm in ("trl", "ours"):
        assert summary[arm]["steps"] == 2
        # one rollout of 8 completions x 4 tokens (4 decoding steps), TRL's scoring pass for old_per_token_logps
        # (2 chunks of 4) and 2 training forwards: CE-GPPO + ERC + diagnostics add no forward pass
        assert summary[arm]["forwards_generate"] == 4
        assert summary[arm]["forwards_train"] == 4
        assert summary[arm]["completion_tokens"] == 8 * 4  # every completion runs to full length
    assert summary["ratio"]["train_seconds"] > 0 and summary["ratio"]["peak_memory_mib"] > 0
    assert len(json.loads((tmp_path / "overhead.json").read_text())["runs"]) == 2


def test_entropy_dynamics_writes_table_plot_and_claims(tmp_path):
    from ce_gppo_trl.toy import build_toy_model

    dynamics = load("entropy_dynamics")
    # The tiniest real run: a 1-layer, 32-wide toy model warm-started for 2 SFT steps (the script reuses a finished
    # build in --toy-dir), 2 RL steps on one rollout of 2 prompts x 2 completions, 2 methods, 1 seed, in-process.
    toy = build_toy_model(str(tmp_path / "toy"), sft_steps=2, hidden_size=32, num_layers=1, eval_examples=4)
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\nkept\n")
    argv = ["--methods", "DAPO", "DAPO + ERC", "--seeds", "1", "--steps", "2", "--jobs", "1"]
    argv += ["--prompts-per-rollout", "2", "--num-generations", "2", "--steps-per-generation", "2"]
    argv += ["--max-completion-length", "6", "--eval-problems", "4", "--eval-every", "1", "--eval-k", "1"]
    argv += ["--toy-dir", toy, "--toy-max-operand", "9"]
    argv += ["--out-dir", str(tmp_path / "out"), "--plot", str(tmp_path / "plot.png")]
    report = dynamics.main([*argv, "--results-md", str(results_md)])

    assert set(report["summary"]) == {"DAPO", "DAPO + ERC"}
    for numbers in report["summary"].values():
        start, low, end = numbers["start"][0], numbers["min"][0], numbers["end"][0]
        assert 0 < low <= start and low <= end
        assert 0 <= numbers["accuracy"][0] <= 1
    [(claim, verdict, detail)] = report["claims"]
    assert claim.startswith("ERC narrows entropy swings") and verdict in (
        dynamics.HOLDS,
        dynamics.FAILS,
        dynamics.UNRESOLVED,
    )
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    text = results_md.read_text()
    assert text.startswith("# Results\n\nkept\n") and "| DAPO + ERC |" in text and "Command: `python" in text
    opts = dynamics.parse_args([*argv, "--results-md", str(results_md)])
    run = json.loads(Path(dynamics.run_path(opts, "DAPO + ERC", 0)).read_text())
    assert len(run["entropy"]) == 2 and len(run["erc_masked"]) == 2
    # a second call reuses the saved runs and rewrites the block in place
    dynamics.main([*argv, "--results-md", str(results_md)])
    assert results_md.read_text().count("| DAPO + ERC |") == 1


def test_gpu_check_script_parses_and_its_checks_run_on_cpu(tmp_path):
    script = BENCHMARKS / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "vLLM colocate" in usage.stdout
    gpu_check = load("gpu_check")
    # Everything but vLLM, bf16 and CUDA: a tiny random model, LoRA, CE-GPPO + ERC, 4 updates per rollout batch
    assert gpu_check.main(["--smoke", "--out", str(tmp_path / "acting")]) == 0
    checks = json.loads((tmp_path / "acting" / "ours.json").read_text())["checks"]
    assert len(checks) == 8 and all(checks.values())
    # One update per rollout batch: on-policy, CE-GPPO and ERC cannot act, and the check fails
    assert gpu_check.main(["--smoke", "--updates-per-rollout", "1", "--out", str(tmp_path / "inert")]) == 1
    checks = json.loads((tmp_path / "inert" / "ours.json").read_text())["checks"]
    assert not checks["off-policy config (no 'cannot act' warning)"]
    assert not checks["CE-GPPO clip regions reached: max clip_ratio/region_mean > 0"]


def test_normalisation_weights_sum_to_one_and_match_by_hand(capsys):
    normalisation = load("normalisation")
    # Two ranks of two sequences; budget 100 tokens: rank 0 packs both (90 tokens), rank 1 needs two micro-batches.
    response, prompt = torch.tensor([30, 50, 60, 70]), torch.tensor([5, 5, 5, 5])
    weights = normalisation.sequence_weights(response, prompt, ranks=2, max_tokens=100)
    expected = torch.tensor([30 / 80, 50 / 80, 1 / 2, 1 / 2], dtype=torch.float64) / 2  # (n_m / 2) x L_i / T_m / 2
    torch.testing.assert_close(weights["authors"], expected)
    for w in weights.values():
        assert w.sum().item() == pytest.approx(1.0)
    summary = normalisation.main(["--seeds", "3", "--sequences", "16", "--ranks", "4"])
    assert 0 < summary["update_token_mean/tv_to_authors"]["mean"] < 1
    assert "| update_token_mean/cosine_to_authors |" in capsys.readouterr().out


@pytest.mark.slow
def test_dynamic_sampling_benchmark_runs_both_arms(tmp_path, capsys):
    runs = load("dynamic_sampling").main(
        ["--seeds", "1", "--max-steps", "4", "--out-dir", str(tmp_path), "--plot", str(tmp_path / "ds.png")]
    )
    assert [len(runs[arm]) for arm in ("false", "true")] == [1, 1] and (tmp_path / "ds.png").is_file()
    assert runs["true"][0]["rollouts"] and not runs["false"][0]["rollouts"]
    assert "| true |" in capsys.readouterr().out


def test_cov_losses_report_means_and_standard_errors_by_hand():
    cov_losses = load("cov_losses")
    steps = [4, 8, 12, 16]

    def fake(arm, reward, entropy):
        return {
            "arm": arm,
            "wall_s": 10.0,
            "steps": steps,
            "reward": reward,
            "entropy": entropy,
            f"{arm}/selected_mean": [0.01] * 4,
        }

    runs = {
        "clip_cov": [
            fake("clip_cov", [0.1, 0.2, 0.3, 0.4], [1.0] * 4),
            fake("clip_cov", [0.3, 0.2, 0.3, 0.6], [2.0] * 4),
        ],
        "kl_cov": [fake("kl_cov", [0.5] * 4, [1.5] * 4)],
    }
    table = cov_losses.report(runs)
    assert "| reward, steps 4-4 | reward, steps 16-16 |" in table
    # first-quarter reward per seed 0.1, 0.3: mean 0.2, se = sd / sqrt(2) = 0.1414 / 1.414 = 0.1
    assert "| clip_cov | 2 | 0.200 +- 0.100 | 0.500 +- 0.100 | 1.500 +- 0.500 | 1.500 +- 0.500 |" in table
    assert "| kl_cov | 1 | 0.500 | 0.500 | 1.500 | 1.500 | 1.500 | - | 0.010 | 10.0 |" in table


@pytest.mark.slow
def test_cov_losses_benchmark_runs_every_arm(tmp_path, capsys):
    runs = load("cov_losses").main(
        [
            "--seeds",
            "1",
            "--max-steps",
            "4",
            "--logging-steps",
            "2",
            "--out-dir",
            str(tmp_path),
            "--plot",
            str(tmp_path / "cov.png"),
        ]
    )
    assert [len(runs[arm]) for arm in ("ce_gppo", "clip_cov", "kl_cov")] == [1, 1, 1] and (
        tmp_path / "cov.png"
    ).is_file()
    assert runs["clip_cov"][0]["clip_cov/selected_mean"][0] > 0 and "kl_cov/selected_mean" in runs["kl_cov"][0]
    assert "| kl_cov | 1 |" in capsys.readouterr().out


def test_controller_benchmark_reports_every_arm(tmp_path, capsys):
    controller = load("controller")
    # The plant that needs no SFT build, 4 steps: one uncontrolled reference run, then the controller held above it.
    argv = ["--plant", "qwen2-format", "--arms", "uncontrolled", "above", "--seeds", "1", "--steps", "4"]
    assert controller.main([*argv, "--jobs", "1", "--out-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| above |" in table and "| uncontrolled |" in table
    run = json.loads((tmp_path / "runs" / "qwen2-format-above-0.json").read_text())
    assert len(run["curves"]["entropy"]) == 4 and len(run["target"]) == 4
    assert run["fields"]["entropy_controller"] is True


def test_regime_quick_writes_json_plots_and_results(tmp_path):
    regime = load("regime")
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\nkept\n")
    # --quick: a 1-layer, 32-wide testbed warm-started for 60 SFT steps, 3 methods x 2 seeds of 16 steps (2 rollout
    # batches of 8 updates), the micro-experiments on both rollout batches of a DAPO run; in this process.
    argv = ["--quick", "--jobs", "1", "--model-dir", str(tmp_path / "tb"), "--out-dir", str(tmp_path / "out")]
    argv += ["--json", str(tmp_path / "regime.json"), "--plot-prefix", str(tmp_path / "regime")]
    report = regime.main([*argv, "--results-md", str(results_md)])

    data = json.loads((tmp_path / "regime.json").read_text())
    assert set(data) >= {"testbed", "methods", "micro", "diagnostics"}
    assert data["testbed"]["updates_per_rollout_batch"] == 8 and data["testbed"]["quick"] is True
    assert set(data["methods"]) == {"DAPO", "CE-GPPO (0.5, 1)", "DAPO + ERC"}
    for method in data["methods"].values():
        assert len(method["seeds"]) == 2
        for seed in method["seeds"]:
            assert {"entropy_start", "entropy_end", "heldout_t1_start", "heldout_t1_end"} <= set(seed)
            assert seed["entropy_start"] > 0 and 0 <= seed["heldout_t1_end"] <= 1
    # every method of a seed starts from the same SFT model and the same held-out evaluation stream
    starts = {m["seeds"][0]["heldout_t1_start"] for m in data["methods"].values()}
    assert len(starts) == 1
    micro = data["micro"]
    assert list(micro["beta1"]) == ["0.0", "0.25", "0.5", "0.75", "1.0"] and list(micro["beta2"]) == [
        "0.5",
        "1.0",
        "1.5",
    ]
    assert micro["batches"] == 2
    for mean, se in [*micro["beta1"].values(), *micro["beta2"].values()]:
        assert math.isfinite(mean) and se >= 0
    # (0.5, 1) is in both sweeps: one setting, measured once
    assert micro["beta1"]["0.5"] == micro["beta2"]["1.0"]
    diagnostics = data["diagnostics"]
    assert diagnostics["updates"] == 16 and -1 <= diagnostics["pearson_r"] <= 1 and math.isfinite(diagnostics["slope"])
    # entropy_attribution/realised is the change this script measures on its own; its prediction covers every update
    assert diagnostics["realised_library_max_gap"] < 1e-5
    assert diagnostics["predicted_param_space"]["updates"] == 16

    for name in ("regime.png", "regime_micro.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    text = results_md.read_text()
    assert text.startswith("# Results\n\nkept\n") and "| DAPO + ERC |" in text and "Command: `python" in text
    verdicts = {verdict for _, verdict, _ in report["claims"]}
    assert verdicts <= {regime.stats.HOLDS, regime.stats.FAILS, regime.stats.UNRESOLVED}
    # a second call reuses every saved run and rewrites its block in place
    regime.main([*argv, "--results-md", str(results_md)])
    assert results_md.read_text().count("| DAPO + ERC |") == 1


def test_real_model_micro_quick_on_the_toy_writes_the_issue_json_and_resumes(tmp_path):
    micro = load("real_model_micro")
    # --quick: the tiny testbed of regime.py, 2 rollout batches of 16 prompts x 8 updates along a DAPO run; lr 3e-3
    # so that some tokens leave the clip band within one rollout batch and the arms' gradients differ.
    argv = [
        "--quick",
        "--learning-rate",
        "3e-3",
        "--model-dir",
        str(tmp_path / "tb"),
        "--out-dir",
        str(tmp_path / "o"),
    ]
    argv += ["--json", str(tmp_path / "micro.json"), "--results-md", ""]
    micro.main(argv)
    data = json.loads((tmp_path / "micro.json").read_text())
    assert data["model"] == "toy-testbed" and data["batches"] == 2
    assert list(data["micro"]["beta1"]) == ["0.0", "0.5", "1.0"] and list(data["micro"]["beta2"]) == [
        "0.5",
        "1.0",
        "1.5",
    ]
    assert set(data["micro"]["erc"]) == {"off", "on"}
    assert data["micro"]["beta1"]["0.5"] == data["micro"]["beta2"]["1.0"]  # one setting, measured once
    assert list(data["lr"]) == ["0.003", "0.0003"]
    for pair in [*data["micro"]["beta1"].values(), *(v["beta1_1_minus_0"] for v in data["lr"].values())]:
        assert math.isfinite(pair[0]) and pair[1] >= 0
    assert 0 <= data["erc_masked_frac"] <= 1 and len(data["erc_masked_by_entropy_quintile"]) == 5
    batches = [json.loads(p.read_text()) for p in sorted((tmp_path / "o" / "batches").glob("*.json"))]
    # Where beta1 = 1 saw clipped tokens, its update differs from beta1 = 0's: the arms really apply their gradients.
    clipped = [b for b in batches if b["clipped"]["beta1=1"] > 0]
    assert clipped and all(b["delta"]["beta1=1"] != b["delta"]["beta1=0"] for b in clipped)
    # the library's entropy attribution on every update of the run (2 batches x 8)
    assert data["diagnostics"]["updates"] == 16 and -1 <= data["diagnostics"]["param_space_r"] <= 1
    # A second call resumes: the saved batches are kept as they are and the run is not repeated.
    saved = {p.name: p.read_text() for p in (tmp_path / "o" / "batches").glob("*.json")}
    micro.main(argv)
    assert {p.name: p.read_text() for p in (tmp_path / "o" / "batches").glob("*.json")} == saved
    assert len((tmp_path / "o" / "diagnostics.jsonl").read_text().splitlines()) == 16


def test_real_model_sweep_builds_recipe_commands_the_cli_accepts():
    from ce_gppo_trl.cli import parse_train_args

    sweep = load("real_model_sweep")
    opts = sweep.parse_args(["--seeds", "3", "--max-steps", "8"])
    expected = {"DAPO": (0.0, None), "CE-GPPO (0.5, 1)": (0.5, None), "GPPO": (1.0, None), "DAPO + ERC": (0.0, 0.95)}
    for method, (beta1, erc_low) in expected.items():
        command = sweep.train_command(opts, method, 2, Path("/tmp/sweep-run"))
        assert command[:4] == ["ce-gppo", "train", "--config", "configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml"]
        _, args, model_args = parse_train_args(command[2:])
        assert (args.ce_gppo_beta1, args.erc_low, args.seed, args.max_steps) == (beta1, erc_low, 2, 8)
        assert model_args.model_name_or_path == "builtin:smollm2-135m-instruct" and args.use_cpu and not args.bf16
    cuda = sweep.train_command(sweep.parse_args(["--device", "cuda"]), "GPPO", 0, Path("/tmp/sweep-run"))
    pairs = dict(zip(cuda[4::2], cuda[5::2], strict=True))
    assert pairs["--use_cpu"] == "false" and pairs["--bf16"] == "true" and "--max_steps" not in pairs
    assert sweep.parse_args(["--device", "cuda"]).jobs == 4 and opts.jobs == 1


def test_attribution_checks_prediction_cost_and_beta1_pairs(tiny_model_dir, tmp_path):
    attribution = load("attribution")
    # The recipe path (what --model builtin:smollm2-135m-instruct takes) on the tiny model: 3 steps with the
    # attribution on and off, and 2 seeds of beta1 0 / 1 pairs of 2 steps each.
    argv = ["--model", tiny_model_dir, "--config", str(BENCHMARKS.parent / "configs" / "quickstart.yaml")]
    argv += ["--steps", "3", "--beta1-seeds", "2", "--beta1-steps", "2", "--out-dir", str(tmp_path / "out")]
    argv += ["--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.png")]
    report = attribution.main(argv)
    assert report["check"]["updates"] == 3 and report["check"]["max_parts_minus_predicted"] < 1e-6
    assert report["cost"]["on_seconds_per_step"] > 0 and report["cost"]["ratio"] > 0
    pairs = report["beta1"]
    assert pairs["seeds"] == 2 and {"realised", "predicted", "part/clip_low", "part/momentum"} <= set(pairs)
    for mean, se in (pairs[name]["difference"] for name in pairs if name not in ("seeds", "steps", "clipped")):
        assert math.isfinite(mean) and se >= 0
    assert len(json.loads((tmp_path / "a.json").read_text())["updates"]) == 3
    assert (tmp_path / "a.png").stat().st_size > 10_000
