"""callqos client library: typed sync and async clients for ``callqos.v1.CallQosService``.

.. code-block:: python

    from callqos.client import Client, QosUnavailableError, controlled_load

    with Client("127.0.0.1:50051", principal="alice") as client:
        try:
            call = client.make_call("sip:bob@example.com", sending=controlled_load(900_000))
        except QosUnavailableError as refused:
            call = client.make_call("sip:bob@example.com", qos=refused.counter_offer)

Over TLS, with a client certificate (mTLS) and a bearer token refreshed from a file:

.. code-block:: python

    from callqos.client import Client, FileToken, tls_credentials

    credentials = tls_credentials(ca="ca.pem", cert="client.pem", key="client.key")
    with Client("callqos.example.com:50051", credentials=credentials, token=FileToken("token")) as client:
        ...

The data types are the generated protobuf messages in :mod:`callqos.v1`; errors are the typed
exceptions in :mod:`callqos.client.errors` (all re-exported here).
"""

from ._channel import DEFAULT_TARGET, DEFAULT_TIMEOUT, PRINCIPAL_METADATA_KEY
from ._resume import ResumePolicy
from ._security import FileToken, TokenSource, tls_credentials
from .aio import AsyncClient, AsyncEventStream, AsyncOfferStream
from .errors import *  # noqa: F403 - the error hierarchy is part of the public surface
from .errors import __all__ as _errors_all
from .keepalive import AsyncKeepAlive, KeepAlive, LeaseLostError
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
    "KeepAlive",
    "AsyncKeepAlive",
    "LeaseLostError",
    "ResumePolicy",
    "FileToken",
    "TokenSource",
    "tls_credentials",
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
