"""callqos client library: typed sync and async clients for ``callqos.v1.CallQosService``.

.. code-block:: python

    from callqos.client import Client, QosUnavailableError, controlled_load

    with Client("127.0.0.1:50051", principal="alice") as client:
        try:
            call = client.make_call("sip:bob@example.com", sending=controlled_load(900_000))
        except QosUnavailableError as refused:
            call = client.make_call("sip:bob@example.com", qos=refused.counter_offer)

The data types are the generated protobuf messages in :mod:`callqos.v1`; errors are the typed
exceptions in :mod:`callqos.client.errors` (all re-exported here).
"""

from ._channel import DEFAULT_TARGET, DEFAULT_TIMEOUT, PRINCIPAL_METADATA_KEY
from ._resume import ResumePolicy
from .aio import AsyncClient, AsyncEventStream, AsyncOfferStream
from .errors import *  # noqa: F403 - the error hierarchy is part of the public surface
from .errors import __all__ as _errors_all
from .specs import (
    UNBOUNDED,
    FlowSpec,
    QosSpec,
    best_effort,
    controlled_load,
    flowspec,
    guaranteed,
    no_change,
    no_traffic,
    qos,
)
from .sync import Client, EventStream, OfferStream

__all__ = [
    "Client",
    "AsyncClient",
    "EventStream",
    "AsyncEventStream",
    "OfferStream",
    "AsyncOfferStream",
    "ResumePolicy",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "PRINCIPAL_METADATA_KEY",
    "FlowSpec",
    "QosSpec",
    "UNBOUNDED",
    "flowspec",
    "best_effort",
    "controlled_load",
    "guaranteed",
    "no_traffic",
    "no_change",
    "qos",
    *_errors_all,
]
