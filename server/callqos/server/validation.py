"""What a valid request is — every rule about a request's content, checked here and only here,
before the call manager or any provider sees it.

That covers the caller's principal (request metadata), resource names, the FLOWSPEC rules of a
new call and of a renegotiation (from the Winsock 2 FLOWSPEC remarks and RFC 2212/2215), service
levels, request ids and etags, page sizes and page tokens (AIP-158), the ListCalls filter (an
AIP-160 subset), the WatchEvents filter, and UpdateLink's update_mask and link name.

Each check names the field it is about (its path in the request, or the metadata key) so that a
client gets one google.rpc.BadRequest field violation per bad field (conformance/SPEC.md FLOW-1,
FLOW-2). The `*_violations` functions list what is wrong; the others raise INVALID_ARGUMENT with
all of it, or return the request part parsed (a page cursor, a filter), so that what passed
validation is what is used.

Every rule is a clause of conformance/SPEC.md — FLOW-3 … FLOW-19 for flowspecs, REQ-1 … REQ-6 for
the other fields — which names its source: the Winsock 2 FLOWSPEC remarks, RFC 2212, or the proto
comments.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from callqos.server import names
from callqos.server.errors import FieldViolation, invalid
from callqos.server.qos import NOTIFICATION_ONLY, RESERVING, SENTINELS
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc

ST = flowspec_pb2.ServiceType
_KNOWN_SERVICE_TYPES = frozenset(ST.values())
_KNOWN_LEVELS = frozenset(call_pb2.ServiceLevel.values())

# A provider's own check of its provider_specific bytes (Provider.validate_provider_specific):
# the problems it finds, empty when the bytes are fine.
ProviderSpecificCheck = Callable[[bytes], list[str]]

MAX_DESTINATION = 256
MAX_REQUEST_ID = 64
MAX_ETAG = 128
MAX_PROVIDER_SPECIFIC = 4096
MAX_FILTER = 512
MAX_PRINCIPAL = 128
# Repeated fields are bounded before anything looks at their entries, so what a request costs to
# validate (and to refuse) does not grow with what a client chose to send (SPEC.md REQ-7).
MAX_WATCH_TYPES = 32  # WatchEvents.types: more entries than there are event types is a mistake
MAX_MASK_PATHS = 8  # UpdateLink.update_mask.paths
MAX_PAGE_TOKEN = 512  # the tokens this server issues are far shorter
# Page sizes (AIP-158): 0 asks for the default; more than the maximum is cut to it.
DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_PROVIDER_PAGE = 100
_PRINCIPAL = re.compile(rf"[\x21-\x7e]{{1,{MAX_PRINCIPAL}}}")
_PRINTABLE = re.compile(r"[\x20-\x7e\u00a0-\uffff]+")
_REQUEST_ID = re.compile(r"[\x21-\x7e]+")

_NUMERIC_FIELDS = (
    "token_rate_bytes_per_second",
    "token_bucket_size_bytes",
    "peak_bandwidth_bytes_per_second",
    "latency_microseconds",
    "delay_variation_microseconds",
    "max_sdu_size_bytes",
    "minimum_policed_size_bytes",
)


def flowspec_violations(
    spec: flowspec_pb2.FlowSpec,
    path: str,
    *,
    sending: bool,
    renegotiation: bool,
    max_sdu_size: int = 0,
) -> Iterator[FieldViolation]:
    """Violations of one direction's FLOWSPEC rules."""
    stype = spec.service_type
    if stype == ST.SERVICE_TYPE_UNSPECIFIED:
        yield FieldViolation(f"{path}.service_type", "required: the service type may not be defaulted")
        return
    if stype not in _KNOWN_SERVICE_TYPES:
        yield FieldViolation(f"{path}.service_type", f"unknown service type {stype}")
        return
    if stype in NOTIFICATION_ONLY:
        yield FieldViolation(f"{path}.service_type", f"{ST.Name(stype)} is a notification, not a request")
        return
    if stype == ST.SERVICE_TYPE_NO_CHANGE:
        if not renegotiation:
            yield FieldViolation(f"{path}.service_type", "NO_CHANGE is only valid when renegotiating")
        return  # the rest of a NO_CHANGE flowspec is ignored
    for field in _NUMERIC_FIELDS:
        if spec.HasField(field) and getattr(spec, field) in SENTINELS:
            yield FieldViolation(
                f"{path}.{field}",
                "raw Winsock sentinel: leave the field out for QOS_NOT_SPECIFIED"
                + (", set peak_bandwidth_unbounded for POSITIVE_INFINITY_RATE" if "peak" in field else ""),
            )
    has_rate = spec.HasField("token_rate_bytes_per_second")
    rate = spec.token_rate_bytes_per_second
    if has_rate and rate == 0:
        yield FieldViolation(f"{path}.token_rate_bytes_per_second", "must not be 0")
    elif not has_rate and stype in RESERVING and (sending or stype == ST.SERVICE_TYPE_GUARANTEED):
        yield FieldViolation(
            f"{path}.token_rate_bytes_per_second",
            "required in a sending flowspec, and in a GUARANTEED receiving flowspec",
        )
    if spec.HasField("peak_bandwidth_bytes_per_second"):
        if spec.peak_bandwidth_unbounded:
            yield FieldViolation(
                f"{path}.peak_bandwidth_bytes_per_second",
                "must be left out when peak_bandwidth_unbounded is set",
            )
        elif has_rate and spec.peak_bandwidth_bytes_per_second < rate:
            yield FieldViolation(f"{path}.peak_bandwidth_bytes_per_second", "must be >= token_rate_bytes_per_second")
    if spec.HasField("token_bucket_size_bytes") and spec.token_bucket_size_bytes == 0 and stype in RESERVING:
        yield FieldViolation(f"{path}.token_bucket_size_bytes", "must be > 0 (RFC 2212: b positive)")
    if spec.HasField("max_sdu_size_bytes"):
        if spec.max_sdu_size_bytes == 0:
            yield FieldViolation(f"{path}.max_sdu_size_bytes", "must be > 0 (RFC 2212: M positive)")
        elif max_sdu_size and spec.max_sdu_size_bytes > max_sdu_size and stype in RESERVING:
            yield FieldViolation(
                f"{path}.max_sdu_size_bytes",
                f"exceeds the provider's path MTU of {max_sdu_size} bytes (RFC 2212/2211)",
            )
    if spec.HasField("minimum_policed_size_bytes"):
        if spec.minimum_policed_size_bytes == 0:
            yield FieldViolation(f"{path}.minimum_policed_size_bytes", "must be > 0 (RSVP semantics)")
        elif spec.HasField("max_sdu_size_bytes") and spec.minimum_policed_size_bytes > spec.max_sdu_size_bytes:
            yield FieldViolation(
                f"{path}.minimum_policed_size_bytes", "must be <= max_sdu_size_bytes (RFC 2212: m <= M)"
            )


