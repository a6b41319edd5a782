"""`ce-gppo eval`: sample K answers per problem, score them with `math_accuracy_reward`, report avg@K and pass@K.

Generation uses vLLM when it is installed (and `--backend` allows), else transformers `generate`. A LoRA adapter
directory (with `adapter_config.json`) is accepted as `--model`. Decoding defaults to the papers' temperature 0.6,
top_p 0.95.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

from .builtin_models import resolve_model
from .data import DATASETS, DEFAULT_INSTRUCTION, load_math_dataset
from .optional import VLLM_INSTALL_HINT, require
from .rewards import math_accuracy_reward

__all__ = ["build_parser", "generate_completions", "main", "summarize_scores"]


def summarize_scores(scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """avg@K (mean score over all K samples of all problems) and pass@K (share of problems with a correct sample).

    Example:
        >>> summarize_scores([[1.0, 0.0], [0.0, 0.0]])
        {'num_problems': 2, 'avg@2': 0.25, 'pass@2': 0.5}
    """
    if not scores:
        raise ValueError("scores is empty: there are no problems to summarize")
    k = len(scores[0])
    if k == 0 or any(len(row) != k for row in scores):
        counts = sorted({len(row) for row in scores})
        raise ValueError(f"every problem needs the same number (> 0) of samples, got counts {counts}")
    total = sum(sum(row) for row in scores)
    return {
        "num_problems": len(scores),
        f"avg@{k}": total / (k * len(scores)),
        f"pass@{k}": sum(1 for row in scores if max(row) > 0) / len(scores),
    }


def _adapter_base(model: str) -> str | None:
    """The base model of a LoRA adapter directory, or None when `model` is a full model."""
    config_path = os.path.join(model, "adapter_config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as handle:
        return json.load(handle)["base_model_name_or_path"]


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except OSError:
        base = _adapter_base(model)
        if base is None:
            raise
        return AutoTokenizer.from_pretrained(base)


def _render(prompt: Any, tokenizer) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def generate_completions(
    model: str,
    prompts: Sequence[str],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int = 8,
    backend: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> list[list[str]]:
    """`n` sampled completions (decoded text, special tokens removed) for each rendered prompt.

    `backend`: "vllm", "transformers", or "auto" (vLLM when importable). `temperature=0` decodes greedily.
    """
    if backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"backend must be 'auto', 'vllm' or 'transformers', got {backend!r}")
    if backend == "vllm":
        require("vllm", "--backend vllm", VLLM_INSTALL_HINT)
    use_vllm = backend == "vllm" or (backend == "auto" and importlib.util.find_spec("vllm") is not None)
    if use_vllm:
        return _generate_vllm(model, prompts, n, max_new_tokens, temperature, top_p, seed)
    return _generate_transformers(model, prompts, n, max_new_tokens, temperature, top_p, batch_size, seed, progress)


def _generate_vllm(model, prompts, n, max_new_tokens, temperature, top_p, seed) -> list[list[str]]:
    from vllm import LLM, SamplingParams

    base = _adapter_base(model)
    llm = LLM(model=base or model, seed=seed, enable_lora=base is not None)
    lora_request = None
    if base is not None:
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest("adapter", 1, model)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
    outputs = llm.generate(list(prompts), params, lora_request=lora_request, use_tqdm=True)
    return [[choice.text for choice in output.outputs] for output in outputs]


def _generate_transformers(
    model, prompts, n, max_new_tokens, temperature, top_p, batch_size, seed, progress
) -> list[list[str]]:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    tokenizer = _load_tokenizer(model)
    tokenizer.padding_side = "left"  # generation continues each prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if _adapter_base(model) is not None:
        from peft import AutoPeftModelForCausalLM

        network = AutoPeftModelForCausalLM.from_pretrained(model)
    else:
        network = AutoModelForCausalLM.from_pretrained(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    network.to(device).eval()
    torch.manual_seed(seed)
    # top_k=0: no top-k cut, as in TRL's generation (GRPOConfig.top_k) and vLLM; transformers would default to 50.
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if temperature > 0
        else {"do_sample": False}
    )
    completions: list[list[str]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="Generating", disable=not progress):
        batch = list(prompts[start : start + batch_size])
        # Rendered chat prompts already start with BOS; plain prompts need the tokenizer to add it.
        has_bos = tokenizer.bos_token is not None and batch[0].startswith(tokenizer.bos_token)
        inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not has_bos).to(device)
        with torch.inference_mode():
            output = network.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        completions.extend(texts[index * n : (index + 1) * n] for index in range(len(batch)))
    return completions


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `ce-gppo eval`."""
    parser = argparse.ArgumentParser(
        prog="ce-gppo eval",
        description="Sample K answers per problem and report avg@K / pass@K per benchmark.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="Model directory, hub id, LoRA adapter directory, or a builtin model (builtin:toy, "
        "builtin:smollm2-135m-instruct; built once into $CE_GPPO_CACHE).",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        nargs="+",
        help=f"Benchmarks: names ({', '.join(DATASETS)}), hub ids, or local JSONL/JSON/Parquet/CSV files.",
    )
    parser.add_argument("--n", type=int, default=4, help="Samples per problem, K (default 4).")
    parser.add_argument("--max_new_tokens", type=int, default=2048, help="Tokens generated per sample (default 2048).")
    parser.add_argument("--temperature", type=float, default=0.6, help="Sampling temperature (default 0.6).")
    parser.add_argument("--top_p", type=float, default=0.95, help="Nucleus sampling top_p (default 0.95).")
    parser.add_argument("--output", default="results.json", help="Where to write the JSON results.")
    parser.add_argument(
        "--instruction",
        default=DEFAULT_INSTRUCTION,
        help="Appended to each problem, or a template with {problem}; '' for the bare problem.",
    )
    parser.add_argument("--split", default=None, help="Dataset split (default: the benchmark's own, else train).")
    parser.add_argument("--adapter", default=None, help="Dataset adapter (see ce_gppo_trl.data.ADAPTERS).")
    parser.add_argument("--question_column", default=None, help="Question column for other layouts.")
    parser.add_argument("--answer_column", default=None, help="Answer column for other layouts.")
    parser.add_argument("--num_examples", type=int, default=None, help="Evaluate only the first N problems.")
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts per generate call (transformers).")
    parser.add_argument(
        "--backend",
        choices=["auto", "vllm", "transformers"],
        default="auto",
        help="Generation backend (auto: vLLM when installed, else transformers generate).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed (default 0).")
    parser.add_argument("--save_completions", action="store_true", help="Also write every completion and score.")
    return parser


def _markdown_table(results: dict[str, dict[str, float]], n: int) -> str:
    lines = [f"| Benchmark | Problems | avg@{n} | pass@{n} |", "|---|---:|---:|---:|"]
    for name, metrics in results.items():
        avg, passed = 100 * metrics[f"avg@{n}"], 100 * metrics[f"pass@{n}"]
        lines.append(f"| {name} | {metrics['num_problems']} | {avg:.1f} | {passed:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ce-gppo eval`; returns the exit code. Writes JSON to `--output`, prints a Markdown table."""
    args = build_parser().parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    args.model = resolve_model(args.model, None)
    tokenizer = _load_tokenizer(args.model)
    conversational = tokenizer.chat_template is not None
    report: dict[str, Any] = {
        "model": args.model,
        "n": args.n,
        "sampling": {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens},
        "instruction": args.instruction,
        "benchmarks": {},
    }
    datasets = {
        os.path.basename(name) if os.path.isfile(name) else name: load_math_dataset(
            name,
            split=args.split,
            adapter=args.adapter,
            question_column=args.question_column,
            answer_column=args.answer_column,
            instruction=args.instruction,
            conversational=conversational,
            num_examples=args.num_examples,
        )
        for name in args.dataset
    }
    # One generation call for all benchmarks: the model (or vLLM engine) is loaded once.
    prompts = [_render(prompt, tokenizer) for dataset in datasets.values() for prompt in dataset["prompt"]]
    completions = generate_completions(
        args.model,
        prompts,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        backend=args.backend,
        seed=args.seed,
    )
    offset = 0
    for name, dataset in datasets.items():
        samples_per_problem = completions[offset : offset + len(dataset)]
        offset += len(dataset)
        scores = [
            math_accuracy_reward(samples, [gold] * len(samples))
            for samples, gold in zip(samples_per_problem, dataset["solution"], strict=True)
        ]
        metrics: dict[str, Any] = summarize_scores(scores)
        if args.save_completions:
            metrics["samples"] = [
                {"question": question, "solution": gold, "completions": samples, "scores": row}
                for question, gold, samples, row in zip(
                    dataset["question"], dataset["solution"], samples_per_problem, scores, strict=True
                )
            ]
        report["benchmarks"][name] = metrics
    output_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(output_dir, exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(_markdown_table(report["benchmarks"], args.n))
    return 0
