"""MkDocs hooks: the generated references and the benchmark pages.

- `<!-- generated: NAME -->` in a page is replaced by `REFERENCES[NAME]()`: the configuration reference from the
  field metadata of `CEGPPOConfig` and `CEGPPOScriptArguments`, the `ce-gppo eval` / `ce-gppo plot` flags from their
  argument parsers, and the metrics reference from `ce_gppo_trl.metrics.METRICS`. Nothing is kept by hand, so the
  pages cannot drift from the code; `tests/test_docs.py` fails when a field or a metric has no doc.
- `benchmarks/README.md`, `benchmarks/RESULTS.md` and their plots are served as `benchmarks/...` pages, so the
  site links to the study results as they are in the repository (one copy).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- generated: ([\w-]+) -->")

# Config sections, in page order: (title, rule on the field name). The first matching section takes a field; a field
# none matches lands in "Other fields" (still documented, since the test checks every field's help).
CONFIG_SECTIONS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("Renamed fields (old names, still accepted with a FutureWarning)", lambda n: n in _renamed_fields()),
    (
        "Loss: CE-GPPO, dual clip, ERC",
        lambda n: n in {"loss_type", "clip_ratio_c"} or n.startswith(("ce_gppo_", "erc_")),
    ),
    ("Clip-Cov and KL-Cov", lambda n: n.startswith(("clip_cov_", "kl_cov_")) or n == "ppo_kl_coef"),
    (
        "Probability-dependent clip bounds",
        lambda n: n.startswith("prob_clip") and not n.startswith("prob_clip_schedule"),
    ),
    ("Clip-bound schedules: ID, DID, OD", lambda n: n.startswith(("prob_clip_schedule", "od_"))),
    ("Beta schedules", lambda n: n.startswith(("beta1_", "beta2_"))),
    ("Closed-loop entropy controller", lambda n: n.startswith("entropy_controller")),
    ("Diagnostics", lambda n: n == "entropy_diagnostics"),
    ("Entropy attribution", lambda n: n == "entropy_attribution_steps"),
    ("vLLM", lambda n: n in ("vllm_logp_difference_bound", "vllm_lora_sync")),
    (
        "The authors' training scripts",
        lambda n: (
            n in {"positive_nll_coef", "positive_nll_reward", "max_prompt_length", "warmup_rollout_batches"}
            or n.startswith("dynamic_sampling")
        ),
    ),
    ("TRL fields with a different default", lambda n: n == "gradient_checkpointing"),
)


def _renamed_fields() -> dict[str, str]:
    from ce_gppo_trl.config import RENAMED_FIELDS

    return RENAMED_FIELDS


def _cell(text: Any) -> str:
    """Markdown table cell: one line, pipes escaped outside code spans (Python-Markdown's tables keep a pipe inside
    backticks, and would show the backslash of an escaped one)."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def _default(item: dataclasses.Field) -> str:
    if item.default is not dataclasses.MISSING:
        return f"`{item.default!r}`"
    if item.default_factory is not dataclasses.MISSING:
        return f"`{item.default_factory()!r}`"
    return "required"