def qos_violations(
    qos: flowspec_pb2.QosSpec,
    path: str,
    *,
    renegotiation: bool,
    caps: provider_pb2.ProviderCapabilities | None,
    provider_specific: ProviderSpecificCheck | None = None,
) -> Iterator[FieldViolation]:
    """Violations of a QoS. An absent direction is no violation: `absent_directions` gives it
    its meaning (FLOW-20) once the request is valid."""
    mtu = caps.max_sdu_size_bytes if caps is not None else 0
    for direction, sending in (("sending", True), ("receiving", False)):
        if not qos.HasField(direction):
            continue
        yield from flowspec_violations(
            getattr(qos, direction),
            f"{path}.{direction}",
            sending=sending,
            renegotiation=renegotiation,
            max_sdu_size=mtu,
        )
    if len(qos.provider_specific) > MAX_PROVIDER_SPECIFIC:
        yield FieldViolation(f"{path}.provider_specific", f"at most {MAX_PROVIDER_SPECIFIC} bytes")
    elif provider_specific is not None and qos.provider_specific:
        # Empty bytes are not checked: on renegotiation they keep the call's current ones, and
        # on a new call they mean "nothing provider-specific".
        for problem in provider_specific(qos.provider_specific):
            yield FieldViolation(f"{path}.provider_specific", problem)


