"""What a resource name is (AIP-122): `calls/{call}`, `lines/{line}`, `providers/{provider}`,
`providers/{provider}/links/{link}` — how each is built and parsed, and what an id may be."""

from __future__ import annotations

import re
import uuid

# AIP-122 resource ids: lower case, DNS-safe, at most 63 characters, starting with a letter.
_ID = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
# Server-generated call ids are UUIDs, which may start with a digit.
_CALL_ID = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_CALL = re.compile(rf"calls/({_CALL_ID})")
_LINE = re.compile(rf"lines/({_CALL_ID})")
_PROVIDER = re.compile(rf"providers/({_ID})")
_LINK = re.compile(rf"providers/({_ID})/links/({_ID})")
USER_CALL_ID = re.compile(_ID)


def call_name(call_id: str) -> str:
    return f"calls/{call_id}"


def new_call_id() -> str:
    return str(uuid.uuid4())


def line_name(line_id: str) -> str:
    return f"lines/{line_id}"


def new_line_id() -> str:
    return str(uuid.uuid4())


def parse_line(name: str) -> str | None:
    """The {line} of `lines/{line}` (a user's id or a server UUID), or None."""
    match = _LINE.fullmatch(name)
    return match.group(1) if match else None


def provider_name(provider_id: str) -> str:
    return f"providers/{provider_id}"


def link_name(provider_id: str, link_id: str) -> str:
    return f"providers/{provider_id}/links/{link_id}"


def parse_call(name: str) -> str | None:
    """The {call} of `calls/{call}`, or None if `name` is not a call name."""
    match = _CALL.fullmatch(name)
    return match.group(1) if match else None


def parse_provider(name: str) -> str | None:
    match = _PROVIDER.fullmatch(name)
    return match.group(1) if match else None


def parse_link(name: str) -> tuple[str, str] | None:
    match = _LINK.fullmatch(name)
    return (match.group(1), match.group(2)) if match else None


def is_resource_id(value: str) -> bool:
    """Whether `value` is a valid AIP-122 resource id: a provider's or a link's {id}."""
    return re.fullmatch(_ID, value) is not None
