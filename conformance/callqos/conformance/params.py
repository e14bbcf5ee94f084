"""Test parameters: which flowspecs are feasible and which are not.

Derived from the provider's advertised limits (ProviderCapabilities), and overridable by the
provider's author in a small TOML file — the csi-sanity `--csi.testvolumeparameters` idea:

    [parameters]
    destination = "sip:conformance-{unique}@example.test"  # {unique} is replaced per call
    capacity_bytes_per_second = 1250000   # what one direction of one destination's path holds
    max_fill_calls = 32                   # bound on fill-to-refusal loops

    [parameters.feasible.sending]         # admitted at NEEDED on an idle provider
    service_type = "CONTROLLED_LOAD"
    token_rate_bytes_per_second = 100000
    [parameters.feasible.receiving]
    service_type = "BEST_EFFORT"

    [parameters.infeasible.sending]       # refused at NEEDED even on an idle provider
    service_type = "CONTROLLED_LOAD"
    token_rate_bytes_per_second = 999999999
    [parameters.infeasible.receiving]
    service_type = "BEST_EFFORT"

    [parameters.policy_refused.sending]   # refused by policy (QOS_POLICY_FAILURE)
    service_type = "NETWORK_CONTROL"
    token_rate_bytes_per_second = 1000
    [parameters.policy_refused.receiving]
    service_type = "BEST_EFFORT"

A provider that interprets QosSpec.provider_specific (Provider.validate_provider_specific)
lists at least two different payloads it accepts, as UTF-8 strings:

    [parameters]
    provider_specific = ['{"version": 1, "protocol": "udp"}', '{"version": 1, "protocol": "tcp"}']

The provider-specific checks then send these instead of random bytes (they must round-trip byte
for byte) and, in addition, require random bytes to be refused: INVALID_ARGUMENT with a field
violation on the provider_specific field, nothing stored, the call unchanged.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from callqos.conformance.rules import ST, QosSpec, best_effort, cl, flow
from callqos.v1 import flowspec_pb2, provider_pb2

DEFAULT_DESTINATION = "sip:conformance-{unique}@example.test"


class ParameterError(Exception):
    """The parameters file cannot be used."""


@dataclass
class Parameters:
    destination: str = DEFAULT_DESTINATION
    # Per-direction capacity the fills and concurrency checks work against (0: unknown, those
    # checks are skipped). Default: the advertised max_reservable_bytes_per_second.
    capacity: int = 0
    max_fill_calls: int = 32
    feasible: QosSpec | None = None
    infeasible: QosSpec | None = None
    policy_refused: QosSpec | None = None
    # Payloads the provider accepts in provider_specific; empty: it takes any bytes (opaque).
    provider_specific: tuple[bytes, ...] = ()
    source: str = "derived from advertised capabilities"

    @property
    def reserving(self) -> bool:
        """Whether the suite can ask this target for reservations with known capacity."""
        return self.capacity > 0


def _flowspec(raw: Any, where: str) -> flowspec_pb2.FlowSpec:
    if not isinstance(raw, dict):
        raise ParameterError(f"{where}: a table of FlowSpec fields")
    data = dict(raw)
    stype = str(data.get("service_type", ""))
    if stype and not stype.startswith("SERVICE_TYPE_"):
        data["service_type"] = "SERVICE_TYPE_" + stype
    try:
        return json_format.ParseDict(data, flowspec_pb2.FlowSpec())
    except json_format.ParseError as exc:
        raise ParameterError(f"{where}: {exc}") from exc


def _qos(raw: Any, where: str) -> QosSpec:
    if not isinstance(raw, dict) or "sending" not in raw or "receiving" not in raw:
        raise ParameterError(f"{where}: needs [{where}.sending] and [{where}.receiving]")
    return QosSpec(
        sending=_flowspec(raw["sending"], f"{where}.sending"),
        receiving=_flowspec(raw["receiving"], f"{where}.receiving"),
    )


def _payloads(raw: Any) -> tuple[bytes, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise ParameterError("parameters.provider_specific: a list of non-empty strings")
    payloads = tuple(dict.fromkeys(item.encode("utf-8") for item in raw))
    if len(payloads) < 2:
        raise ParameterError("parameters.provider_specific: at least two different payloads (one replaces the other)")
    if any(len(item) > 4096 for item in payloads):
        raise ParameterError("parameters.provider_specific: each payload at most 4096 bytes")
    return payloads


def load_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ParameterError(f"{path}: {exc}") from exc
    table = data.get("parameters", {})
    if not isinstance(table, dict):
        raise ParameterError(f"{path}: [parameters] must be a table")
    known = {
        "destination",
        "capacity_bytes_per_second",
        "max_fill_calls",
        "feasible",
        "infeasible",
        "policy_refused",
        "provider_specific",
    }
    unknown = set(table) - known
    if unknown:
        raise ParameterError(f"{path}: unknown parameters {sorted(unknown)} (known: {sorted(known)})")
    return table


def derive(caps: provider_pb2.ProviderCapabilities, table: dict[str, Any], source: str = "") -> Parameters:
    """Parameters from the advertised limits, with the file's values taking precedence."""
    params = Parameters()
    if caps.qos_supported and ST.SERVICE_TYPE_CONTROLLED_LOAD in caps.service_types:
        params.capacity = caps.max_reservable_bytes_per_second
    if "capacity_bytes_per_second" in table:
        params.capacity = int(table["capacity_bytes_per_second"])
    params.destination = str(table.get("destination", DEFAULT_DESTINATION))
    if "{unique}" not in params.destination:
        raise ParameterError("destination must contain {unique} so that every call's destination is unique")
    params.max_fill_calls = int(table.get("max_fill_calls", params.max_fill_calls))
    cap = params.capacity
    if cap > 0:
        # A small reservation in both directions: "grant satisfies the request in both directions".
        params.feasible = QosSpec(sending=cl(max(cap // 10, 1)), receiving=cl(max(cap // 10, 1)))
        params.infeasible = QosSpec(sending=cl(cap + 1), receiving=best_effort())
    elif not caps.qos_supported:
        # Nothing can be reserved: best effort is feasible, any reservation is not.
        params.feasible = QosSpec(sending=best_effort(), receiving=best_effort())
        params.infeasible = QosSpec(sending=cl(1000), receiving=best_effort())
    if caps.policy and ST.SERVICE_TYPE_NETWORK_CONTROL not in caps.service_types:
        # The common policy: NETWORK_CONTROL belongs to the network operator (qos.h priority).
        params.policy_refused = QosSpec(
            sending=flow(ST.SERVICE_TYPE_NETWORK_CONTROL, token_rate_bytes_per_second=1000), receiving=best_effort()
        )
    for key in ("feasible", "infeasible", "policy_refused"):
        if key in table:
            setattr(params, key, _qos(table[key], f"parameters.{key}"))
    if "provider_specific" in table:
        params.provider_specific = _payloads(table["provider_specific"])
    params.source = f"{source} over advertised capabilities" if table else "derived from advertised capabilities"
    return params
