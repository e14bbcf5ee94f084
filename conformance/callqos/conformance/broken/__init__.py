"""Deliberately broken implementations, each with exactly one fault, to show that the suite can fail — and
fails with the check that names the fault, listed first among its failures (see conformance/README.md).

- `providers`: provider plugins, each `base.LedgerProvider` (a correct provider written against the plugin
  face) with one fault, usable with `--provider callqos.conformance.broken.providers:Name`;
- `proxy`: a gRPC proxy in front of a real server hosting `LedgerProvider`, injecting one API-level fault
  (the server validates, de-duplicates, checks ownership and emits events itself, so these faults cannot
  come from a plugin; nor can a server that passes a bad answer through unchecked); certified with
  `--target`.

FAULTS lists each with the SPEC.md clauses it breaks and the checks that must catch it: every one of them
fails, and the first failure of the report is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from callqos.conformance.broken.proxy import VALIDATION_CLAUSES
from callqos.conformance.rules import INVALID_CASES

LEDGER = "callqos.conformance.broken.base:LedgerProvider"
P = "callqos.conformance.broken.providers:"


@dataclass(frozen=True)
class Fault:
    name: str
    kind: str  # "provider" (module:Class) or "proxy" (--fault name in front of `upstream`)
    subject: str  # the module:Class, or the proxy fault name
    description: str
    clauses: tuple[str, ...]  # the SPEC.md clauses it breaks
    caught_by: tuple[str, ...]  # checks that must fail; the report's first failure is one of them
    verdict: str = "nonconformant"  # "partial" for a fault that breaks only SHOULD clauses
    upstream: str = LEDGER  # the provider behind a proxy
    # Only these checks (a silent event stream would make every event check wait out its deadline).
    only: tuple[str, ...] = ()
    # Checks that may also catch it, depending on timing, and then name it first (they need not fail).
    also: tuple[str, ...] = ()


def plugin(
    name: str, cls: str, description: str, clauses: tuple[str, ...], *caught: str, verdict: str = "nonconformant"
) -> Fault:
    return Fault(name, "provider", P + cls, description, clauses, caught, verdict=verdict)


def api(
    name: str,
    description: str,
    clauses: tuple[str, ...],
    *caught: str,
    verdict: str = "nonconformant",
    upstream: str = LEDGER,
    only: tuple[str, ...] = (),
    also: tuple[str, ...] = (),
) -> Fault:
    return Fault(name, "proxy", name, description, clauses, caught, verdict, upstream, only, also)


def validation_checks(clause: str) -> tuple[str, ...]:
    """The CORE-VAL checks of the CreateCall cases that break `clause`."""
    return tuple(f"CORE-VAL-{case.number:03d}" for case in INVALID_CASES if clause in case.spec)


FAULTS: tuple[Fault, ...] = (
    # -- providers: admission and accounting ----------------------------------------------------
    plugin("over-admits-concurrently", "OverAdmitsConcurrently", "awaits between check and reserve, no lock",
             ("PROV-6",), "CONC-001"),
    plugin("connects-beyond-capacity", "ConnectsBeyondCapacity", "grants at NEEDED what does not fit",
             ("LEVEL-1", "ADMIT-1"), "CORE-ADM-002", "CORE-ADM-015"),
    plugin("if-available-grants-everything", "IfAvailableGrantsEverything", "IF_AVAILABLE ignores capacity",
             ("LEVEL-2", "ADMIT-1"), "CORE-ADM-004"),
    plugin("if-available-always-best-effort", "IfAvailableAlwaysBestEffort", "IF_AVAILABLE never reserves",
             ("LEVEL-2", "ADMIT-5"), "CORE-ADM-017"),
    plugin("ignores-receiving", "IgnoresReceiving", "accounts the sending direction only",
             ("ADMIT-2", "GRANT-1"), "CORE-ACCT-001", "CORE-ADM-008"),
    plugin("guaranteed-reserves-token-rate", "GuaranteedReservesTokenRate", "GUARANTEED holds its token rate",
             ("GRANT-1",), "CORE-ACCT-001", "CORE-ADM-015"),
    plugin("peak-unbounded-reserves-nothing", "PeakUnboundedReservesNothing",
             "GUARANTEED with an unbounded peak holds nothing", ("GRANT-1",), "CORE-ACCT-001", "CORE-ADM-015"),
    plugin("reserves-non-reserving-types", "ReservesNonReservingTypes", "best effort with a rate is reserved",
             ("GRANT-2",), "CORE-ADM-006"),
    plugin("full-link-off-by-one", "FullLinkOffByOne", "exactly the free capacity is refused",
             ("ADMIT-5",), "CORE-ADM-015", "CORE-ADM-016", "CORE-CAP-003"),
    plugin("advertised-maximum-not-honoured", "AdvertisedMaximumNotHonoured", "keeps 5% it never grants",
             ("PROV-8", "ADMIT-5"), "CORE-ADM-015", "CORE-ADM-016", "CORE-CAP-003"),
    plugin("half-reserves-on-refusal", "HalfReservesOnRefusal", "a refusal keeps the direction that fitted",
             ("PROV-1",), "CORE-ADM-018"),
    plugin("ignores-latency", "IgnoresLatency", "GUARANTEED admitted whatever latency was asked",
             ("DELAY-4", "GRANT-3"), "CORE-ADM-014"),
    plugin("latency-bound-without-path-latency", "LatencyBoundWithoutPathLatency",
             "the delay bound leaves out the fixed path latency", ("DELAY-1",), "CORE-ADM-012", verdict="partial"),
    plugin("grants-short-at-needed", "GrantsShortAtNeeded", "grants rounded down to KiB/s",
             ("GRANT-3", "LEVEL-1"), "CORE-ACCT-001", "CORE-ADM-001"),
    plugin("grants-without-resolving-defaults", "GrantsWithoutResolvingDefaults",
             "a receiver's token rate left out of the grant", ("GRANT-4",), "CORE-VAL-029"),
    plugin("drops-provider-specific-in-grant", "DropsProviderSpecificInGrant",
             "the grant lacks the provider-specific bytes", ("API-7",), "CORE-PSD-001"),
    plugin("raises-on-huge-rate", "RaisesOnHugeRate", "a 32-bit ledger raises at 2^32 B/s",
             ("PROV-16",), "CORE-ADM-019"),
    plugin("grants-unadvertised-type", "GrantsUnadvertisedType", "grants GUARANTEED it does not advertise",
             ("PROV-9",), "CORE-ADM-009"),
    plugin("advertises-reserving-without-qos", "AdvertisesReservingWithoutQos",
             "qos_supported false with reserving types listed", ("PROV-8",), "CORE-CAP-001"),
    plugin("hangs", "Hangs", "admit() never returns", ("PROV-10",), "CORE-RESP-001"),
    plugin("links-report-free", "LinksReportFree", "ListLinks reports free capacity as reserved",
             ("LINK-2",), "CORE-ACCT-001", "CORE-IDLE-001"),
    # -- providers: counter-offers and policy -----------------------------------------------------
    plugin("refused-counter-offer", "RefusedCounterOffer", "offers back exactly what it refused",
             ("PROV-2",), "CORE-ADM-002", "CORE-ADM-003"),
    plugin("counter-offer-only-valid-on-idle-link", "CounterOfferOnlyValidOnIdleLink",
             "offers computed from capacity, not from what is free", ("PROV-2",), "CORE-ADM-003"),
    plugin("counter-offer-peak-below-token", "CounterOfferPeakBelowToken",
             "a GUARANTEED offer with its peak below its token rate", ("PROV-2", "FLOW-10"), "CORE-ADM-003"),
    plugin("policy-as-admission", "PolicyAsAdmission", "NETWORK_CONTROL refused as an admission failure",
             ("ADMIT-4",), "CORE-ADM-010", "EVT-007"),
    # -- providers: renegotiation ---------------------------------------------------------------
    plugin("advertises-renegotiation-but-refuses", "AdvertisesRenegotiationButRefuses",
             "capabilities say renegotiation, renegotiate() always refuses", ("SETQOS-1",),
             "CORE-ACCT-001", "RENEG-001"),
    plugin("loses-reservation-on-refused-renegotiation", "LosesReservationOnRefusedRenegotiation",
             "a refused renegotiation frees the call's reservation", ("PROV-3", "SETQOS-2"), "RENEG-004", "RENEG-013"),
    plugin("refused-renegotiation-applies-one-direction", "RefusedRenegotiationAppliesOneDirection",
             "the direction that fitted is applied, the renegotiation refused", ("PROV-3",), "RENEG-013"),
    plugin("renegotiation-drops-unchanged-direction", "RenegotiationDropsUnchangedDirection",
             "a NO_CHANGE direction holds nothing after a renegotiation", ("SETQOS-4", "GRANT-1"),
             "CORE-ACCT-001", "RENEG-006"),
    plugin("renegotiation-counts-own-reservation", "RenegotiationCountsOwnReservation",
             "going up in place is refused", ("SETQOS-1", "ADMIT-5"), "RENEG-012"),
    # -- providers: release ---------------------------------------------------------------------
    plugin("leaks-on-release", "LeaksOnRelease", "release() keeps the reservation",
             ("PROV-4",), "CORE-ACCT-001", "CORE-DROP-002", "CORE-IDLE-001", "CORE-LEAK-001"),
    plugin("release-frees-another-call", "ReleaseFreesAnotherCall", "release frees the newest call's reservation",
             ("PROV-4",), "CORE-ACCT-001", "CORE-DROP-002"),
    # -- providers: capacity changes ------------------------------------------------------------
    plugin("keeps-calls-on-capacity-loss", "KeepsCallsOnCapacityLoss", "a lowered link keeps every call",
             ("LINK-3",), "PCHG-001"),
    plugin("sheds-without-reporting", "ShedsWithoutReporting", "frees shed calls without telling the host",
             ("PROV-7", "LINK-3"), "PCHG-001"),
    plugin("sheds-needed-by-degrading", "ShedsNeededByDegrading", "NEEDED calls degraded below their request",
             ("EVENT-4", "LINK-3"), "PCHG-002"),
    plugin("degrades-to-capacity-not-free", "DegradesToCapacityNotFree", "a degraded call still does not fit",
             ("LINK-3", "ADMIT-1"), "PCHG-001"),
    plugin("double-release-after-shed", "DoubleReleaseAfterShed", "a shed call is freed again by the next shed",
             ("PROV-5",), "PCHG-002"),
    plugin("drop-after-degrade-frees-original", "DropAfterDegradeFreesOriginal",
             "releasing a degraded call frees what it first held", ("PROV-4",), "PCHG-003"),
    # -- providers: restarts --------------------------------------------------------------------
    plugin("loses-state-on-restart", "LosesStateOnRestart", "restored calls are not re-taken",
             ("PROV-11",), "RESTART-001"),
    plugin("restore-double-counts", "RestoreDoubleCounts", "restored calls are counted twice",
             ("PROV-11",), "RESTART-001"),
    plugin("forgets-capacity-on-restart", "ForgetsCapacityOnRestart", "UpdateLink is not durable",
             ("LINK-4",), "RESTART-002"),
    # -- proxies: the API layer -----------------------------------------------------------------
    api("accepts-invalid-peak", "accepts a peak below the token rate", ("FLOW-10",), "CORE-VAL-006"),
    api("double-reserves-request-id", "ignores request_id: a retried CreateCall makes a second call",
          ("API-3",), "CORE-IDEM-001", also=("CORE-CANCEL-001",)),
    api("never-emits-events", "WatchEvents stays open and delivers nothing", ("EVENT-1",), "EVT-001",
          only=("CORE-RESP-001", "EVT-001")),
    api("reorders-events", "delivers events in swapped pairs", ("WATCH-1",), "RENEG-010", "EVT-004"),
    api("wrong-error-codes", "QoS refusals answered INTERNAL", ("API-1", "LEVEL-1"), "CORE-ADM-002", "CORE-ADM-015"),
    api("drops-provider-specific", "provider_specific not passed through", ("API-7", "FLOW-19"),
          "CORE-PSD-001", "CORE-VAL-022", "RENEG-011"),
    api("ignores-etag", "etags of RenegotiateCall and DropCall ignored", ("API-4",), "CORE-ETAG-001", "RENEG-009"),
    api("ignores-renegotiation-request-id", "a retried RenegotiateCall renegotiates again", ("API-3", "EVENT-3"),
          "RENEG-010"),
    api("unknown-cursor-from-now", "a cursor from the future watches from now", ("WATCH-6",), "EVT-009"),
    api("wrong-start-sequence", "x-callqos-start-sequence always 0", ("WATCH-8",), "EVT-011"),
    api("owner-only-events", "monitors see nothing", ("OWNER-3",), "EVT-010"),
    api("grants-short", "passes a provider's short grant through unchecked", ("GRANT-3",),
          "CORE-ACCT-001", "CORE-ADM-001"),
    api("inflates-counter-offer", "counter-offers twice what is free", ("PROV-2",), "CORE-ADM-002", "CORE-ADM-003"),
    api("strips-qos-refusal", "QoS refusals without their QosRefusal", ("ADMIT-3",), "CORE-ADM-002", "CORE-ADM-015"),
    api("forgets-refused-calls", "a refused call is not kept", ("CALL-1",), "CORE-ADM-002"),
    api("second-drop-fails", "dropping a dropped call fails", ("CALL-2",), "CORE-ACCT-001", "CORE-DROP-001"),
    api("set-qos-after-drop", "features.set_qos always true", ("CALL-3",), "RENEG-008"),
    api("overwrites-call-id", "a taken call_id makes a renamed second call", ("CALL-4",), "CORE-ERR-002"),
    api("no-owner", "calls have no owner", ("OWNER-1",), "CORE-OWN-001"),
    api("anyone-may-drop", "DropCall does not check the owner", ("OWNER-2",), "CORE-OWN-001"),
    api("renegotiates-disconnected", "renegotiating a dropped call succeeds", ("SETQOS-3",), "RENEG-005"),
    api("no-change-receiving-as-best-effort", "receiving NO_CHANGE becomes best effort", ("SETQOS-4",),
          "RENEG-006"),
    api("renegotiation-unimplemented-as-internal", "RenegotiateCall without renegotiation answered INTERNAL",
          ("SETQOS-5",), "RENEG-007", upstream="no-qos"),
    api("accepts-invalid-renegotiation", "a renegotiation with token rate 0 is repaired", ("SETQOS-6",),
          "CORE-VAL-027"),
    api("ignores-level-on-renegotiation", "RenegotiateCall's service_level ignored", ("SETQOS-7",), "RENEG-014"),
    api("unspecified-level-as-if-available", "no level means IF_AVAILABLE", ("LEVEL-4",), "CORE-ADM-013"),
    api("best-effort-level-reserves", "BEST_EFFORT level admitted as IF_AVAILABLE", ("LEVEL-3",),
          "CORE-RESP-001", "CORE-ADM-005"),
    api("rewrites-requested-qos", "requested_qos replaced by the grant", ("GRANT-5",),
          "CORE-ADM-001", "CORE-ADM-004"),
    api("refusal-without-failure-event", "no ADMISSION_FAILURE event", ("EVENT-2",), "EVT-002"),
    api("no-renegotiation-failed-event", "no RENEGOTIATION_FAILED event", ("EVENT-3",), "EVT-003"),
    api("hides-provider-changes", "provider-initiated events hidden", ("EVENT-4",), "PCHG-001"),
    api("drops-event-request-id", "events lose their request_id", ("EVENT-6",), "EVT-008", verdict="partial"),
    api("resume-repeats-cursor-event", "resuming after N delivers N again", ("WATCH-2",), "EVT-005"),
    api("call-filter-ignored", "WatchEvents(call) delivers every call's events", ("WATCH-4",),
          "CORE-VAL-032", "EVT-006"),
    api("type-filter-ignored", "WatchEvents(types) delivers every type", ("WATCH-5",), "CORE-VAL-032", "EVT-012"),
    api("links-without-link-admin", "ListLinks answers an empty list without link_admin", ("LINK-1",),
          "CORE-CAP-002", upstream="no-qos"),
    api("not-found-as-invalid", "unknown calls are INVALID_ARGUMENT", ("API-2",), "CORE-ERR-001"),
    api("ignores-page-size", "ListCalls pages ignore page_size", ("API-5",), "CORE-LIST-001"),
    api("ignores-list-filter", "ListCalls ignores its filter", ("API-6",), "CORE-ACCT-001", "CORE-LIST-002"),
    api("accepts-malformed-principal", "a malformed principal is taken as anonymous", ("REQ-5",), "CORE-VAL-033"),
    api("accepts-oversize-etag", "an etag above 128 characters is ignored", ("REQ-6",), "CORE-VAL-032"),
    api("unbounded-watch-types", "WatchEvents(types) read and de-duplicated, not refused on its length",
          ("REQ-7",), "CORE-VAL-034"),
    api("renegotiation-readmits", "every renegotiation releases and admits again, even one that changes nothing",
          ("SETQOS-8",), "RENEG-016"),
    api("refuses-absent-direction", "both directions still required (the withdrawn FLOW-18)", ("FLOW-20",),
          "CORE-VAL-031"),
    # -- proxies: lines and incoming calls ------------------------------------------------------
    api("line-ignores-no-answer-timeout", "every line rings for the server's default", ("LINE-1", "ANSWER-6"),
          "INC-008"),
    api("address-reused", "a second opener of an address gets the open line", ("LINE-2",), "INC-009"),
    api("line-watch-unfiltered", "WatchEvents(line) delivers every call's events", ("LINE-3",), "INC-012"),
    api("anyone-may-close", "CloseLine does not check the owner", ("LINE-4",), "INC-009"),
    api("offer-without-answer-feature", "an offered leg lacks features.answer", ("OFFER-1",), "INC-001"),
    api("offer-not-mirrored", "the callee's leg states the offer in the caller's terms", ("OFFER-2", "PAIR-1"),
          "INC-001"),
    api("no-ringback-event", "the caller's leg gets no CALL_RINGBACK", ("OFFER-3",), "INC-001"),
    api("anyone-may-answer", "AnswerCall and RejectCall do not check the owner", ("ANSWER-1",), "INC-009"),
    api("answer-above-offer-accepted", "an answer above the offer is taken as the offer", ("ANSWER-2",),
          "INC-006"),
    api("needed-short-answer-connects", "a lower answer at NEEDED connects with the full offer", ("ANSWER-3",),
          "INC-004"),
    api("answer-grant-unmirrored", "AnswerCall returns the grant in the caller's terms", ("ANSWER-4", "PAIR-1"),
          "INC-005"),
    api("reject-hangs-up-caller", "RejectCall hangs up the caller's leg instead", ("ANSWER-5",), "INC-007"),
    api("peer-dropped-as-normal", "the leg left behind ends NORMAL, not PEER_DROPPED", ("PAIR-3",), "INC-010"),
    api("reserves-each-leg", "an answered pair reserved once per leg", ("PAIR-2", "PROV-13"), "INC-003"),
    api("pair-renegotiation-one-leg", "a pair's renegotiation not announced on the callee's leg", ("PAIR-4",),
          "INC-011"),
    api("pair-change-one-leg", "a provider's change to a pair not announced on the callee's leg", ("PAIR-5",),
          "INC-014"),
    *(
        api(f"skips-{clause}", f"forgets {clause}", (clause, "FLOW-1"), *validation_checks(clause))
        for clause in VALIDATION_CLAUSES
    ),
)  # fmt: skip
