"""Resource names (names.py, conformance/SPEC.md REQ-4): round trips and the edges of the id grammar
— 1 to 63 characters of [a-z0-9-], a letter first (a server UUID may start with a digit), never
ending with `-`."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callqos.server import names

ids = st.from_regex(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
call_ids = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


@given(call_ids)
def test_a_call_name_round_trips(call_id: str) -> None:
    assert names.parse_call(names.call_name(call_id)) == call_id


@given(ids)
def test_provider_names_and_user_call_ids_round_trip(value: str) -> None:
    assert names.parse_provider(names.provider_name(value)) == value
    assert names.is_resource_id(value)
    assert names.USER_CALL_ID.fullmatch(value)
    assert names.parse_call(names.call_name(value)) == value


@given(ids, ids)
def test_a_link_name_round_trips(provider: str, link: str) -> None:
    assert names.parse_link(names.link_name(provider, link)) == (provider, link)


def test_server_call_ids_are_uuids_that_parse_but_are_not_user_ids() -> None:
    made = {names.new_call_id() for _ in range(100)}
    assert len(made) == 100
    for call_id in made:
        assert str(uuid.UUID(call_id)) == call_id
        assert names.parse_call(names.call_name(call_id)) == call_id
    # A UUID starting with a digit is the server's, never a caller's call_id.
    assert not names.USER_CALL_ID.fullmatch("0" + names.new_call_id()[1:])


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("a-b", True),
        ("a--b", True),
        ("a-", False),
        ("-a", False),
        ("1a", False),
        ("", False),
        ("A", False),
        ("a_b", False),
        ("a.b", False),
        ("a b", False),
        ("ä", False),
        ("a\n", False),
    ],
)
def test_the_id_grammar_at_its_edges(value: str, valid: bool) -> None:
    assert bool(names.USER_CALL_ID.fullmatch(value)) is valid
    assert names.is_resource_id(value) is valid
    assert (names.parse_provider(f"providers/{value}") is not None) is valid
    assert (names.parse_link(f"providers/p/links/{value}") is not None) is valid
    assert (names.parse_link(f"providers/{value}/links/l") is not None) is valid


@pytest.mark.parametrize(
    "name",
    [
        "calls/",
        "calls/a/b",
        "calls//a",
        "/calls/a",
        "calls/a/",
        "call/a",
        "Calls/a",
        "calls/" + "a" * 64,
        "calls/a-",
        "providers/a",
        "",
    ],
)
def test_what_is_not_a_call_name(name: str) -> None:
    assert names.parse_call(name) is None


def test_call_names_accept_a_digit_first_but_provider_names_do_not() -> None:
    assert names.parse_call("calls/0abc") == "0abc"
    assert names.parse_provider("providers/0abc") is None
    assert names.parse_link("providers/p/links") is None
    assert names.parse_link("providers/p/links/l/x") is None
