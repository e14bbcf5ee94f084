"""What a valid request is — every rule about a request's content, checked here and only here,
before the call manager or any provider sees it.

That covers the caller's principal (request metadata), resource names, the FLOWSPEC rules of a
new call and of a renegotiation (from the Winsock 2 FLOWSPEC remarks and RFC 2212/2215), service
levels, request ids and etags, page sizes and page tokens (AIP-158), the ListCalls filter (an
AIP-160 subset), the WatchEvents filter, UpdateLink's update_mask and link name, lines (CreateLine,
CloseLine, the ListLines filter), answers (an answer asks no more than the offer) and the calls a
provider offers from its network.

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

from google.protobuf import duration_pb2

from callqos.server import names
from callqos.server.config import LEASE_CEILING_SECONDS, MAX_NO_ANSWER_SECONDS, MIN_LEASE_SECONDS, MIN_NO_ANSWER_SECONDS
from callqos.server.errors import FieldViolation, invalid
from callqos.server.providers.base import IncomingOffer
from callqos.server.qos import NOTIFICATION_ONLY, RESERVING, SENTINELS, answer_excess
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, line_pb2, provider_pb2
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


def line_name_violations(name: str, path: str = "name") -> Iterator[FieldViolation]:
    if names.parse_line(name) is None:
        yield FieldViolation(path, "must be lines/{line}")


def address_violations(address: str, path: str) -> Iterator[FieldViolation]:
    """A destination or a line's address: 1-256 printable characters (REQ-1)."""
    if not address:
        yield FieldViolation(path, "required")
    elif len(address) > MAX_DESTINATION or not _PRINTABLE.fullmatch(address):
        yield FieldViolation(path, f"1-{MAX_DESTINATION} printable characters")


def lease_violations(duration: duration_pb2.Duration, path: str, max_seconds: float) -> Iterator[FieldViolation]:
    """A lease's length (LEASE-2): a well-formed duration of at least MIN_LEASE_SECONDS and at most
    the server's max_lease_seconds (`max_seconds`; without one, LEASE_CEILING_SECONDS). Above the
    maximum is refused, not cut to it: a caller that asked for more must know it did not get it."""
    if duration.seconds < 0 or not 0 <= duration.nanos < 1_000_000_000:
        yield FieldViolation(path, "not a valid duration: seconds and nanos must be positive, nanos below 1e9")
        return
    seconds = duration.seconds + duration.nanos / 1e9
    ceiling = max_seconds or LEASE_CEILING_SECONDS
    if not MIN_LEASE_SECONDS <= seconds <= ceiling:
        limit = "the server's max_lease_seconds" if max_seconds else "366 days"
        yield FieldViolation(path, f"between {MIN_LEASE_SECONDS:g} s and {ceiling:.10g} s ({limit})")


def create_violations(
    request: svc.CreateCallRequest,
    caps: provider_pb2.ProviderCapabilities | None,
    provider_specific: ProviderSpecificCheck | None = None,
    max_lease_seconds: float = 0.0,
) -> list[FieldViolation]:
    """Every violation in a CreateCallRequest. `caps` are those of the provider it names (None
    when the provider is unknown: that is reported as NOT_FOUND after validation),
    `provider_specific` its check of the provider-specific bytes, and `max_lease_seconds` the
    server's longest lease (0: none)."""
    call = request.call
    found: list[FieldViolation] = []
    if not request.HasField("call"):
        return [FieldViolation("call", "required")]
    found.extend(address_violations(call.destination, "call.destination"))
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
    if call.HasField("lease_duration"):
        found.extend(lease_violations(call.lease_duration, "call.lease_duration", max_lease_seconds))
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
def is_principal(value: str) -> bool:
    """Whether `value` may name a principal or a tenant: 1-128 printable ASCII characters."""
    return _PRINCIPAL.fullmatch(value) is not None


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
    max_lease_seconds: float = 0.0,
) -> None:
    """A CreateCallRequest, against the capabilities of the provider it names (None when that
    provider is unknown: the caller learns that as NOT_FOUND, once the request is valid), that
    provider's own check of its provider-specific bytes, and the server's longest lease. An
    absent direction is filled in as BEST_EFFORT (FLOW-20), so that the call records what it asked
    for."""
    check(create_violations(request, caps, provider_specific, max_lease_seconds))
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


def extend(request: svc.ExtendCallRequest, max_lease_seconds: float) -> None:
    """An ExtendCallRequest: its name, its lease (LEASE-2, against the server's longest lease),
    etag and request_id."""
    found = [*call_name_violations(request.name)]
    if request.HasField("lease_duration"):
        found.extend(lease_violations(request.lease_duration, "lease_duration", max_lease_seconds))
    check([*found, *etag_violations(request.etag), *request_id_violations(request.request_id)])


# -- lines ----------------------------------------------------------------------------------------
def line_name(name: str, path: str = "name") -> str:
    """`lines/{line}`."""
    check(line_name_violations(name, path))
    return name


