"""The one parser of model references, used by the CLI, the registry, the resolver and training."""

from __future__ import annotations

import pytest

from tuneloop.errors import InvalidInput
from tuneloop.names import ModelRef, names_a_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("support@champion", ModelRef("support", alias="champion")),
        ("org/support-qlora@shadow.2", ModelRef("org/support-qlora", alias="shadow.2")),
        ("support:3", ModelRef("support", version=3)),
        ("support:v12", ModelRef("support", version=12)),
        ("ns:support:4", ModelRef("ns:support", version=4)),  # a version is what follows the last colon
    ],
)
def test_references_parse_and_print_back(text: str, expected: ModelRef) -> None:
    parsed = ModelRef.parse(text)
    assert parsed == expected and names_a_version(text)
    assert ModelRef.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["support", "@champion", "support@", "support@a b", "support:", "support:three", ":3"])
def test_a_bad_reference_is_refused_naming_the_field_and_the_forms(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ModelRef.parse(text, what="base")
    assert err.value.message == f"`base` must be NAME@ALIAS or NAME:VERSION, not `{text}`"
    assert "NAME@ALIAS" in (err.value.hint or "")
