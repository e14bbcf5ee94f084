"""Provider kits with one fault each on the provider protocol (REMOTE-4), for the PROTO checks to
catch: the reference provider served over `callqos.provider.v1` by the Python kit, except for
- `release-loses-to-admit` (the default): an Admit is taken (made "being decided", so that a
  Release of its call cancels it) only once a Release of its call has been answered (or after
  half a second, when none comes). That Release finds nothing to cancel, and the Admit then
  reserves for a call its host has already given up: the fault the Go kit had. No API-level check
  sees it deterministically, which is why PROTO-001 speaks the protocol itself.
- `forgets-answers`: no answer is remembered for its request id, so a repeated Admit is decided
  again (and refused: the call is held) instead of getting the first answer (PROTO-002).
- `restore-keeps-everything`: a Restore keeps the calls it holds that the host no longer lists,
  so after a reconnection their capacity stays reserved for nobody (REMOTE-2, PROTO-003).
- `forgets-unacknowledged`: a change is forgotten once it is sent, acknowledged or not, so a host
  that reconnects never learns of it (REMOTE-3, PROTO-004).

Run as a provider command, by the suite or by hand:
`callqos-conformance --provider-command "python -m callqos.conformance.broken.kit [FAULT]" --check PROTO`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.server.remote.kit import ProviderServicer
from callqos.server.remote.serve import listen_address, serve

TAKEN_AFTER_SECONDS = 0.5


class ReleaseLosesToAdmit(ProviderServicer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.released: dict[str, asyncio.Event] = {}

    async def Admit(self, request: Any, context: Any) -> Any:
        # The fault: the Admit is taken only once a Release of its call has been answered (or
        # after a while, when none comes), so a Release written right after it finds nothing.
        released = self.released.setdefault(request.call, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), TAKEN_AFTER_SECONDS)
        return await super().Admit(request, context)

    async def Release(self, request: Any, context: Any) -> Any:
        answer = await super().Release(request, context)
        self.released.setdefault(request.call, asyncio.Event()).set()
        return answer


class ForgetsAnswers(ProviderServicer):
    def _remember(self, key: Any, response: Any) -> None:
        pass  # the fault: a repeat is decided again


class RestoreKeepsEverything(ProviderServicer):
    async def Restore(self, request: Any, context: Any) -> Any:
        listed = {item.call for item in request.calls}
        for call, held in self.held.items():  # the fault: what the host no longer holds is kept
            if call not in listed:
                request.calls.append(
                    pb.HeldCall(call=call, destination=held.destination, service_level=held.level, qos=held.qos)  # type: ignore[arg-type]
                )
        return await super().Restore(request, context)


class ForgetsUnacknowledged(ProviderServicer):
    async def WatchChanges(self, request: Any, context: Any) -> Any:
        async for response in super().WatchChanges(request, context):
            # The fault: forgotten as it is sent. (Forgetting it after the yield would depend on
            # the stream asking for the next change, which a watcher that stops reading never does.)
            self.journal.acknowledge(response.change.sequence)
            yield response


FAULTS: dict[str, type[ProviderServicer]] = {
    "release-loses-to-admit": ReleaseLosesToAdmit,
    "forgets-answers": ForgetsAnswers,
    "restore-keeps-everything": RestoreKeepsEverything,
    "forgets-unacknowledged": ForgetsUnacknowledged,
}


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    fault = arguments[0] if arguments else "release-loses-to-admit"
    address = listen_address(os.environ)
    if fault not in FAULTS or not address:
        print(
            f"usage (by a hosting server, or callqos-conformance --provider-command): {', '.join(FAULTS)}",
            file=sys.stderr,
        )
        return 2
    asyncio.run(serve("reference", {}, address, launched=True, servicer=FAULTS[fault]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
