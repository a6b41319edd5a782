import json

import pytest

from ce_gppo_trl.evaluation import main, summarize_scores
from ce_gppo_trl.rewards import math_accuracy_reward


def test_summarize_scores():
    assert summarize_scores([[1.0, 0.0, 0.0, 1.0], [0.0] * 4, [1.0] * 4]) == {
        "num_problems": 3,
        "avg@4": 0.5,
        "pass@4": 2 / 3,
    }
    with pytest.raises(ValueError, match=r"same number \(> 0\) of samples, got counts \[1, 2\]"):
        summarize_scores([[1.0], [1.0, 0.0]])


def test_eval_on_tiny_saved_model_and_local_jsonl(tiny_model_dir, tmp_path, capsys):
    problems = tmp_path / "arith.jsonl"
    problems.write_text("".join(json.dumps({"problem": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(3)))
    output = tmp_path / "out" / "results.json"
    argv = ["--model", tiny_model_dir, "--dataset", str(problems), "--n", "3", "--max_new_tokens", "6"]
    argv += ["--instruction", "", "--output", str(output), "--save_completions", "--backend", "transformers"]
    assert main(argv) == 0

    report = json.loads(output.read_text())
    assert report["n"] == 3
    assert report["sampling"] == {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 6}
    metrics = report["benchmarks"]["arith.jsonl"]
    assert metrics["num_problems"] == 3
    samples = metrics["samples"]
    assert [sample["solution"] for sample in samples] == ["0", "2", "4"]
    assert all(len(sample["completions"]) == 3 for sample in samples)
    # The reported numbers are the reward of the saved completions.
    rescored = [math_accuracy_reward(s["completions"], [s["solution"]] * 3) for s in samples]
    assert [s["scores"] for s in samples] == rescored
    assert metrics == {**summarize_scores(rescored), "samples": samples}

    table = capsys.readouterr().out
    assert "| Benchmark | Problems | avg@3 | pass@3 |" in table
    assert "| arith.jsonl | 3 |" in table