def line_create_violations(request: svc.CreateLineRequest) -> list[FieldViolation]:
    if not request.HasField("line"):
        return [FieldViolation("line", "required")]
    found = list(address_violations(request.line.address, "line.address"))
    if request.line.HasField("no_answer_timeout"):
        timeout = request.line.no_answer_timeout
        seconds = timeout.seconds + timeout.nanos / 1e9
        if not 0 <= timeout.nanos < 1_000_000_000 or not MIN_NO_ANSWER_SECONDS <= seconds <= MAX_NO_ANSWER_SECONDS:
            found.append(
                FieldViolation(
                    "line.no_answer_timeout",
                    f"between {MIN_NO_ANSWER_SECONDS:g} s and {MAX_NO_ANSWER_SECONDS:g} s",
                )
            )
    if request.line_id and not names.USER_CALL_ID.fullmatch(request.line_id):
        found.append(
            FieldViolation("line_id", "1-63 characters of [a-z0-9-], starting with a letter, not ending with -")
        )
    found.extend(request_id_violations(request.request_id))
    return found


def line_create(request: svc.CreateLineRequest) -> None:
    """A CreateLineRequest (LINE-1)."""
    check(line_create_violations(request))


def close_line(request: svc.CloseLineRequest) -> None:
    check([*line_name_violations(request.name), *etag_violations(request.etag)])


# -- answering ------------------------------------------------------------------------------------
def answer_violations(
    request: svc.AnswerCallRequest,
    offered: flowspec_pb2.QosSpec | None,
    caps: provider_pb2.ProviderCapabilities | None,
    provider_specific: ProviderSpecificCheck | None = None,
) -> list[FieldViolation]:
    """Every violation in an AnswerCallRequest: on its own (`offered` None), or also against the
    offer, the call's requested_qos, and its provider's limits (ANSWER-2)."""
    found = list(call_name_violations(request.name))
    if request.HasField("qos"):
        # NO_CHANGE is valid in an answer: it keeps that direction as offered.
        found.extend(
            qos_violations(
                request.qos,
                "qos",
                renegotiation=True,
                caps=caps,
                provider_specific=provider_specific,
            )
        )
        if offered is not None:
            for direction in ("sending", "receiving"):
                answer: flowspec_pb2.FlowSpec = getattr(request.qos, direction)
                if not request.qos.HasField(direction) or answer.service_type == ST.SERVICE_TYPE_NO_CHANGE:
                    continue
                for problem in answer_excess(answer, getattr(offered, direction)):
                    found.append(FieldViolation(f"qos.{direction}", problem))
    found.extend(etag_violations(request.etag))
    found.extend(request_id_violations(request.request_id))
    return found


def answer(
    request: svc.AnswerCallRequest,
    offered: flowspec_pb2.QosSpec | None,
    caps: provider_pb2.ProviderCapabilities | None = None,
    provider_specific: ProviderSpecificCheck | None = None,
) -> None:
    """An AnswerCallRequest: first on its own, then, once the call is found, against what it
    was offered and its provider (which can only add problems). A direction the answer's QoS
    leaves out is filled in as NO_CHANGE, kept as offered (FLOW-20, as in a renegotiation)."""
    check(answer_violations(request, offered, caps, provider_specific))
    if request.HasField("qos"):
        absent_directions(request.qos, ST.SERVICE_TYPE_NO_CHANGE)


def reject(request: svc.RejectCallRequest) -> None:
    check(
        [
            *call_name_violations(request.name),
            *etag_violations(request.etag),
            *request_id_violations(request.request_id),
        ]
    )


def offer_violations(offer: IncomingOffer, caps: provider_pb2.ProviderCapabilities) -> list[FieldViolation]:
    """What is wrong with a call a provider offers from its network (PROV-14): the rules of a
    CreateCall, applied to the provider's offer."""
    found = list(address_violations(offer.destination, "destination"))
    if len(offer.caller_id) > MAX_DESTINATION or (offer.caller_id and not _PRINTABLE.fullmatch(offer.caller_id)):
        found.append(FieldViolation("caller_id", f"at most {MAX_DESTINATION} printable characters"))
    if offer.level == call_pb2.ServiceLevel.SERVICE_LEVEL_UNSPECIFIED:
        found.append(FieldViolation("level", "required: NEEDED, IF_AVAILABLE or BEST_EFFORT"))
    found.extend(level_violations(offer.level, "level"))
    found.extend(qos_violations(offer.caller_qos, "caller_qos", renegotiation=False, caps=caps))
    return found


def offered_qos(offer: IncomingOffer) -> flowspec_pb2.QosSpec:
    """The caller's QoS of a (valid) network offer, a direction it leaves out filled in as
    BEST_EFFORT, as in a CreateCall (FLOW-20). A copy: the provider's offer is left as it is."""
    qos = flowspec_pb2.QosSpec()
    qos.CopyFrom(offer.caller_qos)
    absent_directions(qos, ST.SERVICE_TYPE_BEST_EFFORT)
    return qos


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
    line: str | None = None


