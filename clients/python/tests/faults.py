"""A loopback gRPC front for the real server that fails chosen attempts, to test the retry policy.

It forwards every CallQosService call to the real server byte for byte (metadata included), except
that it can fail a method's attempts with a status: *before* forwarding (the request never reached
the server), or *after* it (the server acted, but its answer is lost on the way back, which is
what makes repeating a mutation dangerous). It records every attempt's request bytes, so a test
can count attempts and compare what each carried.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from callqos.v1 import callqos_service_pb2

SERVICE = callqos_service_pb2.DESCRIPTOR.services_by_name["CallQosService"]


@dataclass
class Fault:
    """Fail the first `times` attempts of a method with `code`, before or after forwarding."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    times: int = 1
    after_forwarding: bool = False


class FaultFront:
    def __init__(self, upstream: str) -> None:
        self._upstream = grpc.insecure_channel(upstream)
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self.attempts: dict[str, list[bytes]] = defaultdict(list)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(self._handler(method.name))
            for method in SERVICE.methods
            if not method.server_streaming
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fail(self, method: str, fault: Fault) -> None:
        with self._lock:
            self._faults[method] = fault

    def requests(self, method: str, kind: type[Any]) -> list[Any]:
        """Every attempt of `method` so far, parsed as `kind`."""
        with self._lock:
            return [kind.FromString(raw) for raw in self.attempts[method]]

    def _handler(self, method: str) -> Any:
        forward = self._upstream.unary_unary(f"/{SERVICE.full_name}/{method}")

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.attempts[method].append(request)
                fault = self._faults.get(method)
                failing = fault is not None and fault.times > 0
                if fault is not None and failing:
                    fault.times -= 1
            if fault is not None and failing and not fault.after_forwarding:
                context.abort(fault.code, f"fault injected before {method} reached the server")
            metadata = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-")]
            try:
                response: bytes = forward(request, metadata=metadata, timeout=context.time_remaining())
            except grpc.RpcError as error:
                # Pass the server's status on as it is, details trailer included.
                context.set_trailing_metadata(error.trailing_metadata() or ())
                context.abort(error.code(), error.details() or "")
            if fault is not None and failing:
                context.abort(fault.code, f"fault injected after {method} reached the server")
            return response

        return handle

    def close(self) -> None:
        self._server.stop(None)
        self._upstream.close()