def level_violations(level: int, path: str) -> Iterator[FieldViolation]:
    if level not in _KNOWN_LEVELS:
        yield FieldViolation(path, f"unknown service level {level}")


def request_id_violations(request_id: str, path: str = "request_id") -> Iterator[FieldViolation]:
    if request_id and (len(request_id) > MAX_REQUEST_ID or not _REQUEST_ID.fullmatch(request_id)):
        yield FieldViolation(path, f"at most {MAX_REQUEST_ID} printable ASCII characters")


def etag_violations(etag: str) -> Iterator[FieldViolation]:
    if len(etag) > MAX_ETAG:
        yield FieldViolation("etag", f"at most {MAX_ETAG} characters")


def call_name_violations(name: str, path: str = "name") -> Iterator[FieldViolation]:
    if names.parse_call(name) is None:
        yield FieldViolation(path, "must be calls/{call}")


def create_violations(
    request: svc.CreateCallRequest,
    caps: provider_pb2.ProviderCapabilities | None,
    provider_specific: ProviderSpecificCheck | None = None,
) -> list[FieldViolation]:
    """Every violation in a CreateCallRequest. `caps` are those of the provider it names (None
    when the provider is unknown: that is reported as NOT_FOUND after validation), and
    `provider_specific` its check of the provider-specific bytes."""
    call = request.call
    found: list[FieldViolation] = []
    if not request.HasField("call"):
        return [FieldViolation("call", "required")]
    if not call.destination:
        found.append(FieldViolation("call.destination", "required"))
    elif len(call.destination) > MAX_DESTINATION or not _PRINTABLE.fullmatch(call.destination):
        found.append(FieldViolation("call.destination", f"1-{MAX_DESTINATION} printable characters"))
    if call.provider and names.parse_provider(call.provider) is None:
        found.append(FieldViolation("call.provider", "must be providers/{provider}"))
    found.extend(level_violations(call.service_level, "call.service_level"))
    found.extend(
        qos_violations(
            call.requested_qos,
            "call.requested_qos",
            renegotiation=False,
            caps=caps,
            provider_specific=provider_specific,
        )
    )
    if request.call_id and not names.USER_CALL_ID.fullmatch(request.call_id):
        found.append(
            FieldViolation("call_id", "1-63 characters of [a-z0-9-], starting with a letter, not ending with -")
        )
    found.extend(request_id_violations(request.request_id))
    return found


def renegotiate_violations(
    request: svc.RenegotiateCallRequest,
    caps: provider_pb2.ProviderCapabilities | None,
    provider_specific: ProviderSpecificCheck | None = None,
) -> list[FieldViolation]:
    found = list(call_name_violations(request.name))
    found.extend(
        qos_violations(
            request.qos,
            "qos",
            renegotiation=True,
            caps=caps,
            provider_specific=provider_specific,
        )
    )
    found.extend(level_violations(request.service_level, "service_level"))
    found.extend(etag_violations(request.etag))
    found.extend(request_id_violations(request.request_id))
    return found


def page_size_violations(page_size: int) -> Iterator[FieldViolation]:
    if page_size < 0:
        yield FieldViolation("page_size", "must not be negative")


def check(violations: Iterable[FieldViolation]) -> None:
    """INVALID_ARGUMENT naming every violation (up to errors.MAX_VIOLATIONS), if there is any.
    The violations are consumed lazily: a generator is never run past what the status can hold."""
    found = iter(violations)
    first = next(found, None)
    if first is not None:
        raise invalid(itertools.chain((first,), found))