_FILTER_TERM = re.compile(r'\s*(\w+)\s*=\s*("([^"]*)"|[\w/.-]+)\s*')


_CALL_STATES = ("STATE_CONNECTED", "STATE_DISCONNECTED", "STATE_OFFERING", "STATE_RINGBACK")


def call_filter(text: str) -> CallFilter:
    """The AIP-160 subset ListCalls accepts: `state = X AND provider = "providers/y" AND
    line = "lines/z"`."""
    state: int | None = None
    provider: str | None = None
    line: str | None = None
    if len(text) > MAX_FILTER:
        raise invalid([FieldViolation("filter", f"at most {MAX_FILTER} characters")])
    scope = hashlib.sha256(text.encode()).hexdigest()[:16]
    if not text.strip():
        return CallFilter(state, provider, scope)
    for key, value in _filter_terms(text):
        if key == "state":
            wanted = value.upper()
            wanted = wanted if wanted.startswith("STATE_") else f"STATE_{wanted}"
            if wanted not in _CALL_STATES:
                raise invalid(
                    [
                        FieldViolation(
                            "filter", f"state must be CONNECTED, DISCONNECTED, OFFERING or RINGBACK, not {value!r}"
                        )
                    ]
                )
            state = call_pb2.Call.State.Value(wanted)
        elif key == "provider":
            if names.parse_provider(value) is None:
                raise invalid([FieldViolation("filter", "provider must be providers/{provider}")])
            provider = value
        elif key == "line":
            if names.parse_line(value) is None:
                raise invalid([FieldViolation("filter", "line must be lines/{line}")])
            line = value
        else:
            raise invalid([FieldViolation("filter", f"unknown field {key!r}; filter on state, provider or line")])
    return CallFilter(state, provider, scope, line)


def _filter_terms(text: str) -> Iterator[tuple[str, str]]:
    """(field, value) of each `field = value` term of an AIP-160 conjunction."""
    for term in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(term)
        if match is None:
            raise invalid([FieldViolation("filter", f"cannot parse {term!r}; use field = value joined by AND")])
        yield match.group(1), match.group(3) if match.group(3) is not None else match.group(2)


@dataclass(frozen=True)
class LineFilter:
    """What ListLines' filter selects (None: any), and the page-token scope of that filter."""

    state: int | None
    address: str | None
    owner: str | None
    page_scope: str


def line_filter(text: str) -> LineFilter:
    """The AIP-160 subset ListLines accepts: `state = OPEN|CLOSED`, `address = "..."` and
    `owner = "..."`, joined by AND."""
    if len(text) > MAX_FILTER:
        raise invalid([FieldViolation("filter", f"at most {MAX_FILTER} characters")])
    scope = "lines:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    state: int | None = None
    address: str | None = None
    owner: str | None = None
    if not text.strip():
        return LineFilter(state, address, owner, scope)
    for key, value in _filter_terms(text):
        if key == "state":
            wanted = value.upper()
            wanted = wanted if wanted.startswith("STATE_") else f"STATE_{wanted}"
            if wanted not in ("STATE_OPEN", "STATE_CLOSED"):
                raise invalid([FieldViolation("filter", f"state must be OPEN or CLOSED, not {value!r}")])
            state = line_pb2.Line.State.Value(wanted)
        elif key == "address":
            address = value
        elif key == "owner":
            owner = value
        else:
            raise invalid([FieldViolation("filter", f"unknown field {key!r}; filter on state, address or owner")])
    return LineFilter(state, address, owner, scope)


_KNOWN_EVENT_TYPES = frozenset(event_pb2.QosEventType.values()) - {0}


@dataclass(frozen=True)
class EventFilter:
    """Which events a WatchEvents stream delivers: those of `call` ('' any), of calls on `line`
    ('' any), of `types` (empty: any)."""

    call: str
    types: frozenset[int]
    line: str = ""

    def __call__(self, event: event_pb2.QosEvent) -> bool:
        return (
            (not self.call or event.call == self.call)
            and (not self.line or event.line == self.line)
            and (not self.types or event.type in self.types)
        )


def watch_filter(request: svc.WatchEventsRequest) -> EventFilter:
    violations: list[FieldViolation] = []
    if request.call:
        violations += call_name_violations(request.call, "call")
    if request.line:
        violations += line_name_violations(request.line, "line")
    if len(request.types) > MAX_WATCH_TYPES:
        # Refused on its length alone: no entry is looked at (nor echoed back).
        violations.append(FieldViolation("types", f"at most {MAX_WATCH_TYPES} entries"))
    else:
        for index, kind in enumerate(request.types):
            if kind not in _KNOWN_EVENT_TYPES:
                violations.append(FieldViolation(f"types[{index}]", f"unknown event type {kind}"))
    check(violations)
    return EventFilter(request.call, frozenset(request.types), request.line)


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
