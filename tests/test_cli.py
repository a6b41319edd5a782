"""`ce_gppo_trl.cli`: argument parsing, the quickstart defaults, input errors and dispatch."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from ce_gppo_trl import CEGPPOConfig, cli, optional
from ce_gppo_trl.builtin_models import TOY_MODEL

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_yaml_and_the_no_config_defaults_agree():
    from_yaml = cli.parse_train_args(["--config", str(ROOT / "configs" / "quickstart.yaml")])
    from_defaults = cli.parse_train_args([])
    assert from_yaml == from_defaults
    # One file: configs/ is the package's own recipes folder, which a wheel ships (pyproject package-data;
    # .ci/wheel runs the quickstart from an installed wheel).
    assert (ROOT / "configs" / "quickstart.yaml").resolve() == cli.QUICKSTART_CONFIG.resolve()
    assert cli.QUICKSTART_CONFIG.parent == Path(cli.__file__).parent / "recipes"
    assert yaml.safe_load(cli.QUICKSTART_CONFIG.read_text()) == cli.QUICKSTART


@pytest.mark.parametrize(
    "name", ["quickstart", "quickstart.yaml", "configs/quickstart.yaml", "SmolLM2-135M-Instruct/ce_gppo_cpu"]
)
def test_a_shipped_recipe_is_found_by_name_from_any_directory(monkeypatch, tmp_path, name):
    monkeypatch.chdir(tmp_path)  # outside the repository, as after `pip install ce-gppo-trl`
    recipe = cli.resolve_recipe(name)
    assert recipe.parent.parent in (cli.RECIPES_DIR, cli.RECIPES_DIR.parent) and recipe.is_file()
    assert recipe.name == Path(name).with_suffix(".yaml").name
    _, training_args, _ = cli.parse_train_args(["--config", name, "--output_dir", "here"])
    assert training_args.output_dir == "here"


def test_the_shipped_recipes_are_every_yaml_of_configs_but_the_accelerate_ones():
    shipped = cli.shipped_recipes()
    on_disk = {p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert set(shipped) == {name for name in on_disk if not name.startswith("accelerate/")}
    assert "quickstart" in shipped and "DeepSeek-R1-Distill-Qwen-7B/ce_gppo_qlora" in shipped


def test_an_unknown_recipe_name_lists_the_shipped_ones(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=r"--config='quickstrat' is neither a YAML file nor a shipped recipe's name; .*, quickstart"
    ):
        cli.parse_train_args(["--config=quickstrat"])


def test_version_is_one_line_from_the_one_place(capsys):
    import ce_gppo_trl

    assert cli.main(["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"ce-gppo {ce_gppo_trl.__version__} (trl ") and "torch " in line
    assert 'version = { attr = "ce_gppo_trl.__version__" }' in (ROOT / "pyproject.toml").read_text()
    assert f"## {ce_gppo_trl.__version__} " in (ROOT / "CHANGELOG.md").read_text()


def test_renamed_flags_still_parse_with_a_future_warning():
    with pytest.warns(FutureWarning, match="toy_model_dir is deprecated .*: use builtin_model_dir"):
        script_args, _, _ = cli.parse_train_args(["--toy_model_dir", "cache", "--output_dir", "here"])
    assert script_args.builtin_model_dir == "cache" and script_args.toy_model_dir is None
    with pytest.warns(FutureWarning, match="entropy_schedule is deprecated .*: use prob_clip_schedule"):
        _, training_args, _ = cli.parse_train_args(["--entropy_schedule", "oscillatory_decay", "--output_dir", "here"])
    assert training_args.prob_clip_schedule == "oscillatory_decay" and training_args.entropy_schedule is None


def test_quickstart_values_reach_the_dataclasses_and_cli_overrides_win():
    script_args, training_args, model_args = cli.parse_train_args(["--output_dir", "elsewhere", "--max_steps", "7"])
    assert model_args.model_name_or_path == TOY_MODEL
    assert script_args.dataset_name == "builtin:arithmetic" and script_args.reward_funcs == ["math_accuracy"]
    assert (training_args.output_dir, training_args.max_steps) == ("elsewhere", 7)
    assert training_args.loss_type == "ce_gppo" and training_args.ce_gppo_beta1 == 0.5
    # Several optimizer updates per rollout batch: off-policy, so CE-GPPO can act.
    per_update = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    assert training_args.generation_batch_size == per_update * training_args.steps_per_generation
    assert training_args.steps_per_generation > training_args.gradient_accumulation_steps and training_args.off_policy
    assert training_args.use_cpu and not training_args.bf16 and training_args.report_to == []


def test_unknown_yaml_key_is_refused(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("output_dir: x\nuse_cpu: true\nce_gppo_beat1: 0.5\n")
    with pytest.raises(ValueError, match="ce_gppo_beat1"):
        cli.parse_train_args(["--config", str(recipe)])


def test_invalid_value_is_refused_with_the_field_name(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("output_dir: x\nuse_cpu: true\nce_gppo_beta1: -1\n")
    with pytest.raises(ValueError, match="ce_gppo_beta1=-1"):
        cli.parse_train_args(["--config", str(recipe)])


def test_reward_names_and_dotted_paths():
    script_args, training_args, _ = cli.parse_train_args(["--reward_funcs", "math_accuracy", "test_cli.always_half"])
    funcs = cli.build_reward_funcs(script_args, training_args)
    assert funcs[0](completions=["\\boxed{4}", "\\boxed{5}"], solution=["4", "4"]) == [1.0, 0.0]
    assert funcs[1] is always_half


def always_half(completions, **kwargs):
    return [0.5] * len(completions)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--reward_funcs", "accuracy"], r"reward_funcs=\['accuracy'\].*math_accuracy"),
        (["--reward_funcs", "no_such_module.reward"], "reward_funcs='no_such_module.reward'.*cannot import"),
        (["--reward_funcs", "math_accuracy", "--reward_scale", "percent"], "scale.*percent"),
    ],
)
def test_bad_reward_selection_is_a_clear_error(argv, match):
    script_args, training_args, _ = cli.parse_train_args(argv)
    with pytest.raises(ValueError, match=match):
        cli.build_reward_funcs(script_args, training_args)


def test_overlong_reward_gets_the_completion_length():
    argv = ["--reward_funcs", "math_accuracy", "overlong", "--max_completion_length", "10"]
    overlong = cli.build_reward_funcs(*cli.parse_train_args(argv)[:2])[1]
    # Buffer 20% of 10 = 2 tokens: up to 8 tokens free, then -1/2 per token into the buffer.
    assert overlong(completion_ids=[[1] * 7, [1] * 9, [1] * 10]) == [0.0, -0.5, -1.0]


def test_vllm_requested_but_missing_names_the_install_line(monkeypatch):
    monkeypatch.setattr(optional.importlib.util, "find_spec", lambda name: None)
    _, training_args, _ = cli.parse_train_args([])
    training_args.use_vllm = True
    with pytest.raises(cli.MissingDependencyError, match=r"use_vllm=True.*pip install 'ce-gppo-trl\[vllm\]'"):
        cli.check_vllm(training_args)


def test_vllm_extra_is_the_range_trl_supports():
    tomllib = pytest.importorskip("tomllib")
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    ours = {req.name: req.specifier for req in map(Requirement, extra)}
    trls = [Requirement(line) for line in requires("trl") if 'extra == "vllm"' in line]
    (trl_vllm,) = [req for req in trls if req.name == "vllm"]
    assert ours["vllm"] == trl_vllm.specifier  # >=0.22.0,<=0.31.0 for TRL 1.16
    assert "vllm" in Requirement(next(line for line in extra if line.startswith("trl"))).extras


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None,
    reason="TRL 1.16's grpo_trainer imports vllm (trl.generation.vllm_client) whenever it is installed",
)
def test_vllm_is_not_imported_unless_asked():
    code = "import sys, ce_gppo_trl.cli; ce_gppo_trl.cli.parse_train_args([]); print('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_quantization_without_peft_is_refused():
    _, _, model_args = cli.parse_train_args(["--load_in_4bit", "true"])
    with pytest.raises(ValueError, match="load_in_4bit=True with use_peft=False"):
        cli.check_model_args(model_args)


def test_train_on_a_local_model_directory_end_to_end(tiny_model_dir, tmp_path, capsys):
    argv = ["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "run"), "--max_steps", "2"]
    argv += ["--num_train_examples", "64", "--logging_steps", "1", "--save_strategy", "no"]
    assert cli.main(["train", *argv]) == 0
    summary = capsys.readouterr().out
    assert "training finished" in summary and "(2 steps, 1 process)" in summary
    assert f"model:         {tmp_path / 'run'}" in summary and "trainer_state.json" in summary
    assert "checkpoints:    none saved (save_strategy='no')" in summary
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "trainer_state.json").is_file()


@pytest.mark.parametrize(("command", "module"), [("eval", "evaluation"), ("plot", "plotting")])
def test_eval_and_plot_dispatch_to_their_modules(monkeypatch, command, module):
    calls = []
    fake = types.ModuleType(f"ce_gppo_trl.{module}")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, f"ce_gppo_trl.{module}", fake)
    assert cli.main([command, "--x", "1"]) == 0
    assert calls == [["--x", "1"]]


def test_unknown_command_and_help():
    assert cli.main(["fly"]) == 2
    assert cli.main(["--help"]) == 0


def test_console_script_is_declared():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'ce-gppo = "ce_gppo_trl.__main__:main"' in pyproject  # the entry point that quiets third-party notes


def test_summary_counts_the_checkpoints_it_points_at(tmp_path):
    args = CEGPPOConfig(str(tmp_path), use_cpu=True, save_strategy="steps", save_steps=40, steps_per_generation=8)
    assert cli._checkpoints_line(str(tmp_path), args) == "none saved (save_strategy='steps', save_steps=40)"
    (tmp_path / "checkpoint-40").mkdir()
    (tmp_path / "checkpoint-80").mkdir()
    assert cli._checkpoints_line(str(tmp_path), args) == f"{tmp_path}/checkpoint-* (2 saved)"


def test_summary_evaluates_the_word_problems_on_their_held_out_split(tmp_path):
    from types import SimpleNamespace

    from ce_gppo_trl.data import load_math_dataset
    from ce_gppo_trl.evaluation import build_parser
    from ce_gppo_trl.word_problems import make_word_problems

    script_args, training_args, _ = cli.parse_train_args(
        ["--dataset_name", "builtin:word-problems", "--output_dir", str(tmp_path), "--max_completion_length", "24"]
    )
    evaluate = cli.suggested_commands(SimpleNamespace(args=training_args), script_args)["evaluate"]
    args = build_parser().parse_args(shlex.split(evaluate)[2:])
    assert (args.dataset, args.max_new_tokens) == (["builtin:word-problems"], 24)
    evaluated = load_math_dataset(args.dataset[0], split=args.split)["question"]
    assert evaluated == make_word_problems("test")["question"]  # the held-out problems, not the training ones
