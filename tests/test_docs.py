"""The README and the docs site: a short README whose commands are the tested ones, and references generated from
the code in which every field, flag and metric has its own doc."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from ce_gppo_trl import CEGPPOConfig
from ce_gppo_trl.cli import CEGPPOScriptArguments
from ce_gppo_trl.evaluation import build_parser as eval_parser
from ce_gppo_trl.metrics import METRICS
from ce_gppo_trl.plotting import build_parser as plot_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_script("docs_hooks", ROOT / "docs" / "hooks.py")


def test_readme_is_a_short_page_with_the_tested_command_lines():
    assert len(README.splitlines()) <= 250
    # tests/test_first_hour.py replays the quickstart and .ci/run the test command: the README shows exactly these.
    assert (
        "\npip install torch==2.13.0 && pip install -e . && ce-gppo train --config configs/quickstart.yaml\n" in README
    )
    assert '\npip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest\n' in README
    assert 'python -m pip install --quiet -e ".[test,docs]"' in (ROOT / ".ci" / "run").read_text()


def test_readme_names_the_versions_ci_runs_at_both_ends_of_the_ranges():
    # .ci/oldest installs every dependency at its lower bound (.ci/lowest_constraints.py), .ci/run the newest pip
    # resolves; the README's line names both, and both must lie in the ranges pyproject.toml declares.
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    constraints = load_script("lowest_constraints", ROOT / ".ci" / "lowest_constraints.py")
    oldest, newest = re.search(
        r"the oldest, every dependency at its lower bound\s+\(([^)]*)\), and the newest that pip resolved on "
        r"\d{4}-\d\d-\d\d\s+\(([^)]*)\)",
        README,
    ).groups()

    def versions(text: str) -> dict[str, str]:
        return dict(item.rsplit(" ", 1) for item in re.split(r",\s+", " ".join(text.split())))

    declared = constraints.requirements([])
    lower = dict(map(constraints.lowest, declared))
    ranges = {constraints.lowest(r)[0]: SpecifierSet(constraints.REQUIREMENT.match(r)["spec"]) for r in declared}
    assert versions(oldest).keys() == versions(newest).keys() == lower.keys() - constraints.UNPINNED.keys()
    for name, version in versions(oldest).items():
        assert Version(version) == Version(lower[name]), name
    for name, version in versions(newest).items():
        assert version in ranges[name] and Version(version) >= Version(versions(oldest)[name]), name
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".ci/oldest" in ci and ".ci/wheel" in ci and ".ci/vllm" in ci


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
)
def test_relative_links_point_at_files(page):
    text = (ROOT / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        path = (ROOT / page).parent / target
        # The site serves benchmarks/ under docs/benchmarks/ (docs/hooks.py, on_files).
        served = ROOT / "benchmarks" / target.removeprefix("benchmarks/")
        assert path.exists() or (page.startswith("docs/") and target.startswith("benchmarks/") and served.exists()), (
            f"{page}: {target}"
        )


@pytest.mark.parametrize("cls", [CEGPPOConfig, CEGPPOScriptArguments])
def test_every_declared_field_has_help_and_is_in_the_reference(cls):
    fields = hooks.own_fields(cls)
    assert len(fields) >= 15
    reference = hooks.config_reference() if cls is CEGPPOConfig else hooks.script_arguments_reference()
    for item in fields:
        assert len(hooks.field_help(item)) >= 20, f"{cls.__name__}.{item.name} needs metadata={{'help': ...}}"
        assert f"| `{item.name}` |" in reference


def test_config_reference_groups_fields_with_their_defaults():
    reference = hooks.config_reference()
    assert "### Other fields" not in reference, "add the new fields' section to CONFIG_SECTIONS in docs/hooks.py"
    section = reference.split("### Closed-loop entropy controller")[1].split("###")[0]
    assert "| `entropy_controller_kp` | `float` | `0.5` |" in section
    assert "| `erc_low` | `float or None` | `None` |" in reference
    inherited = {item.name for item in dataclasses.fields(CEGPPOConfig)} - set(CEGPPOConfig.__annotations__)
    assert "learning_rate" in inherited and "`learning_rate`" not in reference  # TRL's own fields: TRL's docs


@pytest.mark.parametrize("parser", [eval_parser, plot_parser])
def test_every_command_line_flag_has_help(parser):
    actions = [action for action in parser()._actions if action.dest != "help"]
    assert actions
    for action in actions:
        assert action.help, f"{action.option_strings or action.dest} needs help="


def test_metrics_reference_lists_every_registered_metric():
    reference = hooks.metrics_reference()
    for metric in METRICS:
        assert f"`{metric.name}`" in reference
    assert "### `entropy_dynamics/*`" in reference and "### Kept from TRL" in reference


def test_every_generated_marker_in_the_docs_renders():
    pages = {path: path.read_text() for path in (ROOT / "docs").rglob("*.md")}
    markers = {name for text in pages.values() for name in hooks.MARKER.findall(text)}
    assert markers == set(hooks.REFERENCES)
    for path, text in pages.items():
        assert not hooks.MARKER.search(hooks.render(text)), path
    with pytest.raises(KeyError, match="no-such-table"):
        hooks.render("<!-- generated: no-such-table -->")
