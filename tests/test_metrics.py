"""The metric registry: every name a real training run logs is documented, and every documented name is logged."""

import pytest
from transformers import set_seed

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
from ce_gppo_trl.metrics import METRICS, Metric, is_trl_metric, metric_doc


def digit_reward(completions, **kwargs):
    """Dense toy reward (share of digits): advantages vary inside every group, so every region is visited."""
    return [sum(char.isdigit() for char in completion) / 8 for completion in completions]


# Short runs that together switch on every feature that logs a metric of this library's.
RUNS = {
    "ce_gppo, dual clip, ERC, NLL, dynamic sampling, OD": dict(
        clip_ratio_c=3.0,
        erc_low=0.95,
        erc_high=1.05,
        positive_nll_coef=0.1,
        dynamic_sampling=True,
        prob_clip_schedule="oscillatory_decay",
        entropy_attribution_steps=1,
    ),
    "entropy attribution with SGD": dict(optim="sgd", entropy_attribution_steps=2),
    "ID schedule with the controller": dict(
        prob_clip_schedule="increase_decrease",
        entropy_controller=True,
        entropy_controller_target=2.0,
    ),
    "cispo with ERC": dict(loss_type="cispo", epsilon_high=4.0, erc_low=0.95, erc_high=1.05),
    "vespo with ERC": dict(loss_type="vespo", erc_low=0.95, erc_high=1.05),
    "clip_cov": dict(loss_type="clip_cov"),
    "kl_cov": dict(loss_type="kl_cov"),
}


@pytest.fixture(scope="module")
def logged_names(tiny_model_dir, arithmetic_dataset, tmp_path_factory) -> dict[str, set[str]]:
    names = {}
    for label, fields in RUNS.items():
        args = CEGPPOConfig(
            output_dir=str(tmp_path_factory.mktemp("metrics")),
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=8,
            num_generations=4,
            steps_per_generation=2,  # 2 optimizer updates per rollout batch: the second is off-policy
            max_completion_length=6,
            learning_rate=2e-2,
            max_steps=2,
            logging_steps=1,
            save_strategy="no",
            seed=0,
            beta=0.0,
            disable_tqdm=True,
            **fields,
        )
        set_seed(0)
        trainer = CEGPPOTrainer(
            model=tiny_model_dir, reward_funcs=digit_reward, args=args, train_dataset=arithmetic_dataset
        )
        trainer.train()
        names[label] = {key for entry in trainer.state.log_history for key in entry}
    return names


def test_every_logged_metric_is_documented(logged_names):
    for label, names in logged_names.items():
        undocumented = sorted(name for name in names if metric_doc(name) is None and not is_trl_metric(name))
        assert not undocumented, f"{label}: add a Metric(...) to ce_gppo_trl/metrics.py for {undocumented}"


def test_every_documented_metric_is_logged(logged_names):
    seen = set().union(*logged_names.values())
    documented = {name for metric in METRICS for name in metric.names()}
    # entropy_control/gain went with the online gain estimate (issue 21) and came back measured (issue 31), with
    # predicted_change, drift, lag and scale.
    assert len(documented) == 73
    assert documented - seen == set(), "documented but never logged: fix the name or the runs above"


def test_every_entry_has_a_doc_and_a_unique_name():
    names = [name for metric in METRICS for name in metric.names()]
    assert len(names) == len(set(names))
    for metric in METRICS:
        assert len(metric.doc) >= 20 and metric.doc.endswith("."), metric.name
        assert metric.when, metric.name


def test_placeholders_expand_and_names_resolve():
    family = Metric("x/{side}_{kind}", "A family of two by two.", values={"side": ("low", "high"), "kind": ("a", "b")})
    assert family.names() == ["x/low_a", "x/low_b", "x/high_a", "x/high_b"]
    assert family.group == "x"
    assert metric_doc("entropy_dynamics/clip_high_grad_frac").name == "entropy_dynamics/{region}_grad_frac"
    assert metric_doc("rewards/digit_reward/mean") is None and is_trl_metric("rewards/digit_reward/mean")
    assert not is_trl_metric("clip_ratio/new_thing") and metric_doc("clip_ratio/new_thing") is None