# -- the caller ---------------------------------------------------------------------------------
def principal(value: str | bytes, key: str) -> str:
    """The principal a caller sent in request metadata `key`: 1-128 printable ASCII characters."""
    if not isinstance(value, str) or not _PRINCIPAL.fullmatch(value):
        raise invalid([FieldViolation(key, f"1-{MAX_PRINCIPAL} printable ASCII characters, no spaces")])
    return value


# -- names ----------------------------------------------------------------------------------------
def call_name(name: str, path: str = "name") -> str:
    check(call_name_violations(name, path))
    return name


def provider_name(name: str, path: str = "name") -> str:
    """`providers/{provider}`."""
    if names.parse_provider(name) is None:
        raise invalid([FieldViolation(path, "must be providers/{provider}")])
    return name


# -- calls ----------------------------------------------------------------------------------------
def create(
    request: svc.CreateCallRequest,
    caps: provider_pb2.ProviderCapabilities | None,
    provider_specific: ProviderSpecificCheck | None = None,
) -> None:
    """A CreateCallRequest, against the capabilities of the provider it names (None when that
    provider is unknown: the caller learns that as NOT_FOUND, once the request is valid) and that
    provider's own check of its provider-specific bytes. An absent direction is filled in as
    BEST_EFFORT (FLOW-20), so that the call records what it asked for."""
    check(create_violations(request, caps, provider_specific))
    absent_directions(request.call.requested_qos, ST.SERVICE_TYPE_BEST_EFFORT)


def renegotiation(
    request: svc.RenegotiateCallRequest,
    caps: provider_pb2.ProviderCapabilities | None,
    provider_specific: ProviderSpecificCheck | None = None,
) -> None:
    """A RenegotiateCallRequest: first on its own (`caps` None), then, once the call is found,
    against the capabilities of the call's provider and its provider-specific check (which can
    only add the provider's limits). An absent direction is filled in as NO_CHANGE (FLOW-20)."""
    check(renegotiate_violations(request, caps, provider_specific))
    absent_directions(request.qos, ST.SERVICE_TYPE_NO_CHANGE)


def absent_directions(qos: flowspec_pb2.QosSpec, meaning: int) -> None:
    """The rule for a direction a request leaves out (conformance/SPEC.md FLOW-20): in a new call
    it is BEST_EFFORT with nothing specified — what TAPI does for a call whose LINECALLPARAMS carry
    no flowspec for a direction, and safe at NEEDED, since best effort reserves nothing and is
    always admitted (GRANT-2); in a renegotiation it is NO_CHANGE, kept as it is."""
    for direction in ("sending", "receiving"):
        if not qos.HasField(direction):
            getattr(qos, direction).service_type = meaning


def drop(request: svc.DropCallRequest) -> None:
    check([*call_name_violations(request.name), *etag_violations(request.etag)])


# -- pages (AIP-158) ------------------------------------------------------------------------------
def page_size(requested: int, default: int, maximum: int) -> int:
    """The number of items to return: `default` for 0, never more than `maximum`."""
    check(page_size_violations(requested))
    return min(requested or default, maximum)


