"""Deliberately broken implementations, each with exactly one fault, to show that the suite can
fail — and fails with the check that names the fault (see conformance/README.md).

- `providers`: provider plugins (ReferenceProvider subclasses), usable with
  `--provider callqos.conformance.broken.providers:Name`.
- `proxy`: a gRPC proxy in front of a real server that injects one API-level fault (the server
  validates, de-duplicates and emits events itself, so these faults cannot come from a plugin);
  certify it with `--target`.

FAULTS maps each fault to the check IDs that must fail for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    name: str
    kind: str  # "provider" (module:Class) or "proxy" (--fault name in front of the reference server)
    subject: str  # the module:Class, or the proxy fault name
    description: str
    caught_by: tuple[str, ...]  # checks that must fail
    profiles: tuple[str, ...] = ()  # enough to show it (empty: the full suite)
    # Run on the full suite, where exactly `caught_by` must fail: no false failure elsewhere.
    exact: bool = False
    # Only these checks (each event check of a silent stream waits out its deadline).
    only: tuple[str, ...] = ()


P = "callqos.conformance.broken.providers:"
FAULTS: tuple[Fault, ...] = (
    Fault(
        "over-admits-concurrently",
        "provider",
        P + "OverAdmitsConcurrently",
        "awaits between the capacity check and the reservation, without a lock",
        ("CONC-001",),
        ("concurrency",),
    ),
    Fault(
        "leaks-on-release",
        "provider",
        P + "LeaksOnRelease",
        "release() keeps the reservation",
        ("CORE-LEAK-001",),
        ("core",),
    ),
    Fault(
        "loses-reservation-on-refused-renegotiation",
        "provider",
        P + "LosesReservationOnRefusedRenegotiation",
        "a refused renegotiation frees the call's existing reservation",
        ("RENEG-004",),
    ),
    Fault(
        "ignores-receiving",
        "provider",
        P + "IgnoresReceiving",
        "reserves and admission-checks the sending direction only",
        ("CORE-ADM-008",),
        ("core",),
    ),
    Fault(
        "connects-beyond-capacity",
        "provider",
        P + "ConnectsBeyondCapacity",
        "at NEEDED grants the full request beyond capacity instead of refusing",
        ("CORE-ADM-002",),
        ("core",),
    ),
    Fault(
        "refused-counter-offer",
        "provider",
        P + "RefusedCounterOffer",
        "counter-offers exactly what it just refused",
        ("CORE-ADM-003",),
        exact=True,
    ),
    Fault(
        "advertises-renegotiation-but-refuses",
        "provider",
        P + "AdvertisesRenegotiationButRefuses",
        "capabilities say renegotiation, renegotiate() always refuses",
        ("RENEG-001",),
        ("renegotiation",),
    ),
    Fault("hangs", "provider", P + "Hangs", "admit() never returns", ("CORE-RESP-001",), ("core",)),
    Fault(
        "keeps-calls-on-capacity-loss",
        "provider",
        P + "KeepsCallsOnCapacityLoss",
        "a lowered link keeps every call: reservations exceed capacity, no events",
        ("PCHG-001",),
        ("provider-change",),
    ),
    Fault(
        "accepts-invalid-peak",
        "proxy",
        "accepts-invalid-peak",
        "accepts a flowspec whose peak bandwidth is below its token rate",
        ("CORE-VAL-006",),
        ("core",),
    ),
    Fault(
        "double-reserves-request-id",
        "proxy",
        "double-reserves-request-id",
        "ignores request_id: a retried CreateCall makes and reserves a second call",
        ("CORE-IDEM-001",),
        ("core",),
    ),
    Fault(
        "never-emits-events",
        "proxy",
        "never-emits-events",
        "WatchEvents stays open and delivers nothing",
        ("EVT-001",),
        ("events",),
        only=("CORE-RESP-001", "EVT-001"),
    ),
    Fault(
        "reorders-events",
        "proxy",
        "reorders-events",
        "delivers events in swapped pairs (out of sequence order)",
        ("EVT-004",),
        ("events",),
    ),
    Fault(
        "wrong-error-codes",
        "proxy",
        "wrong-error-codes",
        "reports QoS refusals as INTERNAL instead of RESOURCE_EXHAUSTED QOS_UNAVAILABLE",
        ("CORE-ADM-002",),
        ("core",),
    ),
    Fault(
        "drops-provider-specific",
        "proxy",
        "drops-provider-specific",
        "does not pass QosSpec.provider_specific through (CreateCall, RenegotiateCall)",
        ("CORE-PSD-001", "RENEG-011", "CORE-VAL-022"),
        exact=True,
    ),
    Fault(
        "ignores-etag",
        "proxy",
        "ignores-etag",
        "ignores the etag of RenegotiateCall and DropCall: a stale one changes the call",
        ("CORE-ETAG-001", "RENEG-009"),
        exact=True,
    ),
    Fault(
        "ignores-renegotiation-request-id",
        "proxy",
        "ignores-renegotiation-request-id",
        "ignores RenegotiateCall.request_id: a retry renegotiates again",
        ("RENEG-010",),
        exact=True,
    ),
    Fault(
        "unknown-cursor-from-now",
        "proxy",
        "unknown-cursor-from-now",
        "a cursor beyond the newest event silently watches from now instead of OUT_OF_RANGE",
        ("EVT-009",),
        only=("CORE-RESP-001", "EVT-009"),
    ),
    Fault(
        "wrong-start-sequence",
        "proxy",
        "wrong-start-sequence",
        "x-callqos-start-sequence is always 0",
        ("EVT-011",),
        only=("CORE-RESP-001", "EVT-011"),
    ),
    Fault(
        "owner-only-events",
        "proxy",
        "owner-only-events",
        "a watch delivers only the events of calls its principal owns (monitors see nothing)",
        ("EVT-010",),
        only=("CORE-RESP-001", "EVT-010"),
    ),
)
