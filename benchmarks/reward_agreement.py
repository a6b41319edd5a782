"""Agreement of `math_accuracy_reward` with the labels of public peer test suites.

Reads `tests/data/reward_peer_cases.jsonl` ((completion, gold, expected) cases transcribed from Math-Verify, lighteval,
TRL, open-r1 and AReaL tests; see `tests/data/README.md`), scores every case with this project's reward and with
math-verify called directly (`verify(parse(gold), parse(completion))`, default configs), and prints agreement rates,
false positives (a reward of 1 where the suite says wrong) and false negatives, overall and per answer form:

- `boxed`: the scored text (after the last `</think>`) has a `\\boxed{}` / `\\fbox{}`;
- `answer_line`: no box, but an "answer:" / "answer is" phrase;
- `unanchored`: neither (this project's reward scores these 0 by design).

"Anchored" is `boxed` + `answer_line`.

    python benchmarks/reward_agreement.py                      # table
    python benchmarks/reward_agreement.py --show disagreements  # also list the cases where the reward disagrees
    python benchmarks/reward_agreement.py --json agreement.json
    python benchmarks/reward_agreement.py --mutations           # also: wrong golds made by changing one digit

`--mutations` is a search for false positives beyond the suites' own wrong cases: every digit of the reduced gold of
each anchored case labelled correct is changed (d -> d+1 mod 10) in turn, and the mutants that the reward still pays
are listed. Not every listed mutant is a wrong answer (a digit in a variable name `x_{1}`, or in the prose of a gold
without a box, does not change the answer); each needs a look.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from math_verify import parse, verify

from ce_gppo_trl.rewards import extract_gold_answer, math_accuracy_reward

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "reward_peer_cases.jsonl"
ANCHORED_FORMS = ("boxed", "answer_line")


def load_cases(path: Path = DATA) -> list[dict[str, Any]]:
    """The peer cases, one dict per JSONL line."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def score_reward(cases: list[dict[str, Any]]) -> list[int]:
    """This project's reward on every case, one call for the whole batch (as TRL calls it)."""
    rewards = math_accuracy_reward([case["completion"] for case in cases], [case["gold"] for case in cases])
    return [int(reward > 0) for reward in rewards]


def score_math_verify(cases: list[dict[str, Any]]) -> list[int]:
    """math-verify called directly with its defaults on the raw gold and completion."""
    scores = []
    for case in cases:
        try:
            scores.append(int(verify(parse(case["gold"]), parse(case["completion"]))))
        except Exception:  # math-verify's own timeouts and errors count as "not verified"
            scores.append(0)
    return scores


def summarize(cases: list[dict[str, Any]], scores: list[int]) -> dict[str, dict[str, float]]:
    """Agreement, false positives and false negatives per subset ("all", "anchored" and each form)."""
    subsets = {"all": lambda case: True, "anchored": lambda case: case["form"] in ANCHORED_FORMS}
    for form in ("boxed", "answer_line", "unanchored"):
        subsets[form] = lambda case, form=form: case["form"] == form
    summary = {}
    for name, keep in subsets.items():
        pairs = [(case["expected"], score) for case, score in zip(cases, scores, strict=True) if keep(case)]
        agree = sum(expected == score for expected, score in pairs)
        summary[name] = {
            "cases": len(pairs),
            "agreement": agree / len(pairs) if pairs else float("nan"),
            "false_positives": sum(expected == 0 and score == 1 for expected, score in pairs),
            "false_negatives": sum(expected == 1 and score == 0 for expected, score in pairs),
        }
    return summary


def paid_gold_mutations(cases: list[dict[str, Any]]) -> tuple[int, list[tuple[dict[str, Any], str]]]:
    """(number of one-digit gold mutants of the anchored correct cases, the mutants the reward still pays)."""
    mutants = []
    for case in cases:
        if case["expected"] != 1 or case["form"] not in ANCHORED_FORMS:
            continue
        gold = extract_gold_answer(case["gold"])
        for index, char in enumerate(gold):
            if char.isdigit():
                mutants.append((case, gold[:index] + str((int(char) + 1) % 10) + gold[index + 1 :]))
    rewards = math_accuracy_reward([case["completion"] for case, _ in mutants], [gold for _, gold in mutants])
    return len(mutants), [mutant for mutant, reward in zip(mutants, rewards, strict=True) if reward > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--show", choices=["none", "disagreements", "false-positives"], default="none")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this file")
    parser.add_argument("--mutations", action="store_true", help="also list paid one-digit gold mutants")
    args = parser.parse_args()

    cases = load_cases(args.data)
    start = time.perf_counter()
    reward = score_reward(cases)
    reward_seconds = time.perf_counter() - start
    direct = score_math_verify(cases)
    results = {"reward": summarize(cases, reward), "math_verify": summarize(cases, direct)}
    results["reward_seconds"] = reward_seconds

    print(f"{len(cases)} cases from {args.data.name}; reward scored them in {reward_seconds:.1f} s\n")
    print("| subset | cases | reward agreement | reward FP | reward FN | math-verify agreement | math-verify FP |")
    print("|---|---|---|---|---|---|---|")
    for name, ours in results["reward"].items():
        theirs = results["math_verify"][name]
        print(
            f"| {name} | {ours['cases']} | {ours['agreement']:.3f} | {ours['false_positives']} | "
            f"{ours['false_negatives']} | {theirs['agreement']:.3f} | {theirs['false_positives']} |"
        )
    if args.show != "none":
        print()
        for case, score, mv in zip(cases, reward, direct, strict=True):
            wrong = score != case["expected"]
            if (args.show == "disagreements" and wrong) or (
                args.show == "false-positives" and score > case["expected"]
            ):
                source = case["source"]
                print(
                    f"#{case['id']} [{case['form']}] expected {case['expected']} reward {score} math-verify {mv} "
                    f"({source['repo']} {source['file']}::{source['test']})\n"
                    f"  gold: {case['gold'][-200:]!r}\n  completion: {case['completion'][-300:]!r}"
                )
    if args.mutations:
        total, paid = paid_gold_mutations(cases)
        results["gold_mutations"] = {
            "mutants": total,
            "paid": len(paid),
            "paid_case_ids": sorted({c["id"] for c, _ in paid}),
        }
        print(
            f"\n{len(paid)} of {total} one-digit gold mutants are still paid "
            f"(cases {results['gold_mutations']['paid_case_ids']})"
        )
        for case, gold in paid:
            print(f"#{case['id']} mutated gold {gold[-80:]!r}; completion {case['completion'][-80:]!r}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
