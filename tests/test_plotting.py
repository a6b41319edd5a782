import json

import pytest
from trl import GRPOConfig, GRPOTrainer

from ce_gppo_trl.plotting import load_log_history, main
from ce_gppo_trl.rewards import get_reward_funcs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def short_run(tiny_model_dir, arithmetic_dataset, tmp_path_factory):
    """Two real GRPO steps of plain TRL on the toy task, with a checkpoint holding trainer_state.json."""
    output_dir = tmp_path_factory.mktemp("run")
    args = GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        seed=0,
    )
    rewards = get_reward_funcs(["math_accuracy", "format"])
    GRPOTrainer(model=tiny_model_dir, reward_funcs=rewards, args=args, train_dataset=arithmetic_dataset).train()
    return str(output_dir)


def test_plot_png_from_a_real_short_run(short_run, tmp_path, capsys):
    series = load_log_history(short_run)
    assert series["reward"][0] == [1, 2]
    assert {"entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"} <= set(series)
    output = tmp_path / "curves.png"
    assert main([short_run, short_run, "-o", str(output), "--labels", "a", "b"]) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    assert output.stat().st_size > 10_000
    assert "entropy, reward, clip_ratio/low_mean" in capsys.readouterr().out


def test_plot_draws_project_metrics_when_logged(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    history = [
        {"step": step, "entropy": 1.0 / step, "entropy_ratio/clip_low_mean": 0.01, "entropy_control/beta1": 0.5}
        for step in (1, 2, 3)
    ]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    series = load_log_history(str(run))
    assert series["entropy_control/beta1"] == ([1, 2, 3], [0.5, 0.5, 0.5])
    assert main([str(run), "-o", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_run_without_logs_gives_a_clear_message(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "-o", str(tmp_path / "x.png")]) == 1
    assert "has no logs: no trainer_state.json" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert not (tmp_path / "x.png").exists()


def test_plot_stacks_the_entropy_attribution_parts_beside_the_realised_change(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ce_gppo_trl.plotting import draw_entropy_attribution

    run = tmp_path / "run"
    run.mkdir()
    parts = {"E1": -0.02, "E2": 0.03, "clip_low": 0.01, "momentum": -0.005}
    history = [
        {
            "step": step,
            "entropy": 1.0,
            "entropy_attribution/realised": 0.012 * step,
            "entropy_attribution/predicted": sum(parts.values()) * step,
            **{f"entropy_attribution/part/{name}": value * step for name, value in parts.items()},
        }
        for step in (1, 2)
    ]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    series = load_log_history(str(run))
    assert series["entropy_attribution/part/clip_low"] == ([1, 2], [0.01, 0.02])
    figure, axis = plt.subplots()
    draw_entropy_attribution(axis, series)
    tops = {}
    for patch in axis.patches:  # positive parts stack up from 0, negative ones down
        x = round(patch.get_x() + patch.get_width() / 2)
        tops.setdefault(x, []).append(patch.get_y() + patch.get_height())
    assert max(tops[2]) == pytest.approx(0.08) and min(tops[2]) == pytest.approx(-0.05)
    plt.close(figure)
    assert main([str(run), "-o", str(tmp_path / "out.png"), "--labels", "on"]) == 0
    assert "entropy_attribution/* (on)" in capsys.readouterr().out


def test_default_labels_are_the_run_names_not_paths_of_the_machine(tmp_path):
    # Issue 32: a plot's legend names runs, never a directory of the machine they ran on.
    from ce_gppo_trl.plotting import short_labels

    runs = [str(tmp_path / "runs" / "ce-gppo"), str(tmp_path / "runs" / "grpo")]
    assert short_labels(runs) == ["ce-gppo", "grpo"]
    same_name = [str(tmp_path / "a" / "seed0"), str(tmp_path / "b" / "seed0")]
    assert short_labels(same_name) == ["a/seed0", "b/seed0"]
    assert not any(str(tmp_path) in label for label in short_labels(runs + same_name))