def page_token(cursor: int, scope: str) -> str:
    """The next_page_token that resumes at `cursor` ('' when there is no next page). `scope`
    identifies the other parameters of the request: the token is only valid with the same."""
    if not cursor:
        return ""
    raw = json.dumps({"c": cursor, "s": scope}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_cursor(token: str, scope: str) -> int:
    """The cursor of a page_token this server issued with the same `scope` (0 for none)."""
    if not token:
        return 0
    if len(token) > MAX_PAGE_TOKEN:
        raise invalid([FieldViolation("page_token", "not a token this server issued")])
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor, token_scope = int(raw["c"]), str(raw["s"])
    except (ValueError, KeyError, TypeError) as exc:
        raise invalid([FieldViolation("page_token", "not a token this server issued")]) from exc
    if token_scope != scope or cursor <= 0:
        raise invalid([FieldViolation("page_token", "issued for a different filter; start again")])
    return cursor


# -- filters --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallFilter:
    """What ListCalls' filter selects (None: any), and the page-token scope of that filter."""

    state: int | None
    provider: str | None
    page_scope: str


_FILTER_TERM = re.compile(r'\s*(\w+)\s*=\s*("([^"]*)"|[\w/.-]+)\s*')


def call_filter(text: str) -> CallFilter:
    """The AIP-160 subset ListCalls accepts: `state = X AND provider = "providers/y"`."""
    state: int | None = None
    provider: str | None = None
    if len(text) > MAX_FILTER:
        raise invalid([FieldViolation("filter", f"at most {MAX_FILTER} characters")])
    scope = hashlib.sha256(text.encode()).hexdigest()[:16]
    if not text.strip():
        return CallFilter(state, provider, scope)
    for term in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(term)
        if match is None:
            raise invalid([FieldViolation("filter", f"cannot parse {term!r}; use field = value joined by AND")])
        key, value = match.group(1), match.group(3) if match.group(3) is not None else match.group(2)
        if key == "state":
            wanted = value.upper()
            wanted = wanted if wanted.startswith("STATE_") else f"STATE_{wanted}"
            if wanted not in ("STATE_CONNECTED", "STATE_DISCONNECTED"):
                raise invalid([FieldViolation("filter", f"state must be CONNECTED or DISCONNECTED, not {value!r}")])
            state = call_pb2.Call.State.Value(wanted)
        elif key == "provider":
            if names.parse_provider(value) is None:
                raise invalid([FieldViolation("filter", "provider must be providers/{provider}")])
            provider = value
        else:
            raise invalid([FieldViolation("filter", f"unknown field {key!r}; filter on state or provider")])
    return CallFilter(state, provider, scope)


_KNOWN_EVENT_TYPES = frozenset(event_pb2.QosEventType.values()) - {0}


@dataclass(frozen=True)
class EventFilter:
    """Which events a WatchEvents stream delivers: those of `call` ('' any) of `types` (empty:
    any)."""

    call: str
    types: frozenset[int]

    def __call__(self, event: event_pb2.QosEvent) -> bool:
        return (not self.call or event.call == self.call) and (not self.types or event.type in self.types)


def watch_filter(request: svc.WatchEventsRequest) -> EventFilter:
    violations: list[FieldViolation] = []
    if request.call:
        violations += call_name_violations(request.call, "call")
    if len(request.types) > MAX_WATCH_TYPES:
        # Refused on its length alone: no entry is looked at (nor echoed back).
        violations.append(FieldViolation("types", f"at most {MAX_WATCH_TYPES} entries"))
    else:
        for index, kind in enumerate(request.types):
            if kind not in _KNOWN_EVENT_TYPES:
                violations.append(FieldViolation(f"types[{index}]", f"unknown event type {kind}"))
    check(violations)
    return EventFilter(request.call, frozenset(request.types))


# -- links ----------------------------------------------------------------------------------------
UPDATABLE_LINK_FIELDS = ("capacity_bytes_per_second",)


def link_update(request: svc.UpdateLinkRequest) -> tuple[str, str]:
    """The (provider id, link id) an UpdateLinkRequest names, once its name and its update_mask
    (only capacity_bytes_per_second may change) are valid."""
    parsed = names.parse_link(request.link.name)
    violations: list[FieldViolation] = []
    if parsed is None:
        violations.append(FieldViolation("link.name", "must be providers/{provider}/links/{link}"))
    if len(request.update_mask.paths) > MAX_MASK_PATHS:
        violations.append(FieldViolation("update_mask", f"at most {MAX_MASK_PATHS} paths"))
        raise invalid(violations)
    for path in request.update_mask.paths:
        if path not in UPDATABLE_LINK_FIELDS:
            violations.append(
                FieldViolation("update_mask", f"{path!r} cannot be changed; only capacity_bytes_per_second")
            )
    if violations or parsed is None:
        raise invalid(violations)
    return parsed
