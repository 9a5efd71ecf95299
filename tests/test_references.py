"""The FHIR id rule and literal references: what the proxy counts as naming a resource.

A rule that accepts a value with a trailing newline (``$`` matches before one) let
``Patient/p1%0A/$purge`` through validation to fail at the upstream call (a 500), and counted a
reference written ``Patient/p1`` plus a newline as the patient's.
"""

from __future__ import annotations

import pytest

from purgeproxy.fhir.references import is_valid_id, parse_reference, reference_forms

BASE = "http://upstream.test/fhir"


@pytest.mark.parametrize(("value", "valid"), [
    ("p1", True), ("a.b-C9", True), ("x" * 64, True),
    ("x" * 65, False), ("", False), ("p1\n", False), ("p1\r\n", False), ("p 1", False), ("p1/2", False),
])
def test_the_id_rule_is_the_whole_value(value: str, valid: bool) -> None:
    assert is_valid_id(value) is valid


@pytest.mark.parametrize(("reference", "key"), [
    ("Patient/p1", ("Patient", "p1")),
    (f"{BASE}/Patient/p1", ("Patient", "p1")),
    ("Patient/p1/_history/3", ("Patient", "p1")),
    ("Patient/p1\n", None),
    ("Patient/p1/_history/3\n", None),
    ("http://elsewhere.test/fhir/Patient/p1", None),
    ("patient/p1", None),
])
def test_a_reference_names_a_resource_only_in_a_form_read_whole(reference: str, key: tuple[str, str] | None) -> None:
    assert parse_reference(reference, BASE) == key


def test_every_form_searched_for_is_one_the_parser_reads_back() -> None:
    forms = reference_forms(("Patient", "p1"), BASE, ["3", "bad\n"])
    assert len(forms) == 4 and all(parse_reference(form, BASE) == ("Patient", "p1") for form in forms)
