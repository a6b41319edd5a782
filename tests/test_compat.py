"""The compatibility table (docs/trl-compatibility.md) cannot drift from the code."""

from pathlib import Path

import pytest
from trl import GRPOConfig

from ce_gppo_trl.compat import FIELDS, LOSS_TYPES, REFUSED, build, grpo_fields, render
from ce_gppo_trl.losses import COVARIANCE_SELECTIONS

DOCS = Path(__file__).parent.parent / "docs" / "trl-compatibility.md"


def test_every_grpo_config_field_has_a_row_and_probes_are_real_fields():
    fields = grpo_fields()
    assert len(fields) == 77 and "entropy_coef" in fields and "output_dir" not in fields  # TRL 1.16
    assert set(FIELDS) <= set(fields)
    for probe, _ in FIELDS.values():
        assert set(probe) <= set(fields)
        GRPOConfig(output_dir="unused", use_cpu=True, report_to="none", **probe)  # each probe is valid TRL
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows[: len(fields)]] == fields


def test_docs_page_is_the_generated_table():
    page = render()
    assert DOCS.read_text() == page, "regenerate: python -m ce_gppo_trl.compat > docs/trl-compatibility.md"
    # Issue 25: the entropy bonus, delta and GSPO's sequence level work with every loss type, ce_gppo included, but
    # Clip-Cov / KL-Cov, which select single tokens (no sequence level) and are verl's losses without TRL's cap.
    for name in ("entropy_coef", "use_adaptive_entropy", "delta", "importance_sampling_level"):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        cells = dict(zip(LOSS_TYPES, row.split(" | ")[2 : 2 + len(LOSS_TYPES)], strict=True))
        token_selecting = set(COVARIANCE_SELECTIONS) if name in ("delta", "importance_sampling_level") else set()
        assert {loss for loss, cell in cells.items() if cell != "yes"} == token_selecting, (name, cells)


@pytest.mark.parametrize(("probe", "fields", "why"), REFUSED, ids=[fields[0] for _, fields, _ in REFUSED])
def test_refused_combinations_raise_naming_both_fields(probe, fields, why):
    with pytest.raises(ValueError) as error:
        build(**probe)
    message = str(error.value)
    assert message.startswith(fields[0]) and fields[1] in message, message
