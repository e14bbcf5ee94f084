"""What a callqos server and its clients agree on besides the messages: the one Python home of it.

The server, the Python client and CLI, and the conformance suite all import these names instead
of spelling the strings themselves, so a change here is a change on both sides of the wire. (The
Go, TypeScript and Java clients keep their own copies of the header names and the domain; their
tests against the real server fail if one differs: the call's owner comes from the principal
header, a watch "from now" resumes from the start-sequence header, errors carry the domain.)

- Request and response metadata keys, the principal the server assumes without one, and the
  tenant of a server without tenants.
- The ``google.rpc.ErrorInfo`` domain and reason strings of the errors the service sends, and the
  gRPC status code of each reason, read from the ``(callqos.v1.grpc_code)`` option on every
  ``ErrorReason`` value in ``protos/callqos/v1/errors.proto`` (the only place it is decided).
- The address convention (below), and the environment variables the client and CLI read.

The address convention — one for the server, the CLI, the clients in every language, their tests
and the examples:

- The server listens on ``CALLQOS_LISTEN`` (its ``listen`` setting; ``--listen``), default
  ``127.0.0.1:50051``.
- A client connects to ``CALLQOS_TARGET`` (the CLI's ``--target``). Without it, to the address in
  ``CALLQOS_LISTEN`` — with a wildcard host (``0.0.0.0``, ``[::]``, empty) read as loopback — so
  that a shell that set only the server's variable reaches that server. Without either, to
  ``127.0.0.1:50051``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc
from google.protobuf.descriptor import EnumDescriptor

from callqos.v1 import errors_pb2

#: Request metadata naming the caller. Only a call's owner may renegotiate or drop it. A server
#: with an authenticator configured believes it only from a trusted proxy (README "Security");
#: without one (development, on loopback) from anyone.
PRINCIPAL_HEADER = "x-callqos-principal"
#: The principal of a request that sends no ``x-callqos-principal`` (development mode only).
ANONYMOUS_PRINCIPAL = "anonymous"
#: Request metadata a trusted proxy sets beside the principal: the caller's tenant, and its roles
#: (comma-separated). Ignored from anyone else.
TENANT_HEADER = "x-callqos-tenant"
ROLES_HEADER = "x-callqos-roles"
#: The tenant of every caller of a server without tenants, and of data from before them.
DEFAULT_TENANT = "default"
#: Request metadata carrying a bearer token (``Bearer <JWT>``), as gRPC call credentials send it.
AUTHORIZATION_HEADER = "authorization"
BEARER_PREFIX = "Bearer "
#: Initial (response) metadata of WatchEvents: the sequence number the stream starts after, so a
#: watch "from now" can resume without loss even if it breaks before its first event.
START_SEQUENCE_HEADER = "x-callqos-start-sequence"

#: ``google.rpc.ErrorInfo.domain`` of every error the service itself raises.
ERROR_DOMAIN = "callqos.dev"
#: An ``ErrorReason`` value name is this prefix followed by the ``ErrorInfo.reason`` string.
REASON_PREFIX = "ERROR_REASON_"

#: Where a server listens and a client connects when told nothing else.
DEFAULT_TARGET = "127.0.0.1:50051"
#: Where a client connects (the CLI's ``--target``; every client's default target).
TARGET_ENV = "CALLQOS_TARGET"
#: Where the server listens (its ``listen`` setting); clients fall back to it (see the module).
LISTEN_ENV = "CALLQOS_LISTEN"
#: The principal the CLI sends when ``--principal`` is not given.
PRINCIPAL_ENV = "CALLQOS_PRINCIPAL"
#: A bearer token, or a file holding one (re-read when it changes, as rotated tokens are).
TOKEN_ENV = "CALLQOS_TOKEN"
TOKEN_FILE_ENV = "CALLQOS_TOKEN_FILE"
#: TLS: the CA certificate(s) that sign the server's certificate (setting it turns TLS on), and
#: the client's own certificate and key for mTLS. (Not CALLQOS_TLS_CERT / _KEY: those are the
#: server's settings, and a shell may run both.)
TLS_CA_ENV = "CALLQOS_TLS_CA"
TLS_CERT_ENV = "CALLQOS_TLS_CLIENT_CERT"
TLS_KEY_ENV = "CALLQOS_TLS_CLIENT_KEY"

_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


def default_target(env: Mapping[str, str] | None = None) -> str:
    """Where a client connects when given no target: ``CALLQOS_TARGET``, else the address the
    server listens on by ``CALLQOS_LISTEN`` (a wildcard host as loopback), else
    ``DEFAULT_TARGET``."""
    env = os.environ if env is None else env
    target = env.get(TARGET_ENV, "").strip()
    if target:
        return target
    listen = env.get(LISTEN_ENV, "").strip()
    if listen:
        host, sep, port = listen.rpartition(":")
        if sep:
            return f"{_WILDCARD_HOSTS.get(host, host)}:{port}"
    return DEFAULT_TARGET


# The extension handle of the option. Typed Any: the generated .pyi calls it a plain
# FieldDescriptor, which types-protobuf does not accept as an extension handle.
_GRPC_CODE_OPTION: Any = errors_pb2.grpc_code


def reason_string(reason: int) -> str:
    """The ``ErrorInfo.reason`` of an ``ErrorReason`` number, e.g. ``"QOS_UNAVAILABLE"``."""
    return errors_pb2.ErrorReason.Name(reason).removeprefix(REASON_PREFIX)


def reason_codes(enum: EnumDescriptor = errors_pb2.ErrorReason.DESCRIPTOR) -> dict[int, grpc.StatusCode]:
    """The gRPC code of every reason of ``enum`` (UNSPECIFIED aside), from its ``grpc_code`` option.

    Raises ``LookupError`` naming the reason when one has no option (or an unspecified one): the
    server must never be left to send such a reason with a code nobody decided.
    """
    by_number = {code.value[0]: code for code in grpc.StatusCode}
    codes: dict[int, grpc.StatusCode] = {}
    for value in enum.values:
        if value.number == 0:
            continue
        options = value.GetOptions()
        number: int = options.Extensions[_GRPC_CODE_OPTION] if options.HasExtension(_GRPC_CODE_OPTION) else 0
        if number == 0 or number not in by_number:
            raise LookupError(f"{enum.full_name}.{value.name} has no (callqos.v1.grpc_code) option")
        codes[value.number] = by_number[number]
    return codes


#: ``ErrorReason`` number → the gRPC status code it is always sent with.
STATUS_CODES: Mapping[int, grpc.StatusCode] = MappingProxyType(reason_codes())
#: ``ErrorInfo.reason`` string → the gRPC status code it is always sent with.
STATUS_CODES_BY_REASON: Mapping[str, grpc.StatusCode] = MappingProxyType(
    {reason_string(reason): code for reason, code in STATUS_CODES.items()}
)
