"""The provider plugin's public face: everything a provider author uses, and nothing else.

A provider imports from here only (plus the `callqos.v1` messages of the public API):

- the contract (from `base`): `Provider` to subclass; `AdmissionRequest` it is asked to decide;
  the `Decision` it answers, a `Grant` or a `Refusal` of a `RefusalKind`; `Restored` calls it is
  handed back at start-up; the `ProviderHost` it reports each `ProviderChange` to, and offers
  each `IncomingOffer` from its network to; the `Holding`s it lists for the server's
  reconciliation; the `SharedLedger` a host of several replicas offers (`ProviderHost.ledger`),
  with its `LedgerBooks`, `BookedLink` and `BookedReservation`;
- the QoS arithmetic (from `qos`): what a flowspec reserves (`reserved_rate`, `RESERVING`), whether
  a grant satisfies a request (`shortfalls`, `qos_shortfalls`), best-effort flowspecs, the
  RFC 2212 delay bound of a GUARANTEED flow over a path (`PathTerms`, `guaranteed_delay_bound_us`,
  exactly: `delay_bound_ceil_us`, and the bucket that keeps it within a latency:
  `largest_bucket_within`), and the bounds of a flowspec's fields (`representable`,
  `LARGEST_UINT32_FIELD`, `LARGEST_UINT64`);
- resource names (from `names`): `link_name` and `is_resource_id`, for providers with links;
- tracing (from `spans`): `annotate_link`, to describe on the server's span the link a decision
  was made on and its load.

The shipped providers, `reference` and `noqos`, are written against this face alone, as a third
party's would be. How the server finds, hosts and calls providers (`registry`, and
`callqos.server.hosting`) is the host's business and not exported here.
"""

from callqos.server.names import is_resource_id, link_name
from callqos.server.providers.base import (
    AdmissionRequest,
    BookedLink,
    BookedReservation,
    Decision,
    Grant,
    Holding,
    IncomingOffer,
    LedgerBooks,
    Provider,
    ProviderChange,
    ProviderHost,
    Refusal,
    RefusalKind,
    Restored,
    SharedLedger,
)
from callqos.server.providers.spans import annotate_link
from callqos.server.qos import (
    LARGEST_UINT32_FIELD,
    LARGEST_UINT64,
    RESERVING,
    PathTerms,
    best_effort_qos,
    best_effort_spec,
    delay_bound_ceil_us,
    guaranteed_delay_bound_us,
    largest_bucket_within,
    mirror,
    qos_shortfalls,
    representable,
    reserved_rate,
    shortfalls,
)

__all__ = [
    "LARGEST_UINT32_FIELD",
    "LARGEST_UINT64",
    "RESERVING",
    "AdmissionRequest",
    "BookedLink",
    "BookedReservation",
    "Decision",
    "Grant",
    "Holding",
    "IncomingOffer",
    "LedgerBooks",
    "PathTerms",
    "Provider",
    "ProviderChange",
    "ProviderHost",
    "Refusal",
    "RefusalKind",
    "Restored",
    "SharedLedger",
    "annotate_link",
    "best_effort_qos",
    "best_effort_spec",
    "delay_bound_ceil_us",
    "guaranteed_delay_bound_us",
    "is_resource_id",
    "largest_bucket_within",
    "link_name",
    "mirror",
    "qos_shortfalls",
    "representable",
    "reserved_rate",
    "shortfalls",
]
