"""A provider kit with one fault on the provider protocol, for PROTO-001 to catch: the reference
provider served over `callqos.provider.v1` by the Python kit, except that an Admit is taken (made
"being decided", so that a Release of its call cancels it) only after a pause, by which time a
Release written after it on the Decide stream has been answered. That Release finds nothing to
cancel, and the Admit then reserves for a call its host has already given up: the fault the Go
kit had (REMOTE-4). No API-level check sees it deterministically, which is why PROTO-001 speaks
the protocol itself.

Run as a provider command, by the suite or by hand:
`callqos-conformance --provider-command "python -m callqos.conformance.broken.kit" --check PROTO-001`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from callqos.server.remote.kit import ProviderServicer
from callqos.server.remote.serve import listen_address, serve

TAKEN_AFTER_SECONDS = 0.01


class ReleaseLosesToAdmit(ProviderServicer):
    async def Admit(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(TAKEN_AFTER_SECONDS)  # the fault: the next request is answered first
        return await super().Admit(request, context)


def main() -> int:
    address = listen_address(os.environ)
    if not address:
        print("run by a hosting server, or by callqos-conformance --provider-command", file=sys.stderr)
        return 2
    asyncio.run(serve("reference", {}, address, launched=True, servicer=ReleaseLosesToAdmit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
