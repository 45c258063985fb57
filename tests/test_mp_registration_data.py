"""The registration's signed <Data> text is found by two finds (registration.signed_data, issue 20): the same text
as the regex it replaced, `<Data\\b.*?</Data>` (DOTALL), kept here as the oracle, for every body."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmglab.services.management_point.registration import signed_data

ORACLE = re.compile(r"<Data\b.*?</Data>", re.DOTALL)


def oracle(body: str) -> str | None:
    found = ORACLE.search(body)
    return found.group(0) if found is not None else None


BODIES = [
    '<ClientRegistrationRequest><Data HashAlgorithm="1.2.840.113549.1.1.11">x\r\ny</Data>'
    "<Signature><SignatureValue>AB</SignatureValue></Signature></ClientRegistrationRequest>",
    "<Data>a</Data><Data>b</Data>",
    "<DataX>no</DataX><Data_>no</Data_><Data>yes</Data>",
    "<Dataé>no</Dataé><Data\u0663>no</Data\u0663><Data\t>yes</Data>",
    "<Data a><Data b></Data>",
    "<Data</Data>",
    "<Data",
    "<Data>unclosed",
    "<DataX><Data/></Data>",
    "</Data><Data>",
    "",
    "no data at all",
]


@pytest.mark.parametrize("body", BODIES)
def test_signed_data_is_what_the_regex_found(body: str) -> None:
    assert signed_data(body) == oracle(body)


PIECES = st.sampled_from(["<Data", "</Data>", "<DataX", "_", "é", "\u0663", " ", ">", "<", "\n", "a", "/", "Data"])


@settings(max_examples=500, deadline=None)
@given(body=st.lists(st.one_of(PIECES, st.text(max_size=3)), max_size=12).map("".join))
def test_signed_data_is_what_the_regex_finds_in_any_body(body: str) -> None:
    assert signed_data(body) == oracle(body)