def own_fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields declared in `cls` itself (new, or redeclared from a parent), in declaration order."""
    declared = cls.__dict__.get("__annotations__", {})
    return [item for item in dataclasses.fields(cls) if item.name in declared]


def field_help(item: dataclasses.Field) -> str:
    return str(item.metadata.get("help", "")).strip()


def field_table(items: Iterable[dataclasses.Field], cls: type) -> str:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for item in items:
        # The annotation as declared (a string: `from __future__ import annotations`), not `item.type`, which
        # transformers' HfArgumentParser replaces in place (`float | None` -> `float`) once a parser is built.
        declared = next(
            k.__dict__["__annotations__"] for k in cls.__mro__ if item.name in k.__dict__.get("__annotations__", {})
        )
        kind = str(declared[item.name]).replace(" | None", " or None")
        rows.append(f"| `{item.name}` | `{_cell(kind)}` | {_cell(_default(item))} | {_cell(field_help(item))} |")
    return "\n".join(rows)


def config_reference() -> str:
    """Tables of every field `CEGPPOConfig` declares, grouped by `CONFIG_SECTIONS`."""
    from ce_gppo_trl import CEGPPOConfig

    fields = own_fields(CEGPPOConfig)
    sections: dict[str, list[dataclasses.Field]] = {title: [] for title, _ in CONFIG_SECTIONS}
    sections["Other fields"] = []
    for item in fields:
        title = next((title for title, rule in CONFIG_SECTIONS if rule(item.name)), "Other fields")
        sections[title].append(item)
    parts = [f"### {title}\n\n{field_table(items, CEGPPOConfig)}" for title, items in sections.items() if items]
    return "\n\n".join(parts)


def script_arguments_reference() -> str:
    """Table of the data and reward fields of recipes (`CEGPPOScriptArguments`)."""
    from ce_gppo_trl.cli import CEGPPOScriptArguments

    return field_table(own_fields(CEGPPOScriptArguments), CEGPPOScriptArguments)


def parser_table(parser: argparse.ArgumentParser) -> str:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in parser._actions:  # argparse has no public list of its arguments
        if isinstance(action, argparse._HelpAction):
            continue
        flag = ", ".join(action.option_strings) or action.dest
        if action.required:
            default = "required"
        elif isinstance(action, argparse._StoreTrueAction):
            default = "off"
        else:
            default = f"`{action.default!r}`"
        meaning = action.help or ""
        if action.choices:
            meaning = f"{meaning} One of: {', '.join(f'`{choice}`' for choice in action.choices)}.".strip()
        rows.append(f"| `{_cell(flag)}` | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(rows)


def eval_reference() -> str:
    from ce_gppo_trl.evaluation import build_parser

    return parser_table(build_parser())


def plot_reference() -> str:
    from ce_gppo_trl import plotting

    return parser_table(plotting.build_parser())


def metrics_reference() -> str:
    """One table per metric prefix from `METRICS`, then TRL's own metric families."""
    from ce_gppo_trl.metrics import METRICS, TRL_METRICS

    groups: dict[str, list[Any]] = {}
    for metric in METRICS:
        groups.setdefault(metric.group, []).append(metric)
    parts = []
    for group, metrics in groups.items():
        rows = ["| metric | logged when | meaning |", "|---|---|---|"]
        for metric in metrics:
            name = metric.name
            if metric.values:
                choices = "; ".join(f"`{key}`: {', '.join(values)}" for key, values in metric.values.items())
                name = f"`{name}` ({choices})"
            else:
                name = f"`{name}`"
            rows.append(f"| {_cell(name)} | {_cell(metric.when)} | {_cell(metric.doc)} |")
        title = f"`{group}/*`" if "/" in metrics[0].name else f"`{group}`"
        parts.append(f"### {title}\n\n" + "\n".join(rows))
    trl = ["| names (regular expression) | what |", "|---|---|"]
    trl += [f"| `{_cell(pattern)}` | {_cell(meaning)} |" for pattern, meaning in TRL_METRICS.items()]
    parts.append("### Kept from TRL\n\n" + "\n".join(trl))
    return "\n\n".join(parts)


REFERENCES: dict[str, Callable[[], str]] = {
    "config-reference": config_reference,
    "script-arguments": script_arguments_reference,
    "eval-flags": eval_reference,
    "plot-flags": plot_reference,
    "metrics-reference": metrics_reference,
}


def render(markdown: str) -> str:
    """`markdown` with every `<!-- generated: NAME -->` marker replaced; an unknown NAME is an error."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in REFERENCES:
            raise KeyError(f"unknown generated reference {name!r}; known: {sorted(REFERENCES)}")
        return REFERENCES[name]()

    return MARKER.sub(replace, markdown)


# MkDocs hook entry points.
def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return render(markdown)


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "benchmarks").iterdir()):
        if path.suffix in {".md", ".png"}:
            files.append(File.generated(config, f"benchmarks/{path.name}", abs_src_path=str(path)))
    return files
